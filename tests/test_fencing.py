"""Fencing: every write of a run lands only while its lease carries the run's token.

A driver whose lease was deleted or taken over stops with exit 2 naming the new holder, writes
no report, and ``resume`` then finishes the experiment with the results of an uninterrupted run.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lotterylab.platform.store.experiment_store import (
    ExperimentStore,
    StoreError,
    WriterFencedError,
)
from lotterylab.platform.store.lease import ExperimentLease, LeaseLostError
from lotterylab.platform.store.trial_states import lineage_folder, write_state

THIEF = "thief@elsewhere:1"
ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
SAFETY_NET_S = 900  # only a hung driver gets this far; the test waits on files and exits
ROWS = [
    {
        "experiment": "exp",
        "lineage_id": "lin",
        "kind": "imp",
        "method": "imp",
        "dataset": "d",
        "model": "fcn",
        "seed": 0,
        "round": 1,
        "sparsity": 0.5,
        "sparsity_first_layer": 0.5,
        "layer_sparsity": {"layers.0.weight": 0.5},
        "train_accuracy": 0.9,
        "test_accuracy": 0.8,
        "rf_width_median": None,
        "rf_width_mean": None,
        "rf_width_y_median": None,
        "rf_width_y_mean": None,
        "rf_width_cross_median": None,
        "rf_width_cross_mean": None,
        "empty_units": 0,
        "wall_time_s": 0.1,
    }
]


def _lease(uri: str, holder: str) -> ExperimentLease:
    return ExperimentLease(
        ExperimentStore(uri), holder=holder, ttl_s=60, heartbeat_s=20, command="lotterylab run x"
    )


def _writes(store: ExperimentStore) -> dict:
    """One of every kind of write a trial or driver makes."""
    return {
        "write_rows": lambda: store.write_rows("rounds", "lin", "round-0001", ROWS),
        "write_json": lambda: store.write_json("lineages/lin/lineage.json", {"last_round": 1}),
        "write_tensors": lambda: store.write_tensors(
            "lineages/lin/masks/imp.pt", {"w": torch.ones(2)}
        ),
        "write_state": lambda: write_state(store, lineage_folder("lin"), 9, {"w": torch.ones(2)}),
        "remove": lambda: store.remove("lineages/lin/lineage.json"),
    }


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("lease.json", ".lease.lock")
    }


def _held_store(tmp_path: Path) -> tuple[ExperimentStore, ExperimentLease, ExperimentStore]:
    uri = str(tmp_path / "exp")
    lease = _lease(uri, "owner@here:1").acquire()
    fenced = ExperimentStore(uri).fenced(lease.info.token)
    # while the lease is ours every write lands (states 1..3: the oldest is removed again)
    for step in (1, 2, 3):
        write_state(fenced, lineage_folder("lin"), step, {"w": torch.full((2,), step)})
    for write in _writes(fenced).values():
        write()
    assert fenced.read_table("rounds").num_rows == 1
    assert not fenced.exists("lineages/lin/lineage.json")  # written, then removed
    fenced.write_json("lineages/lin/lineage.json", {"last_round": 1})
    return fenced, lease, ExperimentStore(uri)


@pytest.mark.parametrize("how", ["deleted", "taken"])
def test_a_fenced_store_refuses_every_write_once_the_lease_is_not_its(tmp_path, how):
    fenced, lease, plain = _held_store(tmp_path)
    thief = None
    try:
        os.remove(plain.path("lease.json"))
        if how == "taken":
            thief = _lease(plain.uri, THIEF).acquire()
        before = _snapshot(tmp_path / "exp")
        for kind, write in _writes(fenced).items():
            with pytest.raises(WriterFencedError) as caught:
                write()
            message = str(caught.value)
            assert isinstance(caught.value, StoreError)
            holder = f"{THIEF} (command: 'lotterylab run x')" if thief else "nobody (the lease"
            assert holder in message, (kind, message)
            assert f"experiment {plain.uri}" in message
            assert f"lotterylab resume {plain.uri}" in message
            assert "refused to write " + plain.path("") in message
            assert lease.info.token not in message
        assert _snapshot(tmp_path / "exp") == before  # nothing new landed, nothing went
        # the folder holds no temporary file of a refused write either
        assert not list((tmp_path / "exp").rglob(".*.tmp"))
        # an unfenced store (analysis, figures) and the thief's own store still write
        plain.write_json("figures/note.json", {"ok": True})
        if thief is not None:
            ExperimentStore(plain.uri).fenced(thief.info.token).write_json("x.json", {})
        # the driver's lease notices at once when asked
        with pytest.raises(LeaseLostError, match=THIEF if thief else "nobody"):
            lease.verify()
        assert lease.lost
    finally:
        lease.release()
        if thief is not None:
            assert thief.release()


@pytest.mark.parametrize(
    "content",
    [b"\x00\xffgarbage", b'["holder", "token"]', b'{"holder": 1}', b" " * (10 * 2**20)],
    ids=["garbage", "list", "wrong-types", "10MB"],
)
def test_a_hostile_lease_file_refuses_writes_naming_it(tmp_path, content):
    fenced, lease, plain = _held_store(tmp_path)
    try:
        Path(plain.path("lease.json")).write_bytes(content)
        before = _snapshot(tmp_path / "exp")
        for kind, write in _writes(fenced).items():
            with pytest.raises(WriterFencedError, match="lease.json") as caught:
                write()
            assert f"the lease file {plain.path('lease.json')}" in str(caught.value), kind
            assert "unreadable" in str(caught.value)
        assert _snapshot(tmp_path / "exp") == before
        plain.write_json("figures/note.json", {"ok": True})  # unfenced: unchanged behaviour
    finally:
        os.remove(plain.path("lease.json"))  # else release() refuses the unreadable file
        lease.release()


def test_unfenced_stores_write_with_or_without_a_lease(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    assert store.fence is None
    for write in _writes(store).values():
        write()
    assert store.remove("lineages/lin/lineage.json") is False  # already gone
    with _lease(store.uri, THIEF):
        store.write_json("lineages/lin/lineage.json", {"last_round": 2})
    assert store.read_json("lineages/lin/lineage.json") == {"last_round": 2}


def test_fencing_on_an_object_store_reads_the_lease_fresh(s3_bucket):
    """On S3 the fence reads lease.json past fsspec's caches: a change by another process is
    seen by the very next write."""
    uri = f"s3://{s3_bucket}/exp"
    lease = _lease(uri, "owner@here:1").acquire()
    fenced = ExperimentStore(uri).fenced(lease.info.token)
    # another process's client: its own filesystem object, not fsspec's shared instance
    other = ExperimentStore(uri, storage_options={"skip_instance_cache": True})
    assert other.fs is not fenced.fs
    try:
        for write in _writes(fenced).values():
            write()
        assert fenced.exists("lineages/lin/masks/imp.pt.sha256")
        fenced.write_json("lineages/lin/lineage.json", {"last_round": 1})
        other.fs.rm(other.path("lease.json"))
        for kind, write in _writes(fenced).items():
            with pytest.raises(WriterFencedError, match="nobody") as caught:
                write()
            assert f"refused to write s3://{s3_bucket}/exp/" in str(caught.value), kind
        thief = _lease(uri, THIEF).acquire()
        try:
            with pytest.raises(WriterFencedError, match=THIEF):
                fenced.write_json("lineages/lin/lineage.json", {"last_round": 9})
            other.fs.pipe_file(other.path("lease.json"), b"[1, 2]")
            with pytest.raises(WriterFencedError, match=f"s3://{s3_bucket}/exp/lease.json"):
                fenced.remove("lineages/lin/lineage.json")
            other.fs.rm(other.path("lease.json"))
        finally:
            thief.release()
        assert other.read_json("lineages/lin/lineage.json") == {"last_round": 1}
    finally:
        lease.release()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def _comparable(rows: list[dict]) -> list:
    keep = [k for k in rows[0] if k not in ("wall_time_s", "experiment")]
    return sorted((tuple((k, r[k]) for k in keep) for r in rows), key=repr)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, ExperimentStore]:
    """Uninterrupted runs, one per spec file content, shared by the parametrised cases."""
    return {"root": tmp_path_factory.mktemp("reference")}


def _reference(references: dict, spec_path: str, name: str) -> ExperimentStore:
    key = Path(spec_path).read_text()
    if key not in references:
        root = references["root"] / str(len(references))
        done = _cli("run", spec_path, "--storage", str(root))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        references[key] = ExperimentStore(str(root / name))
    return references[key]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "taken"])
def test_a_driver_that_lost_its_lease_stops_and_resume_finishes(
    tiny_spec_dict, tmp_path, write_spec, references, how
):
    tiny_spec_dict.update(name="fenced", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["imp"]["rounds"] = ROUNDS
    spec_path = write_spec(tiny_spec_dict)
    root = tmp_path / "results"
    store = ExperimentStore(str(root / "fenced"))
    out, err = tmp_path / "driver.out", tmp_path / "driver.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        driver = subprocess.Popen(
            [sys.executable, "-m", "lotterylab.cli", "run", spec_path, "--storage", str(root)],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
    thief = None
    try:
        states = store.path("lineages", "*", "states", "step-*.pt.sha256")
        give_up = time.monotonic() + SAFETY_NET_S
        while not glob.glob(states):
            assert driver.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < give_up, "the driver stored no state at all"
            time.sleep(0.1)
        token = ExperimentStore(store.uri).read_bytes("lease.json")
        os.remove(store.path("lease.json"))
        if how == "taken":
            thief = _lease(store.uri, THIEF).acquire()
        driver.wait(timeout=SAFETY_NET_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    try:
        errors = err.read_text()
        assert driver.returncode == 2, errors[-3000:]
        message = errors.strip().splitlines()[-1]
        holder = f"{THIEF} (command: 'lotterylab run x')" if thief else "nobody (the lease file"
        assert message.startswith(f"lotterylab run: lost the lease on {store.uri}"), message
        assert holder in message and f"lotterylab resume {store.uri}" in message, message
        secret = json.loads(token)["token"]
        assert secret not in errors and secret not in out.read_text()
        # no report claims the run is complete, and rounds are missing
        assert not store.exists("figures/summary.md") and not store.exists("figures/report.md")
        assert max(r["round"] for r in store.read_table("rounds").to_pylist()) < ROUNDS
        if thief is not None:
            # the driver left the thief's lease alone, and a resume meanwhile is refused
            assert thief.current().holder == THIEF
            refused = _cli("resume", store.uri)
            assert refused.returncode == 2 and THIEF in refused.stderr, refused.stderr[-3000:]
    finally:
        if thief is not None:
            assert thief.release()

    resumed = _cli("resume", store.uri)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert store.exists("figures/summary.md") and not store.exists("lease.json")
    want = _reference(references, spec_path, "fenced")
    assert _comparable(store.read_table("rounds").to_pylist()) == _comparable(
        want.read_table("rounds").to_pylist()
    )
    [lineage] = store.list("lineages")
    for method in ("imp", "oneshot", "random"):
        rel = f"lineages/{lineage}/masks/{method}.pt"
        got, expected = store.read_tensors(rel), want.read_tensors(rel)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), method
