"""What running through Ray Tune costs, and how the default experiment scales with CPUs.

* Overhead: one lineage of the default experiment (``nlgp``, seed 0) run directly in this
  process (``IMPLineage.run_round`` until done, one torch thread as in a 1-CPU trial) against
  the same lineage as the only trial of a Tune experiment. Ray's start-up is timed apart from
  the Tune run: it is paid once per driver, not per trial. The data sets reach the trials once,
  as one object-store put of ``tune.with_parameters``; its size is recorded.
* Group overhead: the default experiment's 6 lineages as one group (``LineageGroup``) run
  directly against the same group as the only trial of a Tune experiment on 1 CPU, which is
  how ``batch_lineages: auto`` runs it there: Tune's fixed cost per trial is paid once for six.
* Scaling: the default experiment (6 lineages) end to end with Ray given 1 and then 2 CPUs,
  with each ``run.batch_lineages`` setting: ``off`` (a trial per lineage, its methods trained
  one at a time), ``1`` (a trial per lineage, the methods of a round stacked) and ``auto``
  (one trial per CPU, all trainings of its lineages' round stacked).

Run from the repository root (the full run takes about 30 minutes on a 2-core machine):

    .venv/bin/python benchmarks/bench_ray.py [--steps N] [--parts overhead,group_overhead,scaling]
        [--out benchmarks/results/ray.json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import ray
import torch
from common import environment

from lotterylab.cluster.launch import run_experiment
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.imp.group import LineageGroup
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.spec import load_spec, parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.trainables import search

DEFAULT_SPEC = Path("experiments/default.yaml")


def one_lineage_spec(steps: int | None):
    spec, _ = load_spec(DEFAULT_SPEC)
    data = spec.model_dump(mode="json")
    data["datasets"] = [d for d in data["datasets"] if d["name"] == "nlgp"]
    data["seeds"] = [0]
    if steps:
        data["training"]["steps"] = steps
    return parse_spec(data, "one lineage of the default experiment")


def default_spec(steps: int | None):
    spec, _ = load_spec(DEFAULT_SPEC)
    data = spec.model_dump(mode="json")
    if steps:
        data["training"]["steps"] = steps
    return parse_spec(data, "the default experiment")


def direct(spec, datasets, root: str) -> float:
    """Every lineage of the spec as one group in this process, one torch thread."""
    torch.set_num_threads(1)
    store = ExperimentStore(f"{root}/{spec.name}")
    group = LineageGroup(
        [
            IMPLineage(
                LineageConfig(spec.name, m["dataset"], m["seed"], spec),
                datasets[m["dataset"]],
                store,
            )
            for m in search.lineage_members(spec)
        ]
    )
    start = time.perf_counter()
    while not group.done:
        group.run_round()
    return time.perf_counter() - start


def through_tune(spec, datasets, root: str) -> dict:
    start = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, address="local", logging_level="ERROR")
    started = time.perf_counter()
    uri = f"{root}/{spec.name}"
    results = search.new_tuner(spec, datasets, root, uri).fit()
    finished = time.perf_counter()
    ray.shutdown()
    errors = [str(r.error) for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"the Tune run failed: {errors}")
    return {"ray_start_s": started - start, "tune_fit_s": finished - started}


SETTINGS = ("off", 1, "auto")


def scaling(cpus: int, steps: int | None, setting) -> float:
    spec, text = load_spec(DEFAULT_SPEC)
    data = spec.model_dump(mode="json")
    data["run"]["batch_lineages"] = setting
    if steps:
        data["training"]["steps"] = steps
    spec = parse_spec(data, "default experiment")
    with tempfile.TemporaryDirectory() as root:
        ray.init(num_cpus=cpus, include_dashboard=False, address="local", logging_level="ERROR")
        outcome = run_experiment(spec, text, storage_root=root)  # shuts Ray down at the end
    if outcome.errored_trials:
        raise RuntimeError(f"the default experiment failed: {outcome.errored_trials}")
    return outcome.wall_time_s


def tune_against_direct(spec, what: str) -> dict:
    """The spec's lineages run directly, then as one trial of Tune on 1 CPU."""
    datasets = build_datasets(spec.datasets)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        print(f"{what} directly, then through Tune", flush=True)
        direct_s = direct(spec, datasets, a)
        tune_times = through_tune(spec, datasets, b)
    return {
        "what": what,
        "steps": spec.training.steps,
        "rounds": spec.imp.rounds,
        "direct_s": direct_s,
        **tune_times,
        "tune_over_direct": tune_times["tune_fit_s"] / direct_s,
        "tune_and_ray_start_over_direct": (tune_times["tune_fit_s"] + tune_times["ray_start_s"])
        / direct_s,
        "data_put_once_mib": len(pickle.dumps(datasets)) / 2**20,
    }


def overhead(args) -> dict:
    return tune_against_direct(
        one_lineage_spec(args.steps), "one lineage of the default experiment (nlgp, seed 0)"
    )


def group_overhead(args) -> dict:
    return tune_against_direct(
        default_spec(args.steps),
        "the default experiment's 6 lineages as one group (batch_lineages auto on 1 CPU)",
    )


def scaling_report(args) -> dict:
    found = {}
    for cpus in (1, 2):
        for setting in SETTINGS:
            print(f"default experiment, {cpus} CPU(s), batch_lineages {setting}", flush=True)
            found[f"cpus_{cpus}_{setting}_wall_s"] = scaling(cpus, args.steps, setting)
    for setting in SETTINGS:
        found[f"speed_up_2_over_1_{setting}"] = (
            found[f"cpus_1_{setting}_wall_s"] / found[f"cpus_2_{setting}_wall_s"]
        )
    for cpus in (1, 2):
        found[f"cpus_{cpus}_speed_up_auto_over_off"] = (
            found[f"cpus_{cpus}_off_wall_s"] / found[f"cpus_{cpus}_auto_wall_s"]
        )
    return found


PARTS = {"overhead": overhead, "group_overhead": group_overhead, "scaling": scaling_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="training steps (default: the spec's)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)}; the others keep their stored figures",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray.json"))
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; allowed: {list(PARTS)}")
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["environment"] = environment()
    for part in parts:
        report[part] = PARTS[part](args)
        print(json.dumps(report[part], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
