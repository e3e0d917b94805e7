"""Benchmark of the analysis actor pool: the same units with 1 and with 2 workers.

Two small experiments are written into a temporary store by the procedures the trainables run:
an IMP lineage of an FCN on 16×16 NLGP (its cavity and kurtosis units, every method and round)
and PaI runs of a ResNet-20 (width 8) on 3-channel 16×16 NLGP (the fixed-weight NTK spectra of
each run and of the dense net, on N inputs). For each pool size the outputs are deleted, a
pool is started (timed until every actor answers), and the units run through it (timed until
the last result). Each actor takes 1 CPU and runs torch on one thread, so on a 2-core machine
the ideal speed-up of 2 workers over 1 is 2. The pool sizes are interleaved over repeats and
the best wall time of each is compared; ``pool_utilisation`` (time inside units over workers ×
wall time) separates what the pool loses from what a busy machine takes. Run from the
repository root:

    .venv/bin/python benchmarks/bench_analyze.py [--samples 100] [--workers 1 2] [--repeats 2]
        [--out benchmarks/results/analyze.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import common
import ray
import torch

from lotterylab.cluster.post_run_pool import AnalysisPool, PoolSize, shared_datasets
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.pai.run import PaIConfig, PaIRun, pai_grid
from lotterylab.platform.post_run import CAVITY, KURTOSIS, NTK, list_units
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore

NLGP = {"type": "nlgp", "grid": 16, "gain": 3.0, "n_train": 4000, "n_test": 500, "seed": 0}
IMP_SPEC = {
    "name": "bench-imp",
    "kind": "imp",
    "seeds": [0],
    "datasets": [{"name": "nlgp", "channels": 1, "xi": [1.0, 3.0], **NLGP}],
    "model": {"name": "fcn", "hidden": [256, 64]},
    "training": {"lr": 0.1, "batch_size": 100, "steps": 100, "rewind_step": 10},
    "imp": {
        "rounds": 3,
        "fraction": 0.5,
        "baselines": ["oneshot", "random"],
        "measure_kurtosis": False,  # measured by the pool instead
        "measure_cavity": False,
    },
}
PAI_SPEC = {
    "name": "bench-pai",
    "kind": "pai",
    "seeds": [0],
    "datasets": [{"name": "nlgp3", "channels": 3, "xi": [1.0, 2.0, 4.0], **NLGP}],
    "model": {"name": "resnet20", "width": 8},
    "training": {"lr": 0.05, "batch_size": 100, "epochs": 1},
    "pai": {
        "methods": ["random", "magnitude", "snip", "synflow"],
        "densities": [0.0688],
        "scoring_batches": 1,
        "scoring_batch_size": 100,
    },
}


def environment() -> dict:
    return {**common.environment(), "ray": ray.__version__, "torch_threads_per_worker": 1}


def write_experiments(root: str) -> list[tuple[ExperimentStore, object]]:
    """The IMP lineage (all rounds) and the pruned PaI runs, as a run would store them."""
    out = []
    imp_spec = parse_spec(IMP_SPEC, "benchmark")
    store = ExperimentStore(f"{root}/{imp_spec.name}")
    store.write_json("spec.resolved.json", imp_spec.model_dump(mode="json"))
    data = build_datasets(imp_spec.datasets)["nlgp"]
    lineage = IMPLineage(LineageConfig(store.name, "nlgp", 0, imp_spec), data, store)
    while not lineage.done:
        lineage.run_round()
    out.append((store, imp_spec))
    pai_spec = parse_spec(PAI_SPEC, "benchmark")
    store = ExperimentStore(f"{root}/{pai_spec.name}")
    store.write_json("spec.resolved.json", pai_spec.model_dump(mode="json"))
    datasets = build_datasets(pai_spec.datasets)
    for run in pai_grid(pai_spec):
        config = PaIConfig(experiment=store.name, spec=pai_spec, **run)
        PaIRun(config, datasets[run["dataset"]], store).prune()
    out.append((store, pai_spec))
    return out


def clear_outputs(store: ExperimentStore) -> None:
    shutil.rmtree(store.path("analysis"), ignore_errors=True)
    for table in store.list("tables"):
        if table.startswith("analysis_"):
            shutil.rmtree(store.path("tables", table))


def time_pool(experiments, workers: int, samples: int) -> dict:
    """Start a pool per experiment and run its units; times summed over both experiments."""
    start_s = run_s = 0.0
    unit_s: dict[str, float] = {}
    units = 0
    for store, spec in experiments:
        clear_outputs(store)
        what = [CAVITY, KURTOSIS] if spec.kind == "imp" else [NTK]
        listing = list_units(store, spec, what, samples)
        datasets = shared_datasets(spec, listing.units)
        t0 = time.perf_counter()
        pool = AnalysisPool(store.uri, spec, PoolSize(workers, 1.0, 0.0), datasets)
        pool.pids()  # every actor constructed and answering
        t1 = time.perf_counter()
        results = pool.run(listing.units)
        t2 = time.perf_counter()
        pool.close()
        failed = [r for r in results if r.status != "computed"]
        if failed:
            raise RuntimeError(f"units did not compute: {failed}")
        start_s += t1 - t0
        run_s += t2 - t1
        units += len(results)
        for r in results:
            unit_s[r.what] = unit_s.get(r.what, 0.0) + r.seconds
    return {
        "workers": workers,
        "units": units,
        "pool_start_s": round(start_s, 3),
        "units_wall_s": round(run_s, 3),
        "unit_compute_s": {k: round(v, 3) for k, v in sorted(unit_s.items())},
        # share of the workers' time spent inside units: what the pool itself loses
        "pool_utilisation": round(sum(unit_s.values()) / (workers * run_s), 3),
        "load_average_after": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeats", type=int, default=2, help="rounds over the pool sizes, interleaved"
    )
    parser.add_argument("--out", default="benchmarks/results/analyze.json")
    args = parser.parse_args()
    env = environment()
    root = tempfile.mkdtemp(prefix="bench-analyze-")
    torch.set_num_threads(1)  # as the trials that write experiments run
    try:
        t0 = time.perf_counter()
        experiments = write_experiments(root)
        setup_s = time.perf_counter() - t0
        ray.init(
            address="local",
            num_cpus=max(args.workers),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        try:
            runs = [
                time_pool(experiments, w, args.samples)
                for _ in range(args.repeats)
                for w in args.workers
            ]
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {w: min(r["units_wall_s"] for r in runs if r["workers"] == w) for w in args.workers}
    base = best[args.workers[0]]
    result = {
        "environment": env,
        "setup": {
            "imp": "FCN 256-64 on 16x16 NLGP, 4000 inputs, 3 rounds x 3 methods: "
            "cavity + kurtosis units",
            "pai": f"ResNet-20 width 8 on 3x16x16 NLGP, 4 methods at density 0.0688: NTK "
            f"spectra of each run and the dense net on {args.samples} inputs",
            "experiments_written_s": round(setup_s, 3),
            "load_average_at_end": list(os.getloadavg()),
        },
        "runs": runs,
        "best_units_wall_s": {str(w): t for w, t in best.items()},
        "speedup_best_units_wall": {str(w): round(base / t, 3) for w, t in best.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
