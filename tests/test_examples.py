"""The example scripts run as a user would run them, on a store written here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image

from lotterylab.platform.store.experiment_store import ExperimentStore

ROOT = Path(__file__).resolve().parents[1]


def test_redraw_fig4_writes_a_png_per_data_set_panel(tmp_path):
    from test_analysis_paper1 import build_imp_store

    store = ExperimentStore(str(tmp_path / "p1"))
    build_imp_store(store, with_artifacts=False)
    output = tmp_path / "fig4b.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "redraw_fig4.py"), store.uri, "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    image = matplotlib.image.imread(output)
    assert image.shape[:2] == (380, 900)  # two data sets side by side at 100 dpi
    assert image[..., :3].std() > 0.05


def test_redraw_fig4_names_a_store_without_kurtosis(tmp_path):
    empty = tmp_path / "empty"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "redraw_fig4.py"), str(empty)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert f"no kurtosis rows in {empty}" in result.stderr


def test_pai_rf_width_prints_a_width_per_method(tiny_spec_dict, write_spec):
    from lotterylab.platform.pruning import method_names

    path = write_spec(tiny_spec_dict)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pai_rf_width.py"),
            "--spec",
            path,
            "--density",
            "0.2",
            "--rounds",
            "2",
            "--seeds",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"dense", *method_names()}
    assert float(rows["dense"][2]) == 1.0  # the dense first layer keeps every weight
    assert all(0 < float(v[0]) < 20 and 0 < float(v[2]) <= 1 for v in rows.values())
