"""Benchmark of the receptive-field metrics.

Each fast path is timed against a plain reference in the same run, so the ratios hold on a
shared, noisy machine even when the absolute times do not:

* ``mask_autocorrelation`` (FFT) against two readings of S(d) = sum_z m_z m_{z-d}: the
  pair loop (one unit at a time, a Python loop over every ordered pair of kept inputs adding 1
  at their offset; benchmark 4's yardstick) and the offset-slice reference (one tensor slice
  pair per offset d, vectorised over units); each must equal the FFT result exactly, for
  ``channels="same"`` and ``"all"``, before anything is timed. Each reference runs on the first
  few units and is compared per unit; the pair loop's cost grows with the square of the kept
  inputs per unit, so the masks' mean density and pair counts are recorded with it;
* ``rf_width`` (batched Levenberg-Marquardt) against ``scipy.optimize.curve_fit`` unit by unit,
  on a subsample of units, compared per unit;

Times are best-of-N and median-of-N wall-clock seconds; ratios use the best times, the ones
least disturbed by other processes. ``rf_width`` runs on one thread: on a
shared machine a second torch thread mostly waits for a core, which swamps what is measured.
Run from the repository root:

    .venv/bin/python benchmarks/bench_metrics.py [--quick] [--out benchmarks/results/metrics.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import cpu_model
from scipy.optimize import curve_fit

from lotterylab.platform.metrics import (
    SIGMA_MAX_PER_PIXEL,
    SIGMA_MIN,
    mask_autocorrelation,
    rf_width,
)

RF_REFERENCE_UNITS = 32


def timings(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Best and median of ``repeats`` timed calls, after one untimed call unless already warm."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with torch limited to ``n`` intra-op threads, restored afterwards."""

    def run() -> object:
        previous = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(previous)

    return run


def blob_masks(units: int, image_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """First-layer masks shaped like pruned receptive fields, so the widths are meaningful.

    Each unit keeps input (c, y, x) with probability exp(-(x-cx)^2/2sx^2 - (y-cy)^2/2sy^2),
    centre uniform over the image and widths uniform in [1.5, Np/4].
    """
    c, ny, nx = image_shape
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(units, 2, generator=g) * torch.tensor([ny - 1.0, nx - 1.0])
    width = 1.5 + torch.rand(units, 2, generator=g) * (torch.tensor([ny, nx]) / 4 - 1.5)
    y = torch.arange(ny, dtype=torch.float32)[None, :, None]
    x = torch.arange(nx, dtype=torch.float32)[None, None, :]
    p = torch.exp(
        -0.5 * ((y - centre[:, 0, None, None]) / width[:, 0, None, None]).square()
        - 0.5 * ((x - centre[:, 1, None, None]) / width[:, 1, None, None]).square()
    )
    keep = torch.rand(units, c, ny, nx, generator=g) < p[:, None]
    return keep.reshape(units, c * ny * nx)


def reference_autocorrelation(
    mask: torch.Tensor, image_shape: tuple[int, int, int], channels: str = "same"
) -> torch.Tensor:
    """S(d) = sum_z m_z m_{z-d} straight from the definition, one slice pair per offset d.

    Slow but plainly right: the yardstick the FFT version must match exactly.
    """
    c, ny, nx = image_shape
    m = mask.ne(0).to(torch.float32).reshape(-1, c, ny, nx)
    kept = m.sum(dim=(1, 2, 3), dtype=torch.float64)
    if channels == "all":  # sum_{c,c'} m_c(z) m_c'(z-d) = M(z) M(z-d) with M = sum_c m_c
        m = m.sum(dim=1, keepdim=True)
    s = torch.empty(len(m), 2 * ny - 1, 2 * nx - 1, dtype=torch.float64)
    for dy in range(1 - ny, ny):
        for dx in range(1 - nx, nx):
            # z runs over the pixels where both z and z - d lie inside the image
            z = m[:, :, max(dy, 0) : ny + min(dy, 0), max(dx, 0) : nx + min(dx, 0)]
            z_minus_d = m[:, :, max(-dy, 0) : ny + min(-dy, 0), max(-dx, 0) : nx + min(-dx, 0)]
            s[:, dy + ny - 1, dx + nx - 1] = (z * z_minus_d).sum(dim=(1, 2, 3))
    s[:, ny - 1, nx - 1] -= kept
    return s


def pair_loop_autocorrelation(
    mask: torch.Tensor, image_shape: tuple[int, int, int], channels: str = "same"
) -> torch.Tensor:
    """S(d) the way the definition reads: one unit at a time, every ordered pair of kept inputs.

    For each unit, a Python loop over all ordered pairs (z, z') of kept pixels adds 1 to
    S[z - z'], pairs taken within each channel (``"same"``) or across any two channels
    (``"all"``); then each unit's kept count comes off d = 0, where every kept input met
    itself. Cost: linear in units, quadratic in kept inputs per unit.
    """
    c, ny, nx = image_shape
    units = []
    for unit in mask.ne(0).reshape(-1, c, ny, nx).tolist():
        kept = [[(y, x) for y in range(ny) for x in range(nx) if unit[ch][y][x]] for ch in range(c)]
        groups = kept if channels == "same" else [[z for pixels in kept for z in pixels]]
        s = [[0] * (2 * nx - 1) for _ in range(2 * ny - 1)]
        for pixels in groups:
            for y, x in pixels:
                for y2, x2 in pixels:
                    s[y - y2 + ny - 1][x - x2 + nx - 1] += 1
        s[ny - 1][nx - 1] -= sum(len(pixels) for pixels in kept)
        units.append(s)
    return torch.tensor(units, dtype=torch.float64).reshape(-1, 2 * ny - 1, 2 * nx - 1)


def _gaussian(d: np.ndarray, a: float, sx: float, sy: float) -> np.ndarray:
    return a * np.exp(-0.5 * (d[0] / sx) ** 2 - 0.5 * (d[1] / sy) ** 2)


def reference_rf_width(mask: torch.Tensor, image_shape: tuple[int, int, int]) -> np.ndarray:
    """(units, 2) sigmas from ``scipy.optimize.curve_fit``, one unit at a time.

    The same problem as ``rf_width`` (same S, d = 0 left out, same start and bounds) solved by
    a general-purpose fitter, to check the batched fit's answers and price its speed.
    """
    _, ny, nx = image_shape
    s = mask_autocorrelation(mask, image_shape).numpy()
    dy, dx = np.meshgrid(np.arange(1 - ny, ny), np.arange(1 - nx, nx), indexing="ij")
    off_centre = (dx != 0) | (dy != 0)
    d = np.stack([dx[off_centre], dy[off_centre]]).astype(np.float64)
    lower = [-np.inf, SIGMA_MIN, SIGMA_MIN]
    upper = [np.inf, SIGMA_MAX_PER_PIXEL * nx, SIGMA_MAX_PER_PIXEL * ny]
    sigmas = []
    for unit in s:
        target = unit[off_centre]
        start = np.clip(np.sqrt((target * d**2).sum(axis=1) / target.sum()), lower[1:], upper[1:])
        params, _ = curve_fit(
            _gaussian, d, target, p0=[target.max(), *start], bounds=(lower, upper)
        )
        sigmas.append(params[1:])
    return np.array(sigmas)


def bench_autocorrelation(
    units: int,
    image_shape: tuple[int, int, int],
    reference_units: int,
    pair_loop_units: int,
    repeats: int,
    reference_repeats: int,
    threads: int,
) -> dict:
    """FFT at 1 and default threads against two references, each on the first few units.

    The offset-slice reference runs on ``reference_units`` units, the pair loop on
    ``pair_loop_units``. Both cost time linear in the number of units, so each is compared per
    unit, its exactness check being its warm-up. The pair loop's cost also grows with the
    square of the kept inputs per unit, so the masks' density and pair counts, of the layer
    and of the units it ran on, are recorded beside it.
    """
    mask = blob_masks(units, image_shape, seed=0)
    head = mask[:reference_units]
    pair_head = mask[:pair_loop_units]
    for channels in ("same", "all"):
        fast = mask_autocorrelation(head, image_shape, channels)
        if not torch.equal(fast, reference_autocorrelation(head, image_shape, channels)):
            raise AssertionError(f"FFT and direct S(d) differ for {image_shape}, {channels}")
        fast = mask_autocorrelation(pair_head, image_shape, channels)
        if not torch.equal(fast, pair_loop_autocorrelation(pair_head, image_shape, channels)):
            raise AssertionError(f"FFT and pair-loop S(d) differ for {image_shape}, {channels}")
    fft_1 = timings(with_threads(1, lambda: mask_autocorrelation(mask, image_shape)), repeats)
    fft_n = timings(with_threads(threads, lambda: mask_autocorrelation(mask, image_shape)), repeats)
    reference = timings(
        lambda: reference_autocorrelation(head, image_shape), reference_repeats, warm_up=False
    )
    reference_per_unit = reference["best_s"] / reference_units
    pair_loop = timings(
        lambda: pair_loop_autocorrelation(pair_head, image_shape), reference_repeats, warm_up=False
    )
    pair_loop_per_unit = pair_loop["best_s"] / pair_loop_units
    # ordered same-channel pairs of kept inputs per unit, self-pairs included: the loop's work
    kept = mask.reshape(units, image_shape[0], -1).sum(dim=2, dtype=torch.float64)
    pairs = kept.square().sum(dim=1)
    density = mask.to(torch.float64).mean(dim=1)
    return {
        "units": units,
        "image_shape": list(image_shape),
        "mean_density": float(density.mean()),
        "exact_match_same_and_all": True,
        "fft_1_thread": fft_1,
        "fft_default_threads": fft_n,
        "reference_units": reference_units,
        "reference_default_threads": reference,
        "reference_per_unit_s": reference_per_unit,
        "speedup_1_thread": reference_per_unit * units / fft_1["best_s"],
        "speedup_default_threads": reference_per_unit * units / fft_n["best_s"],
        "pair_loop_units": pair_loop_units,
        "pair_loop_mean_density": float(density[:pair_loop_units].mean()),
        "pairs_per_unit": float(pairs.mean()),
        "pair_loop_pairs_per_unit": float(pairs[:pair_loop_units].mean()),
        "pair_loop": pair_loop,
        "pair_loop_per_unit_s": pair_loop_per_unit,
        "speedup_vs_pair_loop_1_thread": pair_loop_per_unit * units / fft_1["best_s"],
        "thread_scaling": fft_1["best_s"] / fft_n["best_s"],
    }


def bench_rf_width(units: int, image_shape: tuple[int, int, int], repeats: int) -> dict:
    """Batched fit for the whole layer against curve_fit on a subsample, per unit.

    curve_fit solves one small problem at a time and gets nothing from extra threads, so the
    batched fit runs on 1 thread too: like for like, and steady on a loaded machine.
    """
    mask = blob_masks(units, image_shape, seed=0)
    sigma_x, sigma_y = rf_width(mask, image_shape)
    sigma = torch.stack([sigma_x, sigma_y], dim=1).numpy()
    measured = np.flatnonzero(np.isfinite(sigma).all(axis=1))
    picked = measured[np.linspace(0, len(measured) - 1, RF_REFERENCE_UNITS).astype(int)]
    sub = mask[torch.from_numpy(picked)]
    reference_sigma = reference_rf_width(sub, image_shape)
    batched = timings(with_threads(1, lambda: rf_width(mask, image_shape)), repeats)
    reference = timings(lambda: reference_rf_width(sub, image_shape), 2, warm_up=False)
    reference_per_unit = reference["best_s"] / len(picked)
    relative = np.abs(sigma[picked] - reference_sigma) / reference_sigma
    return {
        "units": units,
        "image_shape": list(image_shape),
        "measured_units": int(len(measured)),
        "median_sigma_px": float(np.median(sigma[measured])),
        "batched_1_thread": batched,
        "batched_per_unit_s": batched["best_s"] / units,
        "reference_units": int(len(picked)),
        "reference_curve_fit": reference,
        "reference_per_unit_s": reference_per_unit,
        "speedup_per_unit": reference_per_unit * units / batched["best_s"],
        "max_relative_sigma_difference": float(relative.max()),
    }


def environment(threads: int) -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_default_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics.json"))
    args = parser.parse_args()

    threads = torch.get_num_threads()
    # units, image shape, units the offset-slice and pair-loop references run on, repeats,
    # reference repeats
    layers = [(256, (1, 16, 16), 64, 256, 7, 3), (1024, (3, 32, 32), 16, 64, 5, 2)]
    if args.quick:
        layers = [(256, (1, 16, 16), 32, 64, 3, 1), (1024, (3, 32, 32), 4, 8, 3, 1)]
    else:
        layers.append((1024, (3, 64, 64), 2, 16, 3, 1))

    report = {"mode": "quick" if args.quick else "full", "environment": environment(threads)}
    report["mask_autocorrelation"] = []
    for units, shape, ref_units, pair_units, repeats, ref_repeats in layers:
        print(f"mask_autocorrelation H={units} {shape}", flush=True)
        report["mask_autocorrelation"].append(
            bench_autocorrelation(
                units, shape, ref_units, pair_units, repeats, ref_repeats, threads
            )
        )
    report["rf_width"] = []
    for units, shape, _, _, repeats, _ in layers:
        print(f"rf_width H={units} {shape}", flush=True)
        report["rf_width"].append(bench_rf_width(units, shape, repeats))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
