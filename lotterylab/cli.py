"""The ``lotterylab`` command: run, validate, resume and draw experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lotterylab.platform.spec import SpecError, load_spec, parse_spec
from lotterylab.platform.store import StoreError

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "experiments" / "default.yaml"

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lotterylab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an experiment spec (default: the embedded demo)")
    run.add_argument("spec", nargs="?", default=None, help=f"YAML spec (default {DEFAULT_SPEC})")
    run.add_argument("--storage", help="root URI for results (overrides the spec's storage)")
    run.add_argument("--name", help="experiment name (overrides the spec's name)")
    run.add_argument("--address", help="Ray cluster address ('auto', host:port); default: embedded")

    validate = commands.add_parser("validate", help="check a spec without starting Ray")
    validate.add_argument("spec")

    resume = commands.add_parser("resume", help="continue an interrupted experiment")
    resume.add_argument("experiment", help="experiment URI, e.g. ./results/default")
    resume.add_argument("--address", help="Ray cluster address; default: embedded")

    figures = commands.add_parser("figures", help="aggregate seeds and draw figures")
    figures.add_argument("experiment", help="experiment URI, e.g. ./results/default")
    return parser


def _load(path: str | None):
    spec_path = Path(path) if path else DEFAULT_SPEC
    if path is None and not spec_path.exists():
        raise SpecError(f"the default spec {spec_path} is missing: pass a spec path")
    return load_spec(spec_path)


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            spec, _ = _load(args.spec)
            print(f"{args.spec}: valid ({len(spec.datasets)} data sets × {len(spec.seeds)} seeds)")
            return 0
        if args.command == "run":
            spec, text = _load(args.spec)
            if args.name:
                spec = parse_spec(spec.model_dump(mode="json") | {"name": args.name}, "--name")
            from lotterylab.cluster.launch import run_experiment

            return _report(run_experiment(spec, text, args.storage, args.address))
        if args.command == "resume":
            from lotterylab.cluster.launch import resume_experiment

            return _report(resume_experiment(args.experiment, args.address))
        if args.command == "figures":
            from lotterylab.analysis.report import write_report
            from lotterylab.platform.store import ExperimentStore

            for path in write_report(ExperimentStore(args.experiment)):
                print(path)
            return 0
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StoreError, ValueError) as error:
        print(f"lotterylab {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        print(f"lotterylab {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
