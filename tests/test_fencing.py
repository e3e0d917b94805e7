"""Fencing: every write of a run lands only while its lease carries the run's token.

A store fenced by a token refuses every write once the lease file no longer carries it.
"""

from __future__ import annotations

import os
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
