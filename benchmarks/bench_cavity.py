"""Benchmark of ``cavity_scores`` (moment matmuls) against a per-unit broadcast reference.

Paper 1's cavity analysis scores every first-layer weight at every IMP round: for an FCN on
ImageNet32 that is a 1024 x 3072 layer on 50 000 inputs. Two ways are timed on the same inputs:

* ``cavity_scores``: four (H, D) moment matrices, each one matmul per chunk of samples,
  float64, then the score of every weight in closed form;
* the reference: for unit i, λ_i with each of its D weights removed, all at once as one (N, D)
  float64 broadcast, and the kurtosis of every column. It is plainly right and has no loop
  over weights, but it costs O(N·D) per unit. It runs on a few units spread over the layer and
  is scaled up to all of them; its scores must agree with ``cavity_scores`` on those units.

Each method runs in its own child process, so that its peak memory can be read from
``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the growth over the peak reached once the
inputs exist. Inputs are NLGP images (3 x 32 x 32, float32), the weights Glorot-normal.
Run from the repository root:

    .venv/bin/python benchmarks/bench_cavity.py [--quick] [--device cpu|cuda]
        [--out benchmarks/results/cavity.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import cpu_model

from lotterylab.platform.data.nlgp import sample_nlgp
from lotterylab.platform.metrics import CAVITY_CHUNK_SIZE, cavity_scores

FULL = {"units": 1024, "grid": 32, "channels": 3, "samples": 50_000, "reference_units": 4}
QUICK = {"units": 128, "grid": 16, "channels": 3, "samples": 5_000, "reference_units": 2}


def layer(units: int, grid: int, channels: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Glorot-normal weights (H, D) and NLGP inputs (N, D), float32, the same in every process."""
    g = torch.Generator().manual_seed(0)
    inputs, _ = sample_nlgp(samples, grid, channels, [1.0, 3.0], 3.0, g)
    d = channels * grid * grid
    weight = torch.randn(units, d, generator=g) * math.sqrt(2.0 / (units + d))
    return weight, inputs


def reference_unit(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cavity scores (D,) of one unit with weights ``w`` (D,) on float64 inputs ``x`` (N, D).

    Column j of the (N, D) broadcast is λ with W_ij x_j taken out; worked in place, so its peak
    is one extra (N, D) float64 array.
    """
    lam = x @ w
    centred = lam - lam.mean()
    kurt = centred.pow(4).mean() / centred.square().mean().square()
    removed = x * -w  # every weight removed at once, one per column
    removed += lam[:, None]
    removed -= removed.mean(dim=0)
    removed.square_()
    m2 = removed.mean(dim=0)
    removed.square_()
    kurt_removed = removed.mean(dim=0) / m2.square()
    scores = torch.sign(kurt - 3) * (kurt_removed - kurt) / kurt
    return scores.masked_fill(w == 0, torch.nan)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(method: str, sizes: dict, device: str, rows_path: Path) -> dict:
    """One method's measurement, run inside a fresh process; returns what it measured."""
    weight, inputs = layer(sizes["units"], sizes["grid"], sizes["channels"], sizes["samples"])
    picked = torch.linspace(0, sizes["units"] - 1, sizes["reference_units"]).round().long()
    weight, inputs = weight.to(device), inputs.to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = peak_rss_mib()
    if method == "fast":
        start = time.perf_counter()
        scores = cavity_scores(weight, inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows = scores[picked].cpu()
        result = {"seconds": seconds, "chunk_size": CAVITY_CHUNK_SIZE}
    else:
        x = inputs.double()  # the reference's own working copy, counted in its memory
        per_unit, rows = [], []
        for i in picked.tolist():
            start = time.perf_counter()
            rows.append(reference_unit(weight[i].double(), x).cpu())
            if device == "cuda":
                torch.cuda.synchronize()
            per_unit.append(time.perf_counter() - start)
        rows = torch.stack(rows)
        result = {"seconds_per_unit": per_unit, "units_timed": picked.tolist()}
    torch.save(rows, rows_path)
    result["peak_rss_growth_mib"] = peak_rss_mib() - base_rss
    if device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_child(method: str, args: argparse.Namespace, rows_path: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, "--device", args.device]
    command += ["--rows", str(rows_path)] + (["--quick"] if args.quick else [])
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(device: str) -> dict:
    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "device": device,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small layer, for a smoke test")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cavity.json"))
    parser.add_argument("--child", choices=("fast", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.child:
        print(json.dumps(child(args.child, sizes, args.device, args.rows)))
        return

    report = {"mode": "quick" if args.quick else "full", "environment": environment(args.device)}
    report["layer"] = {
        "units": sizes["units"],
        "inputs": sizes["channels"] * sizes["grid"] ** 2,
        "samples": sizes["samples"],
        "input_dtype": "float32",
    }
    with tempfile.TemporaryDirectory() as tmp:
        print("cavity_scores ...", flush=True)
        fast = run_child("fast", args, Path(tmp) / "fast.pt")
        print("per-unit reference ...", flush=True)
        reference = run_child("reference", args, Path(tmp) / "reference.pt")
        fast_rows = torch.load(Path(tmp) / "fast.pt", weights_only=True)
        reference_rows = torch.load(Path(tmp) / "reference.pt", weights_only=True)
    difference = (fast_rows - reference_rows).abs() / reference_rows.abs().clamp_min(1e-12)
    mean_unit = sum(reference["seconds_per_unit"]) / len(reference["seconds_per_unit"])
    reference["seconds_scaled_to_layer"] = mean_unit * sizes["units"]
    report["cavity_scores"] = fast
    report["reference"] = reference
    report["speedup"] = reference["seconds_scaled_to_layer"] / fast["seconds"]
    worst = float(difference.nan_to_num(nan=0.0).max())
    report["max_relative_difference_on_reference_units"] = worst
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    header = (
        "| Layer (H × D, N) | `cavity_scores` (s) | peak RSS growth (MiB) | reference (s per "
        "unit, units timed) | reference scaled (s) | reference peak RSS growth (MiB) | "
        "speed-up | max rel. difference |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {sizes['units']} × {report['layer']['inputs']}, {sizes['samples']} "
        f"| {fast['seconds']:.1f} | {fast['peak_rss_growth_mib']:.0f} "
        f"| {mean_unit:.2f} ({len(reference['seconds_per_unit'])}) "
        f"| {reference['seconds_scaled_to_layer']:.0f} "
        f"| {reference['peak_rss_growth_mib']:.0f} | {report['speedup']:.0f}× "
        f"| {report['max_relative_difference_on_reference_units']:.1e} |"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
