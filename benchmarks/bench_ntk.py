"""Benchmark of ``ntk_spectrum`` (chunked ``vmap(jacrev)``) against a per-sample autograd loop.

The fixed-weight NTK spectrum of a CIFAR ResNet-20 (about 272 000 weights, 10 logits) on N
random 3 x 32 x 32 inputs: Θ is (10·N) x (10·N). The batch-norm running statistics are first
calibrated on the inputs (as after training). Both methods run in this process on the same
model and inputs, and their Θ and spectra are compared afterwards:

* ``ntk_spectrum``: per-sample Jacobians of a chunk of samples in one ``vmap(jacrev(...))``
  call, Θ accumulated blockwise in float64, then ``eigvalsh``. Timed with ``--chunk-size``
  samples a chunk (default: all N, so each Jacobian is computed once; it fits in memory here)
  and once with the library's default chunk of 16 (less memory, but chunk b's Jacobian is
  recomputed for every chunk a ≤ b);
* the reference, as in ``tests/test_ntk.py``: one forward pass per sample, one
  ``torch.autograd.grad`` call per logit, the rows stacked into J, Θ = J Jᵀ in float64, then
  ``eigvalsh``. Its Jacobian and product stages are timed separately too: the float64 product,
  the same GEMM work in both methods, bounds the speed-up that faster Jacobians can give.

Times are best-of-repeats wall-clock seconds after one untimed warm-up at a small N, the two
methods' repeats interleaved, on one torch thread by default: on a shared machine a second
thread mostly waits for a core, which swamps what is measured. Peak memory is the peak RSS
(VmHWM) during each call less the RSS at its start, the peak reset before each call through
/proc/self/clear_refs. Run from the repository root:

    .venv/bin/python benchmarks/bench_ntk.py [--n 100] [--chunk-size N] [--repeats 3]
        [--threads 1] [--skip-default-chunk] [--out benchmarks/results/ntk.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import environment
from pydantic import TypeAdapter
from torch import nn

from lotterylab.platform.metrics import ntk_matrix, ntk_spectrum
from lotterylab.platform.metrics.ntk import NTK_CHUNK_SIZE
from lotterylab.platform.models import build_model
from lotterylab.platform.spec import ModelSpec

CLASSES = 10
INPUT_SHAPE = (3, 32, 32)


def calibrate_batch_norm(model: nn.Module, inputs: torch.Tensor) -> None:
    """Running statistics from one pass over ``inputs``, as a trained network would carry.

    With the initial ones (mean 0, variance 1) nothing normalises a freshly initialised
    ResNet, its activations grow through the blocks, and float32 Jacobians lose about three
    digits, in either method; calibrated, both agree with each other to float32 rounding.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(inputs)
    model.eval()


def reference_jacobian(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """J (N·K, P), float32, row by row: one forward per sample, one grad call per logit."""
    model = copy.deepcopy(model).eval()
    params = list(model.parameters())
    rows = []
    for x in inputs:
        out = model(x.unsqueeze(0)).reshape(-1)
        for k in range(len(out)):
            grads = torch.autograd.grad(out[k], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def reference_spectrum(model: nn.Module, inputs: torch.Tensor) -> dict:
    start = time.perf_counter()
    jac = reference_jacobian(model, inputs).double()
    middle = time.perf_counter()
    theta = jac @ jac.T
    end = time.perf_counter()
    return {
        "theta": theta,
        "eigenvalues": torch.linalg.eigvalsh(theta).flip(0),
        "jacobian_s": middle - start,
        "product_s": end - middle,
    }


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(fn: Callable[[], object]) -> tuple[float, float, bool, object]:
    """Wall-clock seconds, peak RSS growth (MiB) over the RSS at the start, whether the peak
    could be reset first (otherwise it is the process's), and the result of one call."""
    resettable = reset_peak_rss()
    base = current_rss_mib()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, peak_rss_mib() - base, resettable, result


def summary(runs: list[tuple[float, float, bool, object]]) -> dict:
    times = [r[0] for r in runs]
    return {
        "best_s": min(times),
        "times_s": times,
        "repeats": len(runs),
        "peak_rss_growth_mib": max(r[1] for r in runs),
        "peak_rss_reset_per_call": all(r[2] for r in runs),
    }


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="number of random inputs")
    parser.add_argument("--chunk-size", type=int, help="ntk_spectrum's chunk (default: n)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument(
        "--skip-default-chunk", action="store_true", help="do not time chunk_size=16"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ntk.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chunk = args.chunk_size or args.n

    spec = TypeAdapter(ModelSpec).validate_python({"name": "resnet20"})
    model = build_model(spec, INPUT_SHAPE, CLASSES, 0)
    inputs = torch.randn(args.n, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    calibrate_batch_norm(model, inputs)
    report = {"environment": environment()}
    report["setup"] = {
        "model": "resnet20",
        "parameters": sum(p.numel() for p in model.parameters()),
        "masks": None,
        "batch_norm": "running statistics calibrated on the inputs, then eval mode",
        "n": args.n,
        "theta_size": args.n * CLASSES,
        "input_shape": list(INPUT_SHAPE),
        "dtype": "float32 model and Jacobians, float64 Θ",
    }

    print("warm-up ...", flush=True)
    ntk_spectrum(model, None, inputs[:2])
    reference_spectrum(model, inputs[:2])

    # interleaved, so that both methods see the same mix of quiet and busy moments
    fast_runs, reference_runs = [], []
    for repeat in range(args.repeats):
        fast_runs.append(run_once(lambda: ntk_spectrum(model, None, inputs, chunk)))
        reference_runs.append(run_once(lambda: reference_spectrum(model, inputs)))
        print(
            f"repeat {repeat + 1}: ntk_spectrum (chunk_size={chunk}) {fast_runs[-1][0]:.1f} s, "
            f"reference {reference_runs[-1][0]:.1f} s",
            flush=True,
        )
    fast = summary(fast_runs) | {"chunk_size": chunk}
    reference = summary(reference_runs)
    best = min(reference_runs, key=lambda r: r[0])[3]
    reference["best_run_jacobian_s"] = best["jacobian_s"]
    reference["best_run_product_s"] = best["product_s"]
    eigenvalues = fast_runs[-1][3]
    del fast_runs, reference_runs

    theta = ntk_matrix(model, None, inputs, chunk)
    report["agreement"] = {
        "theta_max_abs_difference_over_max": relative_difference(theta, best["theta"]),
        "eigenvalues_max_abs_difference_over_max": relative_difference(
            eigenvalues, best["eigenvalues"]
        ),
        "note": (
            "both Θ come from float32 Jacobians computed with differently batched kernels; a "
            "ReLU input within float32 rounding of zero can switch sides between them and "
            "change that sample's Jacobian by percents, so entries may differ by ~1e-3 of "
            "max |Θ|, while on float64 models the two agree to 1e-12 (tests/test_ntk.py)"
        ),
    }
    del theta
    report["ntk_spectrum"] = fast
    report["reference"] = reference
    report["speedup"] = reference["best_s"] / fast["best_s"]

    if not args.skip_default_chunk and NTK_CHUNK_SIZE != chunk:
        print(f"ntk_spectrum, chunk_size={NTK_CHUNK_SIZE} (once) ...", flush=True)
        run = run_once(lambda: ntk_spectrum(model, None, inputs, NTK_CHUNK_SIZE))
        chunked = summary([run]) | {"chunk_size": NTK_CHUNK_SIZE}
        chunked["eigenvalues_max_abs_difference_over_max"] = relative_difference(
            run[3], best["eigenvalues"]
        )
        chunked["speedup"] = reference["best_s"] / chunked["best_s"]
        report["ntk_spectrum_default_chunk"] = chunked
        print(f"  {chunked['best_s']:.1f} s", flush=True)

    report["top_eigenvalues"] = eigenvalues[:5].tolist()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"n={args.n}: ntk_spectrum {fast['best_s']:.1f} s "
        f"(peak RSS +{fast['peak_rss_growth_mib']:.0f} MiB), reference {reference['best_s']:.1f} s "
        f"(Jacobian {best['jacobian_s']:.1f} s + product {best['product_s']:.1f} s, peak RSS "
        f"+{reference['peak_rss_growth_mib']:.0f} MiB), speed-up {report['speedup']:.1f}x, "
        f"max rel. Θ difference {report['agreement']['theta_max_abs_difference_over_max']:.1e}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
