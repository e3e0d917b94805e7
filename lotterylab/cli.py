"""The ``lotterylab`` command: run, validate, resume and draw experiments."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lotterylab.cluster.signals import Interrupted
from lotterylab.platform.spec import SpecError
from lotterylab.platform.spec.overrides import is_override, load_with_overrides
from lotterylab.platform.spec.ready import spec_file
from lotterylab.platform.store.experiment_store import StoreError, credentials_problem
from lotterylab.platform.store.lease import LeaseError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
SPEC_HELP = (
    "a YAML spec or a packaged spec's name (default: default), then dotted key=value "
    "overrides, e.g. training.lr=0.1 seeds=[0,1] datasets.0.n_train=5000"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lotterylab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lotterylab {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an experiment spec (default: the embedded demo)")
    run.add_argument("spec", nargs="*", metavar="[SPEC] [key=value ...]", help=SPEC_HELP)
    run.add_argument("--storage", help="root URI for results (overrides the spec's storage)")
    run.add_argument("--name", help="experiment name (overrides the spec's name)")
    run.add_argument("--address", help="Ray cluster address ('auto', host:port); default: embedded")

    validate = commands.add_parser("validate", help="check a spec without starting Ray")
    validate.add_argument("spec", nargs="*", metavar="[SPEC] [key=value ...]", help=SPEC_HELP)

    commands.add_parser("specs", help="list the ready specs shipped with the package")
    init = commands.add_parser("init", help="copy a ready spec to edit")
    init.add_argument("name", help="a name that `lotterylab specs` lists, e.g. default")
    init.add_argument("destination", nargs="?", help="file or folder (default: ./NAME.yaml)")

    resume = commands.add_parser("resume", help="continue an interrupted experiment")
    resume.add_argument("experiment", help="experiment URI, e.g. ./results/default")
    resume.add_argument("--address", help="Ray cluster address; default: embedded")

    figures = commands.add_parser("figures", help="aggregate seeds and draw figures")
    figures.add_argument(
        "experiments", nargs="+", help="experiment URI(s); several are compared in one set"
    )
    figures.add_argument("--out", help="where comparison figures go (default: the first's)")
    figures.add_argument(
        "--partial",
        action="store_true",
        help="draw even when lineages or runs miss files they had written (the report says "
        "which); without it such an experiment is refused with exit 2",
    )

    analyze = commands.add_parser(
        "analyze",
        help="cavity scores, NTK spectra, layer widths and kurtosis of a stored experiment, "
        "on a Ray actor pool (only what is not stored yet)",
    )
    analyze.add_argument("experiment", help="experiment URI, e.g. ./results/default")
    analyze.add_argument(
        "--what",
        default="cavity,ntk,width,kurtosis",
        help="comma-separated analyses: cavity, ntk, width, kurtosis (kurtosis includes RF "
        "widths); default: all",
    )
    analyze.add_argument(
        "--workers", type=int, help="actors in the pool (default: one per CPU, 4 per GPU)"
    )
    analyze.add_argument("--address", help="Ray cluster address; default: embedded")
    analyze.add_argument(
        "--samples", type=int, default=100, help="inputs N of the NTK spectra (default 100)"
    )

    branch = commands.add_parser(
        "branch",
        help="branches of stored runs: PaI sanity checks (reinit, shuffle, invert) or IMP "
        "lottery-ticket controls (reinit, random_prune, rewind) of round N's ticket",
    )
    branch.add_argument("experiment", help="experiment URI of the parent runs or lineages")
    branch.add_argument(
        "--kind",
        required=True,
        help="PaI: reinit, shuffle, invert; IMP: reinit, random_prune, rewind",
    )
    branch.add_argument("--round", type=int, help="IMP: the round whose ticket is branched")
    branch.add_argument(
        "--rewind-step", type=int, help="IMP rewind branches: the step S to rewind to (0: init)"
    )
    branch.add_argument("--method", action="append", help="only these methods (repeatable)")
    branch.add_argument(
        "--density",
        action="append",
        help="only this density (repeatable), to the digits typed: 0.01801 as in run ids",
    )
    branch.add_argument(
        "--sparsity", action="append", help="only this sparsity in percent (repeatable): 98.2"
    )
    branch.add_argument("--address", help="Ray cluster address; default: embedded")

    export = commands.add_parser(
        "export",
        help="write a stored ticket (IMP lineage round) or PaI model as a state dict for "
        "torch.nn.utils.prune (torch_prune) or with zeros (dense)",
    )
    export.add_argument("experiment", help="experiment URI")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--lineage", help="IMP lineage id (with --method and --round)")
    source.add_argument("--run", help="PaI run id")
    export.add_argument("--method", default="imp", help="IMP method (default imp)")
    export.add_argument("--round", type=int, help="IMP round whose ticket is exported")
    export.add_argument(
        "--weights",
        default="trained",
        help="IMP: rewind (θ(t_rewind)) or trained (θ(T)); PaI: init or trained; default trained",
    )
    export.add_argument("--format", default="torch_prune", help="torch_prune (default) or dense")
    export.add_argument("-o", "--output", required=True, help="file to write (torch.save)")

    data = commands.add_parser("data", help="data set tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    clone = data_commands.add_parser(
        "gaussian-clone",
        help="write the Gaussian clone of an ImageNet32-format data set in the same format",
    )
    clone.add_argument("source", help="folder of the source data set (ImageNet32 format)")
    clone.add_argument("destination", help="folder for the clone")
    clone.add_argument("--fit-limit", type=int, help="fit on at most this many images")
    clone.add_argument("--seed", type=int, default=0, help="sampling seed")
    clone.add_argument("--image-size", type=int, default=32, help="image side (16, 32, 64)")
    fetch = data_commands.add_parser(
        "download",
        help="fetch a published data set, verify its checksum and unpack it into the layout "
        "its loader reads (never done at run time)",
    )
    fetch.add_argument("dataset", help="cifar10, cifar100, tiny_imagenet, voc (imagenet32: how)")
    fetch.add_argument("root", help="the folder a spec's `root` will name")
    fetch.add_argument("--mirror", help="folder URL serving the same archive file name")
    fetch.add_argument("--checksum", help="md5:HEX or sha256:HEX of a mirror's own archive")
    return parser


def _grid_summary(spec) -> str:
    grid = f"{len(spec.datasets)} data sets × {len(spec.seeds)} seeds"
    if spec.kind == "pai":
        from lotterylab.platform.pai.run import pai_grid

        pai = spec.pai
        grid += (
            f" × {len(pai.methods)} methods × {len(pai.densities)} densities"
            f" × rounds {pai.rounds} (single-shot methods once) = {len(pai_grid(spec))} PaI runs"
        )
    if spec.search is not None:
        configurations = spec.search.configurations()
        count = len(configurations) if configurations is not None else spec.search.num_samples
        grid += f" × {count} {spec.search.algorithm} configurations"
    return grid


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lotterylab")
    except PackageNotFoundError:
        return "(not installed)"


def _load(arguments: list[str], name: str | None = None, address: str | None = None):
    """SPEC (default: the packaged default spec) and its key=value overrides, refused if it
    cannot run here (data paths, a trial's memory)."""
    from lotterylab.platform.spec.bounds import runnable_problems

    path = None
    if arguments and not is_override(arguments[0]):
        path, arguments = arguments[0], arguments[1:]
    for argument in arguments:
        if not is_override(argument):
            raise SpecError(f"{argument!r} is not key=value (only the first argument is a spec)")
    overrides = arguments + ([f"name={name}"] if name else [])
    source = spec_file(path)
    spec, text = load_with_overrides(source, overrides)
    local = address is None and not os.environ.get("RAY_ADDRESS")  # else a cluster runs it
    problems = runnable_problems(spec, on_this_machine=local)
    if problems:
        raise SpecError("\n".join([f"invalid experiment spec {source}:", *problems]))
    return spec, text


def _report(outcome) -> int:
    print(f"\nexperiment: {outcome.uri}")
    print(f"trials: {outcome.trials}, wall time {outcome.wall_time_s:.1f} s")
    for path in outcome.figures:
        print(f"  {path}")
    if outcome.errored_trials:
        print(f"{len(outcome.errored_trials)} trial(s) failed:", file=sys.stderr)
        for error in outcome.errored_trials:
            print(f"  {error}", file=sys.stderr)
        print(f"continue with: lotterylab resume {outcome.uri}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _report_analysis(outcome) -> int:
    print(
        f"\nanalysis of {outcome.uri}: {outcome.units} units on {outcome.workers} worker(s), "
        f"{outcome.wall_time_s:.1f} s"
    )
    for what in outcome.computed:
        if what in outcome.not_applicable:
            print(f"  {what}: skipped, {outcome.not_applicable[what]}")
        else:
            print(
                f"  {what}: {outcome.computed[what]} computed, "
                f"{outcome.skipped[what]} already stored"
            )
    for path in outcome.figures:
        print(f"  {path}")
    if outcome.bad_inputs:
        print(
            f"{len(outcome.bad_inputs)} unit(s) read a corrupt or missing artifact:",
            file=sys.stderr,
        )
        for error in outcome.bad_inputs:
            print(f"  {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if outcome.failed:
        print(f"{len(outcome.failed)} unit(s) failed:", file=sys.stderr)
        for error in outcome.failed:
            print(f"  {error}", file=sys.stderr)
        print(f"compute them again with: lotterylab analyze {outcome.uri}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _export(args) -> int:
    import torch

    from lotterylab.analysis.experiment import open_experiment
    from lotterylab.platform.export import export_state

    experiment = open_experiment(args.experiment)
    if args.lineage is not None:
        if args.round is None:
            raise ValueError("--lineage needs --round N (the round whose ticket is exported)")
        model = experiment.ticket(args.lineage, args.method, args.round, args.weights)
        masks = experiment.masks(args.lineage, args.method, args.round)
        what = f"lineage {args.lineage}, method {args.method}, round {args.round}"
    else:
        model = experiment.pai_model(args.run, args.weights)
        masks = experiment.run_masks(args.run)
        what = f"PaI run {args.run}"
    state = export_state(model, masks, args.format)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    torch.save(state, partial)
    partial.replace(output)  # a reader never sees a half-written file
    print(f"{what} ({args.weights} weights, {args.format}) written to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("run", "validate") and not any(e.startswith("-") for e in extra):
        args.spec += extra  # overrides written after an option: run SPEC --name N k=v
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "validate":
            spec, _ = _load(args.spec)
            from lotterylab.platform.store.tracking import check_tracking

            check_tracking(spec)  # a tracker that cannot be reached is bad input
            print(f"{' '.join(args.spec) or 'default'}: valid ({_grid_summary(spec)})")
            return 0
        if args.command == "specs":
            from lotterylab.platform.spec.ready import ready_specs

            specs = ready_specs()
            width = max(map(len, specs))
            for name, summary in specs.items():
                print(f"{name:<{width}}  {summary}")
            return 0
        if args.command == "init":
            from lotterylab.platform.spec.ready import copy_ready_spec

            print(f"wrote {copy_ready_spec(args.name, args.destination)}")
            return 0
        if args.command == "run":
            spec, text = _load(args.spec, args.name, args.address)
            from lotterylab.cluster.launch import run_experiment

            return _report(run_experiment(spec, text, args.storage, args.address))
        if args.command == "resume":
            from lotterylab.cluster.launch import resume_experiment

            return _report(resume_experiment(args.experiment, args.address))
        if args.command == "figures":
            from lotterylab.analysis.report import write_report
            from lotterylab.platform.store.experiment_store import ExperimentStore

            stores = [ExperimentStore(uri) for uri in args.experiments]
            target = stores[0] if len(stores) == 1 else stores
            for path in write_report(target, out=args.out, partial=args.partial):
                print(path)
            if args.out is None and len(stores) == 1:  # the figures of its summary run
                from lotterylab.platform.store.tracking import track_stored_summary

                track_stored_summary(stores[0])
            return 0
        if args.command == "analyze":
            from lotterylab.cluster.post_run_pool import analyze_experiment
            from lotterylab.platform.post_run import parse_what

            what = parse_what(args.what)  # a bad name is exit 2 before any work
            return _report_analysis(
                analyze_experiment(args.experiment, what, args.workers, args.address, args.samples)
            )
        if args.command == "branch":
            from lotterylab.cluster.launch import branch_experiment

            outcome = branch_experiment(
                args.experiment,
                args.kind,
                args.method,
                args.density,
                args.address,
                args.sparsity,
                round=args.round,
                rewind_step=args.rewind_step,
            )
            return _report(outcome)
        if args.command == "export":
            return _export(args)
        if args.command == "data" and args.data_command == "download":
            from lotterylab.platform.data.download import download

            done = download(args.dataset, args.root, mirror=args.mirror, checksum=args.checksum)
            state = (
                f"{done.fetched_bytes} bytes fetched and verified"
                if done.fetched_bytes
                else ("already in place")
            )
            print(f"{args.dataset}: {state}; use `type: {args.dataset}` with `root: {done.root}`")
            return 0
        if args.command == "data":
            from lotterylab.platform.data.clone_builder import build_gaussian_clone

            written = build_gaussian_clone(
                args.source,
                args.destination,
                fit_limit=args.fit_limit,
                seed=args.seed,
                image_size=args.image_size,
            )
            print(f"Gaussian clone written to {args.destination} ({written})")
            return 0
    except Interrupted as stopped:
        print(f"lotterylab {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    except LeaseError as error:  # another live writer holds the experiment
        print(f"lotterylab {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StoreError, ValueError, OSError) as error:
        print(f"lotterylab {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        print(f"lotterylab {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # a storage client without credentials is bad input, not a bug
        problem = credentials_problem(error)
        if problem is None:
            raise
        print(f"lotterylab {args.command}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
