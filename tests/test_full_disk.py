"""A full disk stops a run with exit 1 naming the path and the free space; once space is freed,
``resume`` finishes with the results of an uninterrupted run.

The disk is a real tmpfs of 1 MiB, mounted by the test (it needs the right to mount; where that
is refused the test says so and skips).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lotterylab.platform.store.experiment_store import ExperimentStore

ROUNDS = 6


@pytest.fixture
def small_disk(tmp_path) -> Path:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", *args], capture_output=True, text=True
    )


def _comparable(rows: list[dict]) -> list:
    keep = [k for k in rows[0] if k not in ("wall_time_s", "experiment")]
    return sorted((tuple((k, r[k]) for k in keep) for r in rows), key=repr)


def test_a_full_disk_stops_the_run_and_resume_finishes_it(
    small_disk, tiny_spec_dict, tmp_path, write_spec
):
    tiny_spec_dict.update(name="full", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["imp"]["rounds"] = ROUNDS
    spec_path = write_spec(tiny_spec_dict)
    store = ExperimentStore(str(small_disk / "full"))

    stopped = _cli("run", spec_path, "--storage", str(small_disk))
    assert stopped.returncode == 1, stopped.stdout[-2000:] + stopped.stderr[-3000:]
    message = stopped.stderr.strip().splitlines()[-1]
    assert f"the storage of {store.uri} ran out of space (" in message
    assert "bytes free on its disk" in message and f"lotterylab resume {store.uri}" in message
    # every round that finished is stored and readable; no report claims the run is complete
    rows = store.read_table("rounds").to_pylist()
    finished = {r["round"] for r in rows}
    assert finished and max(finished) < ROUNDS, "the disk did not fill before the end"
    assert not store.exists("figures/report.md") and not store.exists("lease.json")

    grown = subprocess.run(
        ["mount", "-o", "remount,size=64m", str(small_disk)], capture_output=True, text=True
    )
    assert grown.returncode == 0, grown.stderr
    resumed = _cli("resume", store.uri)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    # no temporary file of a failed write is left behind
    assert not list(small_disk.rglob(".*.tmp"))

    reference = _cli("run", spec_path, "--storage", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    want = ExperimentStore(str(tmp_path / "reference" / "full"))
    assert _comparable(store.read_table("rounds").to_pylist()) == _comparable(
        want.read_table("rounds").to_pylist()
    )
    [lineage] = store.list("lineages")
    for method in ("imp", "oneshot", "random"):
        rel = f"lineages/{lineage}/masks/{method}.pt"
        got, expected = store.read_tensors(rel), want.read_tensors(rel)
        assert all(torch.equal(got[k], expected[k]) for k in expected), method
    assert yaml.safe_load(store.read_bytes("spec.yaml"))["imp"]["rounds"] == ROUNDS
