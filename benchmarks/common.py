"""What every benchmark records beside its figures: the machine, its matmul peak, best-of timing.

Ratios are measured side by side in one process with the repeats interleaved, so on a shared,
noisy machine both sides see the same disturbances; best times are the least disturbed.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()),
    }


def mm_peak_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best float32 ``torch.mm`` rate at n × n: the ceiling training figures are read against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Best and median seconds of each callable, the repeats interleaved, one warm-up each."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"best_s": min(t), "median_s": statistics.median(t), "times_s": t}
        for name, t in times.items()
    }
