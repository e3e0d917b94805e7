"""Completeness: each lineage and run records what it wrote; holes are refused, then rebuilt.

A part or artifact deleted from a finished experiment (a careless hand, a lost disk) makes
``figures`` exit 2 naming it, leaving the earlier figures in place; ``--partial`` draws the rest
and says so; ``resume`` rewrites every missing file equal to what was there.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lotterylab.cluster.launch import run_experiment
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.manifest import (
    Journal,
    Manifest,
    incomplete,
    read_manifest,
    restore_parts,
    write_manifest,
)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", *args], capture_output=True, text=True
    )


def _rows(store: ExperimentStore, table: str) -> list[str]:
    return sorted(repr(sorted(row.items())) for row in store.read_table(table).to_pylist())


def _delete(store: ExperimentStore, rels: list[str]) -> None:
    for rel in rels:
        path = Path(store.path(rel))
        assert path.exists(), rel
        path.unlink()
        Path(f"{path}.sha256").unlink(missing_ok=True)


@pytest.mark.slow
def test_missing_imp_files_are_refused_drawn_partially_and_rebuilt(tiny_spec_dict, tmp_path):
    tiny_spec_dict.update(name="holes", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["run"]["batch_lineages"] = "off"  # a retrained round equals its original
    spec = parse_spec(tiny_spec_dict)
    outcome = run_experiment(spec, "name: holes\n", str(tmp_path / "results"))
    assert outcome.errored_trials == []
    store = ExperimentStore(outcome.uri)
    [lineage] = store.list("lineages")
    manifest = read_manifest(store, f"lineages/{lineage}")
    assert manifest.steps == spec.imp.rounds + 1
    assert incomplete(store) == {}

    gone_parts = [
        f"tables/rounds/{lineage}/round-0002-imp.parquet",
        f"tables/kurtosis/{lineage}/round-0001-random.parquet",
        f"tables/cavity/{lineage}/cavity-imp.parquet",
    ]
    gone_artifacts = [
        f"lineages/{lineage}/trained/imp-round-0001.pt",
        f"lineages/{lineage}/trained/imp-round-0000.pt",
        f"lineages/{lineage}/masks/random.pt",
        f"lineages/{lineage}/kurtosis/oneshot-round-0002.pt",
        f"lineages/{lineage}/rewind.pt",
        f"lineages/{lineage}/lineage.json",
    ]
    assert set(gone_parts + gone_artifacts) <= manifest.files
    tables = {t: _rows(store, t) for t in ("rounds", "kurtosis", "cavity")}
    artifacts = {rel: store.read_bytes(rel) for rel in gone_artifacts}
    summary = store.read_bytes("figures/summary.md")
    _delete(store, gone_parts + gone_artifacts)

    refused = _cli("figures", store.uri)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"lineages/{lineage}" in refused.stderr
    assert "round-0002-imp.parquet" in refused.stderr and "--partial" in refused.stderr
    assert store.read_bytes("figures/summary.md") == summary  # the full figures stand

    drawn = _cli("figures", store.uri, "--partial")
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    for name in ("report.md", "summary.md"):
        text = store.read_bytes(f"figures/{name}").decode()
        assert "**Partial results**" in text and lineage in text, name

    resumed = _cli("resume", store.uri)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert incomplete(store) == {}
    # rows come back exactly (wall times included), artifacts bit for bit
    assert {t: _rows(store, t) for t in tables} == tables
    for rel, data in artifacts.items():
        if rel.endswith(".pt"):
            got, want = store.read_tensors(rel), torch.load(_buffer(data), weights_only=True)
            assert got.keys() == want.keys(), rel
            assert all(torch.equal(got[k], want[k]) for k in want), rel
        else:
            assert store.read_bytes(rel) == data, rel
    report = store.read_bytes("figures/report.md").decode()
    assert "Partial results" not in report


def _buffer(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@pytest.mark.slow
def test_missing_pai_files_are_refused_then_rebuilt(pai_spec_dict, tmp_path):
    pai_spec_dict["pai"]["methods"] = ["snip"]
    spec = parse_spec(pai_spec_dict)
    outcome = run_experiment(spec, "name: tinypai\n", str(tmp_path / "results"))
    assert outcome.errored_trials == []
    store = ExperimentStore(outcome.uri)
    [run] = store.list("runs")
    gone_parts = [
        f"tables/pai_epochs/{run}/epoch-0001.parquet",
        f"tables/pai_masks/{run}/masks.parquet",
    ]
    gone_artifacts = [f"runs/{run}/{name}" for name in ("masks.pt", "init.pt", "trained.pt")]
    gone_artifacts.append(f"runs/{run}/run.json")
    tables = {t: _rows(store, t) for t in ("pai_epochs", "pai_masks")}
    artifacts = {rel: store.read_bytes(rel) for rel in gone_artifacts}
    _delete(store, gone_parts + gone_artifacts)

    refused = _cli("figures", store.uri)
    assert refused.returncode == 2 and f"runs/{run}" in refused.stderr, refused.stderr[-3000:]
    resumed = _cli("resume", store.uri)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert {t: _rows(store, t) for t in tables} == tables
    for rel, data in artifacts.items():
        if rel.endswith(".pt"):
            got, want = store.read_tensors(rel), torch.load(_buffer(data), weights_only=True)
            assert all(torch.equal(got[k], want[k]) for k in want), rel
        else:
            assert store.read_bytes(rel) == data, rel
    assert _cli("figures", store.uri).returncode == 0


def test_a_journal_records_files_and_rows_that_rebuild_the_same_part(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    with store.journal() as journal:
        store.write_json("runs/L/run.json", {"a": 1})
        assert isinstance(journal, Journal)
    assert journal.files == {"runs/L/run.json"}  # the checksum sidecar is not a file of its own
    manifest = Manifest("runs/L", 1, set(journal.files), journal.parts)
    write_manifest(store, manifest)
    assert read_manifest(store, "runs/L") == manifest
    assert incomplete(store) == {}
    Path(store.path("runs/L/run.json.sha256")).unlink()  # an artifact never finished
    assert incomplete(store) == {"runs/L": ["runs/L/run.json"]}


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"folder": "runs/L", "steps": 1, "files": ["../../etc/passwd"], "parts": {}}, "leaves"),
        ({"folder": "runs/L", "steps": 1, "files": ["runs/M/x.pt"], "parts": {}}, "not L's"),
        ({"folder": "runs/other", "steps": 1, "files": [], "parts": {}}, "not the manifest"),
        ({"folder": "runs/L", "steps": -1, "files": [], "parts": {}}, "'steps'"),
        (
            {
                "folder": "runs/L",
                "steps": 1,
                "files": ["tables/rounds/M/x.parquet"],
                "parts": {
                    "tables/rounds/M/x.parquet": {
                        "table": "rounds",
                        "owner": "M",
                        "part": "x",
                        "rows": [],
                    }
                },
            },
            "another table, owner or file",
        ),
        ([1, 2, 3], "not the manifest"),
    ],
)
def test_a_hostile_manifest_is_refused_naming_it(tmp_path, bad, why):
    store = ExperimentStore(str(tmp_path / "exp"))
    store.write_json("runs/L/manifest.json", bad)
    with pytest.raises(StoreError, match=why) as error:
        read_manifest(store, "runs/L")
    assert "runs/L/manifest.json" in str(error.value)


def test_recorded_rows_that_do_not_fit_their_table_are_refused_naming_the_manifest(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    rel = "tables/pai_masks/L/masks.parquet"
    entry = {"table": "pai_masks", "owner": "L", "part": "masks", "rows": [{"seed": "x"}]}
    store.write_json(
        "runs/L/manifest.json",
        {"folder": "runs/L", "steps": 1, "files": [rel], "parts": {rel: entry}},
    )
    manifest = read_manifest(store, "runs/L")
    with pytest.raises(StoreError, match="runs/L/manifest.json") as error:
        restore_parts(store, manifest, [rel])
    assert "do not fit" in str(error.value) and not store.exists(rel)
