"""Benchmark of K FCN lineages trained as one batched computation against K trainings in turn.

Paper 1's study trains many FCNs of one shape (3072-1024-1024-1000 with batch norm, batch 40).
For K = 1, 2, 4, 8, 16 lineages (half of every dense weight masked, each lineage its own data
set, seed and mask) three ways are timed side by side in one process:

* ``batched``: ``platform.batched.train_batched`` on all K at once;
* ``alone``: the platform's ``training.train`` on each lineage in turn;
* ``plain``: the same lineages in turn as a plain PyTorch loop (``nn.Sequential``,
  ``torch.optim.SGD``, masks multiplied in after each step).

The repeats are interleaved (every K and way once per repeat, the order rotated) and the best
repeat counts. Rates are steady-state aggregate training steps per second: timestamps at every
step, the first (warm-up) step left out, so setting up the stacks is reported on its own. The
run also measures the machine's float32 ``torch.mm`` peak at n = 2048, the GFLOP/s each way
achieves (6·B·params per lineage step), a copy bandwidth, and, under the profiler, how a step's
time splits into matrix products, other operators and Python overhead. ``--threads`` takes one
or more torch thread counts (default: all cores), each measured in full. Run from the
repository root:

    .venv/bin/python benchmarks/bench_batched.py [--quick] [--threads N [N ...]]
        [--repeats R] [--device cpu|cuda] [--out benchmarks/results/batched.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import cpu_model
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.imp.batched import train_batched
from lotterylab.platform.models import FCNModel, build_fcn
from lotterylab.platform.spec import TrainingSpec
from lotterylab.platform.training import train

FULL = {
    "hidden": [1024, 1024],
    "classes": 1000,
    "ks": [1, 2, 4, 8, 16],
    "steps": 8,
    "repeats": 3,
    "n_train": 4000,
    "profile_k": 8,
}
QUICK = {
    "hidden": [256, 256],
    "classes": 100,
    "ks": [1, 2, 4],
    "steps": 6,
    "repeats": 2,
    "n_train": 400,
    "profile_k": 4,
}
IMAGE_SHAPE = (3, 32, 32)
BATCH = 40
DENSITY = 0.5
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
WAYS = ("batched", "alone", "plain")


def datasets(n_train: int, classes: int) -> list[ImageDataset]:
    """Two synthetic float32 sets of ImageNet32's shape, drawn from fixed seeds."""
    out = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        dim = math.prod(IMAGE_SHAPE)
        out.append(
            ImageDataset(
                f"synthetic{seed}",
                torch.randn(n_train, dim, generator=g),
                torch.randint(0, classes, (n_train,), generator=g),
                torch.randn(BATCH, dim, generator=g),
                torch.randint(0, classes, (BATCH,), generator=g),
                IMAGE_SHAPE,
                classes,
            )
        )
    return out


def lineages(count: int, sizes: dict, device: torch.device):
    """Fresh FCNs and their masks (half of every dense weight), one seed each."""
    spec = FCNModel(hidden=sizes["hidden"])
    models, masks = [], []
    for k in range(count):
        model = build_fcn(spec, IMAGE_SHAPE, sizes["classes"], seed=k).to(device)
        g = torch.Generator().manual_seed(100 + k)
        masks.append(
            {
                name: (torch.rand(p.shape, generator=g) < DENSITY).to(device)
                for name, p in model.named_parameters()
                if name.startswith("layers.") and name.endswith(".weight")
            }
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in masks[-1]:
                    p.mul_(masks[-1][name])
        models.append(model)
    return models, masks


def plain_copy(model: nn.Module) -> nn.Sequential:
    """The same net as a plain nn.Sequential of BatchNorm1d → Linear → ReLU."""
    layers: list[nn.Module] = [nn.Flatten()]
    last = len(model.layers) - 1
    for i, (norm, linear) in enumerate(zip(model.norms, model.layers, strict=True)):
        plain = nn.Linear(linear.in_features, linear.out_features)
        plain.load_state_dict({"weight": linear.weight, "bias": linear.bias})
        layers += [nn.BatchNorm1d(norm.num_features), plain]
        if i < last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(model.layers[0].weight.device)


class Clock:
    """Wall and process CPU timestamps before every step (the device done with the last one).

    CPU seconds tell a step's work apart from time spent waiting for a core on a shared
    machine (threads that spin while they wait count as work, though).
    """

    def __init__(self, device: torch.device):
        self.device, self.stamps, self.cpu = device, [], []

    def tick(self, *_args) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def steady(self) -> tuple[float, float, int]:
        """(seconds, CPU seconds, steps) after the first step; tick once after the last."""
        return self.stamps[-1] - self.stamps[1], self.cpu[-1] - self.cpu[1], len(self.stamps) - 2

    def fastest_step(self) -> float:
        """The shortest step after the first: the one least disturbed by other processes."""
        return min(b - a for a, b in zip(self.stamps[1:-1], self.stamps[2:], strict=True))


def run_batched(models, masks, data, spec, device) -> dict:
    clock = Clock(device)
    start = time.perf_counter()
    seeds = list(range(len(models)))
    train_batched(models, data, spec, seeds, masks=masks, device=device, on_step=clock.tick)
    clock.tick()
    total = time.perf_counter() - start
    seconds, cpu, steps = clock.steady()
    return {
        "steady_seconds": seconds,
        "steady_cpu_seconds": cpu,
        "fastest_lineage_step_seconds": clock.fastest_step() / len(models),
        "lineage_steps": steps * len(models),
        "total_seconds": total,
        "setup_seconds": clock.stamps[0] - start,
    }


def run_alone(models, masks, data, spec, device) -> dict:
    seconds = cpu = total = 0.0
    lineage_steps, fastest = 0, math.inf
    for k, (model, mask) in enumerate(zip(models, masks, strict=True)):
        clock = Clock(device)
        start = time.perf_counter()
        train(model, data[k], spec, seed=k, on_step=clock.tick, device=device, masks=mask)
        clock.tick()
        total += time.perf_counter() - start
        s, c, n = clock.steady()
        seconds, cpu, lineage_steps = seconds + s, cpu + c, lineage_steps + n
        fastest = min(fastest, clock.fastest_step())
    return {
        "steady_seconds": seconds,
        "steady_cpu_seconds": cpu,
        "fastest_lineage_step_seconds": fastest,
        "lineage_steps": lineage_steps,
        "total_seconds": total,
    }


def run_plain(plain_models, masks, data, spec, device) -> dict:
    seconds = cpu = total = 0.0
    lineage_steps, fastest = 0, math.inf
    for k, (model, mask) in enumerate(zip(plain_models, masks, strict=True)):
        clock = Clock(device)
        start = time.perf_counter()
        # the Sequential's dense weights in the FCN's order: Linear modules at 2, 5, 8
        linears = [m for m in model if isinstance(m, nn.Linear)]
        pairs = [(lin.weight, mask[f"layers.{i}.weight"]) for i, lin in enumerate(linears)]
        optimiser = torch.optim.SGD(model.parameters(), lr=spec.lr)
        g = torch.Generator().manual_seed(k)
        index = torch.randperm(data[k].size("train"), generator=g)
        model.train()
        for step in range(spec.steps):
            clock.tick()
            idx = index[step * BATCH : (step + 1) * BATCH]
            x = data[k].train_x[idx].to(device)
            y = data[k].train_y[idx].to(device)
            optimiser.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
            with torch.no_grad():
                for weight, keep in pairs:
                    weight.mul_(keep)
        clock.tick()
        total += time.perf_counter() - start
        s, c, n = clock.steady()
        seconds, cpu, lineage_steps = seconds + s, cpu + c, lineage_steps + n
        fastest = min(fastest, clock.fastest_step())
    return {
        "steady_seconds": seconds,
        "steady_cpu_seconds": cpu,
        "fastest_lineage_step_seconds": fastest,
        "lineage_steps": lineage_steps,
        "total_seconds": total,
    }


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mm_peak(device: torch.device, repeats: int = 5, n: int = 2048) -> float:
    """Best float32 ``torch.mm`` GFLOP/s at n × n."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def copy_bandwidth(device: torch.device, repeats: int = 5, mib: int = 256) -> float:
    """Best GB/s of a large float32 copy (bytes read plus bytes written)."""
    src = torch.randn(mib * 2**18, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def step_split(way: str, count: int, sizes: dict, data, spec, device) -> dict:
    """Milliseconds per lineage step in matrix products, other operators and Python overhead,
    over the steps after the first (the profiler starts before step 1)."""
    models, masks = lineages(count, sizes, device)
    pick = [data[k % 2] for k in range(count)]
    prof = profile(activities=[ProfilerActivity.CPU])
    started: list[float] = []

    def start_at_step_one(step, *_args) -> None:
        if step == 1 and not started:
            prof.start()
            started.append(time.perf_counter())

    if way == "batched":
        seeds = list(range(count))
        train_batched(models, pick, spec, seeds, masks=masks, on_step=start_at_step_one)
    else:
        train(models[0], pick[0], spec, seed=0, on_step=start_at_step_one, masks=masks[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started[0]
    prof.stop()
    matmul = other = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in MATMUL_OPS:
            matmul += seconds
        elif event.key.startswith("aten::"):
            other += seconds
    per = 1e3 / (count * (spec.steps - 1))
    return {
        "way": way,
        "k": count,
        "profiled_steps": spec.steps - 1,
        "wall_ms_per_lineage_step": wall * per,
        "matmul_ms": matmul * per,
        "other_aten_ms": other * per,
        "python_and_dispatch_ms": (wall - matmul - other) * per,
    }


def environment(device: torch.device) -> dict:
    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def measure(sizes: dict, spec: TrainingSpec, data, params: int, device) -> dict:
    """Every K and way at the current thread count, the bounds and the step split."""
    flops_per_lineage_step = 6 * BATCH * params
    print("mm peak, copy bandwidth ...", flush=True)
    peaks, bandwidths = [mm_peak(device)], [copy_bandwidth(device)]

    results: dict[tuple[int, str], list[dict]] = {}
    for repeat in range(sizes["repeats"]):
        for count in sizes["ks"]:
            models, masks = lineages(count, sizes, device)
            plain_models = [plain_copy(m) for m in models]
            pick = [data[k % 2] for k in range(count)]
            order = WAYS[repeat % 3 :] + WAYS[: repeat % 3]
            for way in order:
                if way == "batched":
                    out = run_batched(models, masks, pick, spec, device)
                elif way == "alone":
                    out = run_alone(models, masks, pick, spec, device)
                else:
                    out = run_plain(plain_models, masks, pick, spec, device)
                out["steps_per_second"] = out["lineage_steps"] / out["steady_seconds"]
                results.setdefault((count, way), []).append(out)
                print(
                    f"repeat {repeat} K={count} {way}: {out['steps_per_second']:.2f} steps/s",
                    flush=True,
                )
            del models, plain_models

    rows = []
    for count in sizes["ks"]:
        row = {"k": count}
        for way in WAYS:
            runs = results[(count, way)]
            rates = sorted(r["steps_per_second"] for r in runs)
            best = max(runs, key=lambda r: r["steps_per_second"])
            cpu_rates = sorted(r["lineage_steps"] / r["steady_cpu_seconds"] for r in runs)
            fastest = min(r["fastest_lineage_step_seconds"] for r in runs)
            row[way] = {
                "steps_per_second_best": rates[-1],
                "steps_per_second_fastest_step": 1 / fastest,
                "steps_per_cpu_second_best": cpu_rates[-1],
                "steps_per_second_median": rates[len(rates) // 2],
                "gflops_best": rates[-1] * flops_per_lineage_step / 1e9,
                "total_seconds_of_best": best["total_seconds"],
            }
            if way == "batched":
                row[way]["setup_seconds_of_best"] = best["setup_seconds"]
        row["speedup_batched_over_alone"] = (
            row["batched"]["steps_per_second_best"] / row["alone"]["steps_per_second_best"]
        )
        row["speedup_batched_over_plain"] = (
            row["batched"]["steps_per_second_best"] / row["plain"]["steps_per_second_best"]
        )
        for way in ("alone", "plain"):
            row[f"speedup_batched_over_{way}_fastest_step"] = (
                row["batched"]["steps_per_second_fastest_step"]
                / row[way]["steps_per_second_fastest_step"]
            )
        rows.append(row)

    # the machine's figures, best of a measurement before and one after the trainings
    peaks.append(mm_peak(device))
    bandwidths.append(copy_bandwidth(device))
    peak, bandwidth = max(peaks), max(bandwidths)
    run = {"torch_threads": torch.get_num_threads()}
    run["machine"] = {
        "mm_peak_gflops_n2048": peak,
        "copy_bandwidth_gbs": bandwidth,
        "mm_peak_gflops_before_after": peaks,
        "copy_bandwidth_gbs_before_after": bandwidths,
    }
    for row in rows:
        for way in WAYS:
            row[way]["fraction_of_mm_peak"] = row[way]["gflops_best"] / peak
    run["results"] = rows
    print("profiled step split ...", flush=True)
    split_spec = spec.model_copy(update={"steps": sizes["steps"]})
    run["step_split"] = [
        min(
            (step_split(way, count, sizes, data, split_spec, device) for _ in range(2)),
            key=lambda split: split["wall_ms_per_lineage_step"],
        )
        for way, count in (("alone", 1), ("batched", sizes["profile_k"]))
    ]
    alone_rate = max(row["alone"]["steps_per_second_fastest_step"] for row in rows)
    # bytes a lineage step moves at least, whatever K: W read twice (forward, input gradient),
    # its gradient written, and the update reading weight, gradient and mask, writing weight
    bytes_per_step = 4 * params * 7
    run["bounds"] = {
        "alone_rate_used": "fastest alone lineage step over every K and repeat",
        "alone_fraction_of_mm_peak": alone_rate * flops_per_lineage_step / 1e9 / peak,
        "max_speedup_if_batched_ran_at_mm_peak": peak / (alone_rate * flops_per_lineage_step / 1e9),
        "matmul_ms_per_lineage_step_at_mm_peak": flops_per_lineage_step / peak / 1e6,
        "bytes_per_lineage_step_at_least": bytes_per_step,
        "memory_ms_per_lineage_step_at_copy_bandwidth": bytes_per_step / bandwidth / 1e6,
        "alone_ms_per_lineage_step": 1e3 / alone_rate,
    }
    return run


def print_run(run: dict) -> None:
    machine = run["machine"]
    print(
        f"threads {run['torch_threads']}: mm peak {machine['mm_peak_gflops_n2048']:.1f} GFLOP/s, "
        f"copy {machine['copy_bandwidth_gbs']:.1f} GB/s"
    )
    print(
        "| K | batched (steps/s) | alone | plain | batched / alone | batched / plain "
        "| batched GFLOP/s (% of peak) | fastest step: batched / alone, batched / plain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in run["results"]:
        b, a, p = (row[w]["steps_per_second_best"] for w in WAYS)
        print(
            f"| {row['k']} | {b:.2f} | {a:.2f} | {p:.2f} | {row['speedup_batched_over_alone']:.2f}"
            f" | {row['speedup_batched_over_plain']:.2f} | {row['batched']['gflops_best']:.1f} "
            f"({100 * row['batched']['fraction_of_mm_peak']:.0f} %) "
            f"| {row['speedup_batched_over_alone_fastest_step']:.2f}, "
            f"{row['speedup_batched_over_plain_fastest_step']:.2f} |"
        )
    for split in run["step_split"]:
        print(
            f"{split['way']} K={split['k']}: {split['wall_ms_per_lineage_step']:.1f} ms per "
            f"lineage step = matmul {split['matmul_ms']:.1f} + other ops "
            f"{split['other_aten_ms']:.1f} + Python {split['python_and_dispatch_ms']:.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small FCN and K ≤ 4")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[os.cpu_count()],
        help="torch thread counts, one full measurement each (default: all cores)",
    )
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3, quick 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batched.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads[0])
    device = torch.device(args.device)
    sizes = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        sizes["repeats"] = args.repeats
    report = {"mode": "quick" if args.quick else "full", "environment": environment(device)}
    report["command"] = " ".join(["benchmarks/bench_batched.py", *sys.argv[1:]])
    spec = TrainingSpec(lr=0.1, batch_size=BATCH, steps=sizes["steps"], rewind_step=0)
    data = datasets(sizes["n_train"], sizes["classes"])
    probe = build_fcn(FCNModel(hidden=sizes["hidden"]), IMAGE_SHAPE, sizes["classes"], seed=0)
    params = param_count(probe)
    report["setup"] = {
        "fcn": [math.prod(IMAGE_SHAPE), *sizes["hidden"], sizes["classes"]],
        "batch_norm": True,
        "batch": BATCH,
        "parameters": params,
        "dense_weight_density": DENSITY,
        "training": spec.model_dump(mode="json", include={"optimizer", "lr", "momentum"}),
        "timed_steps_per_run": sizes["steps"] - 1,
        "repeats": sizes["repeats"],
        "flops_per_lineage_step": 6 * BATCH * params,
    }
    report["runs"] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"torch threads: {threads}", flush=True)
        run = measure(sizes, spec, data, params, device)
        report["runs"].append(run)
        print_run(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
