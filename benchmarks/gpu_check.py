"""`make gpu-check`: every CUDA path of the platform checked, and the GPU figures recorded, in
one command.

A GPU is lent for minutes, not days, so this one process tree spends them measuring:

1. ``tests``: the device-aware tests (batched training, kurtosis, cavity, pruning, NTK, the
   tests that once needed CUDA) run with ``--device``, in a pytest child process;
2. ``fcn``: paper 1's FCN (BN-3072-1024-1024-1000, batch 40, half of the dense weights masked)
   trained one lineage at a time and K stacked (``platform.batched``), in steps/s and as a
   fraction of the ``torch.mm`` peak measured in this run;
3. ``imp_round``: one IMP round of paper 1's study shape (2 data sets × 3 seeds × 4 trainings
   stacked) on synthetic ImageNet32-sized data, extrapolated to the whole study;
4. ``pai``: PaI scoring of each method on ResNet-20 at batch 128 (SynFlow and PX also at
   T = 100, paper 2's Table 2) and ResNet-20 training with and without channels_last and bf16
   autocast;
5. ``ray``: a 2-trial Tune experiment with ``resources.gpu: 0.5`` through
   ``cluster.launch.run_experiment``, then ``lotterylab analyze``'s actor pool with its
   fractional GPU shares; each lineage's ``lineage.json`` and each computed unit say which
   device they used;
6. everything, with the device, driver, torch and CUDA versions, into one JSON file, and a
   short table on stdout.

``--device cpu --quick`` runs the very same code small, on the CPU, in CI. The exit status is 1
when a check fails (every section still runs and is recorded). Run from the repository root:

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from bench_batched import BATCH, DENSITY, IMAGE_SHAPE, lineages, param_count, run_alone, run_batched
from bench_batched import datasets as synthetic_sets
from bench_batched import mm_peak as mm_peak_gflops
from bench_training import random_data, random_masks
from common import environment
from pydantic import TypeAdapter

from lotterylab.platform.models import FCNModel, build_fcn, build_model, prunable_names
from lotterylab.platform.models.masking import apply_masks
from lotterylab.platform.pruning import method_names, prune_at_init
from lotterylab.platform.spec import ModelSpec, TrainingSpec
from lotterylab.platform.training import make_optimizer, train_epoch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = {
    "cuda": Path("benchmarks/results-gpu.json"),
    "cpu": Path("benchmarks/results/gpu-check-cpu.json"),  # never over the GPU figures
}
TEST_FILES = [
    "tests/test_batched.py",
    "tests/test_kurtosis_cavity.py",
    "tests/test_pruning.py",
    "tests/test_ntk.py",
]
QUICK_TESTS = (
    "to_its_device or on_the_test_device or single_lineage_without_masks "
    "or (batched_lineages_end_where and plain) or (matrix_matches_autograd_reference and mlp)"
)
PAPER2_TABLE2_TITAN_XP_S = {"synflow": 13.4, "px": 14.1}  # T = 100, ResNet-20, batch 128
STUDY = {"datasets": 2, "seeds": 3, "trainings_per_lineage": 11, "steps": 40_000}

FULL = {
    "tests": None,  # every test of TEST_FILES
    "tests_timeout_s": 300,
    "fcn": {"hidden": [1024, 1024], "classes": 1000, "ks": [8, 16, 32], "alone": 2},
    "fcn_steps": 50,
    "fcn_repeats": 2,
    "fcn_train": 4000,
    "mm_n": {"cuda": 4096, "cpu": 2048},
    "imp": {"seeds": 3, "trainings": 4, "steps": 2000, "n_train": 20_000},
    "resnet_width": 16,
    "pai_batch": 128,
    "pai_rounds": 100,
    "train_steps": 100,
    "train_repeats": 2,
    "tune_steps": 200,
}
QUICK = {
    "tests": QUICK_TESTS,
    "tests_timeout_s": 300,
    "fcn": {"hidden": [128, 128], "classes": 100, "ks": [2, 4], "alone": 2},
    "fcn_steps": 6,
    "fcn_repeats": 1,
    "fcn_train": 400,
    "mm_n": {"cuda": 2048, "cpu": 1024},
    "imp": {"seeds": 1, "trainings": 2, "steps": 10, "n_train": 400},
    "resnet_width": 4,
    "pai_batch": 16,
    "pai_rounds": 3,
    "train_steps": 2,
    "train_repeats": 1,
    "tune_steps": 20,
}
CIFAR_TRAIN = 50_000  # images per epoch of the CIFAR-shaped training


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``fn()`` and its wall seconds, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def best_of(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls after one warm-up call."""
    fn()
    return min(timed(fn, device)[1] for _ in range(repeats))


# -- the machine -----------------------------------------------------------------------------
def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def machine(device: torch.device) -> dict:
    info = environment()
    info |= {
        "device": str(device),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "driver": None,
        "device_name": info["cpu_model"],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "driver": nvidia_driver(),
            "gpu_memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_count": torch.cuda.device_count(),
        }
    return info


# -- 1. tests --------------------------------------------------------------------------------
def run_tests(device: torch.device, sizes: dict, workdir: Path) -> dict:
    """The device-aware tests in a pytest child; counts read from its JUnit XML."""
    report = workdir / "tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--device", device.type, f"--junitxml={report}", *TEST_FILES]
    if sizes["tests"]:
        command += ["-k", sizes["tests"]]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=sizes["tests_timeout_s"],
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:  # a hung test must not eat the GPU's minutes
        returncode = None
        output = f"timed out after {exc.timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    seconds = time.perf_counter() - start
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if report.exists():
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {
        "command": " ".join(command[1:]),
        "returncode": returncode,
        "seconds": seconds,
        **counts,
        "passed": passed,
        "failed_tests": failed,
        "output_tail": str(output)[-3000:],
        "ok": returncode == 0 and passed > 0,
    }


# -- 2. paper 1's FCN, alone and stacked ------------------------------------------------------
def time_fcn(device: torch.device, sizes: dict) -> dict:
    fcn = sizes["fcn"]
    peak = mm_peak_gflops(device, n=sizes["mm_n"][device.type])
    spec = TrainingSpec(lr=0.1, batch_size=BATCH, steps=sizes["fcn_steps"], rewind_step=0)
    data = synthetic_sets(sizes["fcn_train"], fcn["classes"])
    probe = build_fcn(FCNModel(hidden=fcn["hidden"]), IMAGE_SHAPE, fcn["classes"], seed=0)
    params = param_count(probe)
    flops_per_lineage_step = 6 * BATCH * params
    ways = [("alone", fcn["alone"])] + [("stacked", k) for k in fcn["ks"]]
    rows = []
    for way, count in ways:
        best = None
        for _ in range(sizes["fcn_repeats"]):
            models, masks = lineages(count, fcn, device)
            pick = [data[k % 2] for k in range(count)]
            run = run_alone if way == "alone" else run_batched
            out = run(models, masks, pick, spec, device)
            rate = out["lineage_steps"] / out["steady_seconds"]
            best = rate if best is None else max(best, rate)
            del models, masks
        gflops = best * flops_per_lineage_step / 1e9
        rows.append(
            {
                "way": way,
                "k": count,
                "lineage_steps_per_s": best,
                "gflops": gflops,
                "fraction_of_mm_peak": gflops / peak,
            }
        )
    alone = rows[0]["lineage_steps_per_s"]
    for row in rows:
        row["speedup_over_alone"] = row["lineage_steps_per_s"] / alone
    return {
        "fcn": [math.prod(IMAGE_SHAPE), *fcn["hidden"], fcn["classes"]],
        "batch": BATCH,
        "dense_weight_density": DENSITY,
        "parameters": params,
        "timed_steps": sizes["fcn_steps"] - 1,
        "repeats": sizes["fcn_repeats"],
        "mm_peak_gflops": peak,
        "mm_n": sizes["mm_n"][device.type],
        "ks": fcn["ks"],
        "rows": rows,
        "ok": all(
            math.isfinite(r["lineage_steps_per_s"]) and r["lineage_steps_per_s"] > 0 for r in rows
        ),
    }


# -- 3. one IMP round of paper 1's study -------------------------------------------------------
def time_imp_round(device: torch.device, sizes: dict) -> dict:
    imp, fcn = sizes["imp"], sizes["fcn"]
    data = synthetic_sets(imp["n_train"], fcn["classes"])  # 2 sets of ImageNet32's shape
    count = len(data) * imp["seeds"] * imp["trainings"]
    spec = TrainingSpec(lr=0.1, batch_size=BATCH, steps=imp["steps"], rewind_step=0)
    models, masks = lineages(count, fcn, device)
    pick = [data[k % len(data)] for k in range(count)]
    out = run_batched(models, masks, pick, spec, device)
    del models, masks
    rate = out["lineage_steps"] / out["steady_seconds"]
    study_steps = STUDY["datasets"] * STUDY["seeds"] * STUDY["trainings_per_lineage"]
    study_steps *= STUDY["steps"]
    return {
        "stacked_trainings": count,
        "shape": f"{len(data)} data sets x {imp['seeds']} seeds x {imp['trainings']} trainings",
        "steps": imp["steps"],
        "n_train_per_set": imp["n_train"],
        "round_seconds": out["total_seconds"],
        "setup_seconds": out["setup_seconds"],
        "lineage_steps_per_s": rate,
        "study": STUDY,
        "study_lineage_steps": study_steps,
        "study_minutes_extrapolated": study_steps / rate / 60,
        "extrapolation": "training steps only, at this run's stacked rate; evaluation, "
        "pruning, kurtosis and cavity scores not included",
        "ok": math.isfinite(rate) and rate > 0,
    }


# -- 4. PaI scoring and ResNet-20 training ----------------------------------------------------
def resnet20(width: int, seed: int = 0):
    spec = TypeAdapter(ModelSpec).validate_python({"name": "resnet20", "width": width})
    return build_model(spec, IMAGE_SHAPE, 10, seed)


def time_pai(device: torch.device, sizes: dict) -> dict:
    model = resnet20(sizes["resnet_width"]).to(device)
    g = torch.Generator().manual_seed(0)
    batch = sizes["pai_batch"]
    data = [(torch.randn((batch, *IMAGE_SHAPE), generator=g), torch.arange(batch) % 10)]
    data = [(x.to(device), y.to(device)) for x, y in data]
    runs = [(name, 1) for name in method_names()]
    runs += [(name, sizes["pai_rounds"]) for name in PAPER2_TABLE2_TITAN_XP_S]
    rows = []
    for method, rounds in runs:
        masks, seconds = timed(
            lambda method=method, rounds=rounds: prune_at_init(
                model, method, 0.1, data=data, rounds=rounds, seed=0
            ),
            device,
        )
        on_device = all(m.device.type == device.type for m in masks.values())
        row = {"method": method, "rounds": rounds, "seconds": seconds, "on_device": on_device}
        if rounds == FULL["pai_rounds"] and method in PAPER2_TABLE2_TITAN_XP_S:
            row["paper2_titan_xp_s"] = PAPER2_TABLE2_TITAN_XP_S[method]
        rows.append(row)
    return {
        "model": f"resnet20 width {sizes['resnet_width']}",
        "batch": batch,
        "density": 0.1,
        "rows": rows,
        "ok": all(r["on_device"] and r["seconds"] > 0 for r in rows),
    }


def plain_epoch(model, optimizer, x_all, y_all, order, batch, masks, autocast: bool) -> None:
    """``bench_training.plain_loop``'s steps, under bf16 autocast when asked."""
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(params[n].dtype)) for n, m in masks.items()]
    model.train()
    device_type = x_all.device.type
    for step in range(len(order) // batch):
        idx = order[step * batch : (step + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)


def time_resnet_training(device: torch.device, sizes: dict) -> dict:
    """Steps/s of ResNet-20 training (90 % of the weights masked) in five ways; epochs of
    CIFAR-10's 50,000 images extrapolated from ``train_steps`` steps."""
    batch, steps = sizes["pai_batch"], sizes["train_steps"]
    data = random_data(batch * steps, 10, 4)
    spec = TrainingSpec(
        optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=batch, epochs=1
    )
    base = resnet20(sizes["resnet_width"])
    masks = random_masks(base, prunable_names(base), 0.1, 5)
    apply_masks(base, masks)
    masks = {n: m.to(device) for n, m in masks.items()}
    x_all = data.train_x.view(-1, *IMAGE_SHAPE).to(device)
    y_all = data.train_y.to(device)
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(6)).to(device)
    last = x_all.contiguous(memory_format=torch.channels_last)

    def variant(channels_last: bool, autocast: bool):
        model = copy.deepcopy(base).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, spec)
        x = last if channels_last else x_all
        return lambda: plain_epoch(model, optimizer, x, y_all, order, batch, masks, autocast)

    platform_model = copy.deepcopy(base).to(device)
    platform_optimizer = make_optimizer(platform_model, spec)
    ways = {
        "platform_train_epoch": lambda: train_epoch(
            platform_model, platform_optimizer, data, spec, 7, 0, device, masks
        ),
        "fp32": variant(False, False),
        "channels_last": variant(True, False),
        "bf16_autocast": variant(False, True),
        "channels_last_bf16_autocast": variant(True, True),
    }
    per_epoch = math.ceil(CIFAR_TRAIN / batch)
    rows = []
    for name, fn in ways.items():
        seconds = best_of(fn, device, sizes["train_repeats"])
        rows.append(
            {
                "way": name,
                "steps_per_s": steps / seconds,
                "epoch_seconds": per_epoch * seconds / steps,
            }
        )
    return {
        "model": f"resnet20 width {sizes['resnet_width']}, 90 % of conv/linear weights masked",
        "batch": batch,
        "timed_steps": steps,
        "steps_per_epoch": per_epoch,
        "amp": "bf16 autocast (no loss scaling needed)",
        "rows": rows,
        "ok": all(math.isfinite(r["steps_per_s"]) and r["steps_per_s"] > 0 for r in rows),
    }


# -- 5. Tune trials and the analysis pool on the device ---------------------------------------
def tune_spec(device: torch.device, sizes: dict) -> dict:
    return {
        "name": "gpu-check",
        "kind": "imp",
        "seeds": [0, 1],
        "datasets": [
            {
                "name": "nlgp",
                "type": "nlgp",
                "grid": 8,
                "channels": 1,
                "xi": [1.0, 3.0],
                "gain": 3.0,
                "n_train": 400,
                "n_test": 200,
                "seed": 0,
            }
        ],
        "model": {"name": "fcn", "hidden": [32, 16], "batch_norm": True, "init": "glorot_normal"},
        "training": {"lr": 0.1, "batch_size": 50, "steps": sizes["tune_steps"], "rewind_step": 5},
        "imp": {"rounds": 1, "fraction": 0.4, "scope": "layer", "baselines": ["random"]},
        "resources": {"cpu": 1, "gpu": 0.5 if device.type == "cuda" else 0},
        "run": {"max_failures": 0, "batch_lineages": "off"},  # one trial per lineage
    }


def check_ray(device: torch.device, sizes: dict, workdir: Path) -> dict:
    from lotterylab.analysis import open_experiment
    from lotterylab.cluster.launch import run_experiment
    from lotterylab.cluster.post_run_pool import analyze_experiment, pool_size
    from lotterylab.platform.post_run import COMPUTED
    from lotterylab.platform.spec import spec_from_text

    raw = tune_spec(device, sizes)
    text = yaml.safe_dump(raw, sort_keys=False)
    spec = spec_from_text(text, "gpu_check.py")
    outcome = run_experiment(spec, text, storage_root=str(workdir / "store"))
    experiment = open_experiment(outcome.uri)
    lineage_devices = {i: experiment.lineage(i).get("device") for i in experiment.lineage_ids()}
    analysis = analyze_experiment(outcome.uri, what=["kurtosis", "width"], progress=False)
    computed = [r for r in analysis.results if r.status == COMPUTED]
    actors = {}
    for result in computed:
        actors.setdefault(result.pid, set()).add(result.device)
    actor_devices = {str(pid): sorted(map(str, devices)) for pid, devices in actors.items()}

    def right(name: str | None) -> bool:
        return name is not None and torch.device(name).type == device.type

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    workers = max(1, analysis.workers)
    share = pool_size({"GPU": gpus, "CPU": os.cpu_count()}, workers, workers).num_gpus
    trials_ok = (
        outcome.trials == 2
        and not outcome.errored_trials
        and len(lineage_devices) == 2
        and all(right(d) for d in lineage_devices.values())
    )
    actors_ok = (
        bool(computed)
        and not analysis.failed
        and len(actors) == analysis.workers
        and all(right(r.device) for r in computed)
    )
    return {
        "trial_gpu_share": raw["resources"]["gpu"],
        "trials": outcome.trials,
        "errored_trials": outcome.errored_trials,
        "tune_seconds": outcome.wall_time_s,
        "lineage_devices": lineage_devices,
        "analyze_workers": analysis.workers,
        "analyze_gpu_share_per_worker": share,
        "analyze_units_computed": len(computed),
        "analyze_failed": analysis.failed,
        "analyze_seconds": analysis.wall_time_s,
        "actor_devices": actor_devices,
        "trials_saw_device": trials_ok,
        "actors_saw_device": actors_ok,
        "ok": trials_ok and actors_ok,
    }


# -- the run -----------------------------------------------------------------------------------
def section(report: dict, name: str, fn: Callable[[], dict]) -> None:
    """One section into the report; a failure is recorded and the next section still runs."""
    print(f"[gpu-check] {name} ...", flush=True)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # recorded: the first GPU session needs every figure it can get
        report[name] = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}
    report[name]["section_seconds"] = time.perf_counter() - start
    if cuda:  # this process only: trials, actors and the test child have their own
        report[name]["max_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"[gpu-check] {name}: {'ok' if report[name]['ok'] else 'FAILED'}", flush=True)


def print_table(report: dict) -> None:
    m = report["machine"]
    print(
        f"\ngpu-check ({report['mode']}) on {m['device_name']} [{m['device']}], torch "
        f"{m['torch']}, CUDA {m['torch_cuda']}, driver {m['driver']}: "
        f"{report['wall_seconds']:.0f} s, {'all ok' if report['ok'] else 'FAILED'}"
    )
    print("| check | result |")
    print("|---|---|")
    tests = report["tests"]
    if "passed" in tests:
        print(
            f"| tests on {m['device']} | {tests['passed']} passed, {tests['failures']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped ({tests['seconds']:.0f} s) |"
        )
    fcn = report["fcn"]
    if "rows" in fcn:
        print(f"| mm peak (fp32, n = {fcn['mm_n']}) | {fcn['mm_peak_gflops']:.0f} GFLOP/s |")
        for row in fcn["rows"]:
            print(
                f"| FCN {row['way']} K={row['k']} | {row['lineage_steps_per_s']:.1f} lineage "
                f"steps/s, {100 * row['fraction_of_mm_peak']:.1f} % of peak, "
                f"{row['speedup_over_alone']:.2f}x alone |"
            )
    imp = report["imp_round"]
    if "round_seconds" in imp:
        print(
            f"| IMP round, {imp['stacked_trainings']} stacked x {imp['steps']} steps | "
            f"{imp['round_seconds']:.1f} s; whole study ~ "
            f"{imp['study_minutes_extrapolated']:.0f} min |"
        )
    pai = report["pai"]
    for row in pai.get("rows", []):
        ref = (
            f" (paper 2, Titan Xp: {row['paper2_titan_xp_s']} s)"
            if "paper2_titan_xp_s" in row
            else ""
        )
        print(f"| PaI {row['method']} T={row['rounds']} | {row['seconds']:.2f} s{ref} |")
    train = report["resnet_training"]
    for row in train.get("rows", []):
        print(
            f"| ResNet-20 {row['way']} | {row['steps_per_s']:.2f} steps/s, "
            f"{row['epoch_seconds']:.1f} s/epoch |"
        )
    ray_ = report["ray"]
    if "trials" in ray_:
        print(
            f"| Tune, gpu {ray_['trial_gpu_share']} per trial | {ray_['trials']} trials on "
            f"{sorted(set(ray_['lineage_devices'].values()))}: "
            f"{'ok' if ray_['trials_saw_device'] else 'FAILED'} |"
        )
        print(
            f"| analyze pool | {ray_['analyze_workers']} actors, gpu "
            f"{ray_['analyze_gpu_share_per_worker']:.2f} each, "
            f"{ray_['analyze_units_computed']} units: "
            f"{'ok' if ray_['actors_saw_device'] else 'FAILED'} |"
        )
    for name in ("tests", "fcn", "imp_round", "pai", "resnet_training", "ray"):
        if "error" in report[name]:
            print(f"| {name} | ERROR {report[name]['error']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--out", type=Path, help="JSON path (default per device, see above)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if args.device == "cuda"
        else torch.device("cpu")
    )
    sizes = QUICK if args.quick else FULL
    out = args.out or ROOT / DEFAULT_OUT[args.device]
    start = time.perf_counter()
    report = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]),
        "machine": machine(device),
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        section(report, "tests", lambda: run_tests(device, sizes, workdir))
        section(report, "fcn", lambda: time_fcn(device, sizes))
        section(report, "imp_round", lambda: time_imp_round(device, sizes))
        section(report, "pai", lambda: time_pai(device, sizes))
        section(report, "resnet_training", lambda: time_resnet_training(device, sizes))
        section(report, "ray", lambda: check_ray(device, sizes, workdir))
    names = ("tests", "fcn", "imp_round", "pai", "resnet_training", "ray")
    report["checks"] = {name: report[name]["ok"] for name in names}
    report["ok"] = all(report["checks"].values())
    report["wall_seconds"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"wrote {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
