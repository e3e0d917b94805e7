"""Stored results of earlier versions stay addressable: ids are pinned, old experiments draw
and resume.

``fixtures/pinned_ids.json`` holds, for every ready spec and the small test specs, the spec as
it was written and every lineage, run, branch and dense-reference id it had when ids were first
pinned; ``fixtures/stored/`` holds two small experiments (IMP and PaI) written by that version.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lotterylab.analysis import open_experiment
from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.pai.run import PaIConfig, pai_grid
from lotterylab.platform.post_run import dense_reference
from lotterylab.platform.spec import parse_spec

FIXTURES = Path(__file__).parent / "fixtures"
PINNED = json.loads((FIXTURES / "pinned_ids.json").read_text())


def _grid_ids(spec) -> list[str]:
    if spec.kind == "imp":
        return [
            LineageConfig(spec.name, d.name, s, spec).lineage_id
            for d in spec.datasets
            for s in spec.seeds
        ]
    return [_pai(spec, point).run_id for point in pai_grid(spec)]


def _pai(spec, point: dict, **branch) -> PaIConfig:
    return PaIConfig(
        spec.name,
        point["dataset"],
        point["seed"],
        point["method"],
        point["density"],
        point["rounds"],
        spec,
        **branch,
    )


def _ids(name: str) -> list[str]:
    spec = parse_spec(copy.deepcopy(PINNED[name]["spec"]))
    if name == "tiny_pai_branches":
        ids = []
        for point in pai_grid(spec):
            parent = _pai(spec, point).run_id
            for kind in ("reinit", "shuffle", "invert"):
                ids.append(_pai(spec, point, branch=kind, parent_id=parent).run_id)
        return ids
    if name == "tiny_pai_dense_reference":
        return [
            dense_reference(spec, "nlgp3", 0, init, 10).source_id for init in ("init", "reinit")
        ]
    return _grid_ids(spec)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_pinned_id_is_unchanged(name):
    assert _ids(name) == PINNED[name]["ids"]


@pytest.fixture
def stored(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "stored", tmp_path / "stored")
    return tmp_path / "stored"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize("name", ["stored_imp", "stored_pai"])
def test_an_experiment_of_the_pinned_version_reads_and_draws(stored, name):
    uri = str(stored / name)
    experiment = open_experiment(uri)
    spec = parse_spec(experiment.spec)
    ids = experiment.lineage_ids() if spec.kind == "imp" else experiment.run_ids()
    assert sorted(ids) == sorted(_grid_ids(spec))
    done = _cli("figures", uri)
    assert done.returncode == 0, done.stderr
    report = (stored / name / "figures" / "report.md").read_text()
    assert spec.name in report


def test_an_experiment_of_the_pinned_version_resumes_without_rerunning(stored):
    uri = str(stored / "stored_imp")
    before = open_experiment(uri).rounds()
    done = _cli("resume", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    after = open_experiment(uri).rounds()
    columns = ["lineage_id", "method", "round", "test_accuracy", "sparsity"]
    key = ["lineage_id", "method", "round"]
    assert (
        after[columns]
        .sort_values(key)
        .reset_index(drop=True)
        .equals(before[columns].sort_values(key).reset_index(drop=True))
    )
    assert sorted(after["round"].unique()) == [0, 1, 2]
