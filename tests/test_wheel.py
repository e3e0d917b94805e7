"""The wheel, installed like a library into a new virtual environment, runs from anywhere.

The new environment gets lotterylab from the wheel alone; its dependencies come from the
environment running the tests (a ``.pth`` line to its site-packages), so the test needs no
network and no second copy of torch. The wheel's declared ranges are checked against the
versions found there, and the code that runs must be the installed copy, not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "seeds=[0]",
    "datasets.0.n_train=400",
    "datasets.0.n_test=200",
    "model.hidden=[16]",
    "training.steps=30",
    "training.batch_size=50",
    "training.rewind_step=2",
    "imp.rounds=1",
]


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """No PYTHONPATH (the suite may run with the checkout on it) and no Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or egg-info."""
    source = tmp / "source"
    shutil.copytree(
        REPO / "lotterylab", source / "lotterylab", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(source)],
        check=True,
        env=_clean_env(),
    )
    (wheel,) = dist.glob("lotterylab-*.whl")
    return wheel


def _venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        env=_clean_env(),
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-index", "-c", str(REPO / "constraints.txt"), str(wheel)],
        check=True,
        env=_clean_env(),
    )
    # then the dependencies of the running environment (after the install, or pip would see
    # the checkout's own lotterylab there); .pth files inside a path added this way, the
    # checkout's editable install among them, are not processed
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=cwd,
        env=_clean_env(venv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = _venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = str(venv / "bin" / "python")

    probe = _run(
        venv,
        elsewhere,
        python,
        "-c",
        "import json, lotterylab, importlib.metadata as m; from packaging.requirements import "
        "Requirement; reqs = [Requirement(r) for r in m.requires('lotterylab') if 'extra' not "
        "in r]; print(json.dumps({'file': lotterylab.__file__, 'unmet': [str(r) for r in reqs "
        "if not r.specifier.contains(m.version(r.name), prereleases=True)]}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert found["unmet"] == []  # the ranges admit the versions the suite runs on

    version = _run(venv, elsewhere, "lotterylab", "--version")
    assert version.returncode == 0 and version.stdout.split() == ["lotterylab", "0.1.0"]

    specs = _run(venv, elsewhere, "lotterylab", "specs")
    assert specs.returncode == 0, specs.stderr
    names = [line.split()[0] for line in specs.stdout.splitlines()]
    assert {"default", "pai_cpu", "paper1_cpu"} <= set(names)
    packaged = Path(found["file"]).parent / "specs"
    assert sorted(names) == sorted(p.stem for p in packaged.glob("*.yaml"))

    valid = _run(venv, elsewhere, "lotterylab", "validate", "pai_cpu", "seeds=[0]")
    assert valid.returncode == 0, valid.stderr
    pai = yaml.safe_load((packaged / "pai_cpu.yaml").read_text())
    methods, densities = len(pai["pai"]["methods"]), len(pai["pai"]["densities"])
    grid = f"1 seeds × {methods} methods × {densities} densities"
    assert grid in valid.stdout
    valid = _run(venv, elsewhere, "lotterylab", "validate", str(packaged / "paper1_cpu.yaml"))
    assert valid.returncode == 0, valid.stderr

    assert _run(venv, elsewhere, "lotterylab", "init", "default").returncode == 0
    assert (elsewhere / "default.yaml").read_text() == (packaged / "default.yaml").read_text()

    run = _run(venv, elsewhere, "lotterylab", "run", *TINY, "--storage", str(elsewhere / "out"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    experiment = elsewhere / "out" / "default"
    stored = yaml.safe_load((experiment / "spec.yaml").read_text())
    assert stored["training"]["steps"] == 30 and stored["seeds"] == [0]
    assert stored["datasets"][0]["n_train"] == 400
    resolved = json.loads((experiment / "spec.resolved.json").read_text())
    assert resolved["imp"]["rounds"] == 1 and resolved["model"]["hidden"] == [16]
    rounds = sorted(p.name for p in (experiment / "tables" / "rounds").rglob("*.parquet"))
    # 2 data sets x 1 seed x rounds 0 and 1 x (imp, oneshot, random)
    expected = [f"round-{r:04d}-{m}.parquet" for m in ("imp", "oneshot", "random") for r in (0, 1)]
    assert rounds == sorted(expected * 2)
