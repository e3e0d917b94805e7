"""``benchmarks/gpu_check.py --device cpu --quick``: the GPU check's own code, run on the CPU.

The script is what ``make gpu-check`` runs on a GPU; running it here keeps every section
(tests on the device, stacked FCN timing, IMP round, PaI scoring, ResNet-20 training, Tune
trials and the analysis pool) working between the rare runs on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from lotterylab.platform.pruning import method_names

ROOT = Path(__file__).resolve().parent.parent


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_cpu_gpu_check_writes_every_figure(tmp_path):
    out = tmp_path / "gpu-check.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", out],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["ok"] is True
    assert report["checks"] == dict.fromkeys(
        ["tests", "fcn", "imp_round", "pai", "resnet_training", "ray"], True
    )
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["torch"] and machine["device_name"]
    assert "torch_cuda" in machine and "driver" in machine

    tests = report["tests"]
    assert tests["returncode"] == 0 and tests["passed"] >= 5 and tests["failures"] == 0
    assert "--device cpu" in tests["command"]

    fcn = report["fcn"]
    assert fcn["ks"] == [2, 4] and positive(fcn["mm_peak_gflops"])
    assert [(r["way"], r["k"]) for r in fcn["rows"]] == [
        ("alone", 2),
        ("stacked", 2),
        ("stacked", 4),
    ]
    for row in fcn["rows"]:
        assert positive(row["lineage_steps_per_s"]) and 0 < row["fraction_of_mm_peak"] < 2

    imp = report["imp_round"]
    assert imp["stacked_trainings"] == 4 and imp["steps"] == 10
    assert positive(imp["round_seconds"]) and positive(imp["study_minutes_extrapolated"])
    assert imp["study_lineage_steps"] == 2 * 3 * 11 * 40_000

    pai = report["pai"]
    runs = {(r["method"], r["rounds"]) for r in pai["rows"]}
    assert runs == {(m, 1) for m in method_names()} | {("synflow", 3), ("px", 3)}
    assert all(r["on_device"] and positive(r["seconds"]) for r in pai["rows"])

    train = report["resnet_training"]
    ways = [r["way"] for r in train["rows"]]
    assert ways == [
        "platform_train_epoch",
        "fp32",
        "channels_last",
        "bf16_autocast",
        "channels_last_bf16_autocast",
    ]
    assert all(positive(r["steps_per_s"]) and positive(r["epoch_seconds"]) for r in train["rows"])

    ray = report["ray"]
    assert ray["trial_gpu_share"] == 0 and ray["trials"] == 2 and ray["errored_trials"] == []
    assert len(ray["lineage_devices"]) == 2 and set(ray["lineage_devices"].values()) == {"cpu"}
    assert ray["trials_saw_device"] and ray["actors_saw_device"]
    assert ray["analyze_units_computed"] > 0 and ray["analyze_failed"] == []
    assert len(ray["actor_devices"]) == ray["analyze_workers"] >= 1
    assert all(devices == ["cpu"] for devices in ray["actor_devices"].values())
    assert "all ok" in done.stdout and "| FCN stacked K=4 |" in done.stdout
