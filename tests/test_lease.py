"""The single-writer lease on local disk and on a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.lease import (
    ExperimentLease,
    LeaseError,
    LeaseHeldError,
    LeaseInfo,
    LeaseLostError,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["local", "s3"])
def experiment_uri(request, tmp_path):
    """A fresh experiment URI on local disk or in a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "results" / "exp")
    import boto3

    endpoint = request.getfixturevalue("s3_server")
    bucket = f"lease-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefix/exp"


def lease(uri: str, holder: str, **kwargs) -> ExperimentLease:
    kwargs.setdefault("ttl_s", 30)
    kwargs.setdefault("heartbeat_s", 10)
    kwargs.setdefault("command", f"lotterylab run spec.yaml  # {holder}")
    return ExperimentLease(ExperimentStore(uri), holder=holder, **kwargs)


def write_lease(uri: str, info: LeaseInfo) -> None:
    """Leave a lease file as another process would have (e.g. one that died)."""
    store = ExperimentStore(uri)
    store.fs.makedirs(store.root, exist_ok=True)
    store.fs.pipe_file(store.path("lease.json"), info.to_bytes())
    store.fs.invalidate_cache(store.path("lease.json"))


def stale_info(holder: str, expired_s_ago: float) -> LeaseInfo:
    now = dt.datetime.now(dt.UTC)
    return LeaseInfo(
        holder=holder,
        acquired=(now - dt.timedelta(seconds=120)).isoformat(),
        expires=(now - dt.timedelta(seconds=expired_s_ago)).isoformat(),
        command="lotterylab run spec.yaml",
        token=uuid.uuid4().hex,
        serial=7,
    )


def test_second_writer_is_refused_with_the_holder_named(experiment_uri):
    first = lease(experiment_uri, "alice@node1:101").acquire()
    try:
        stored = json.loads(ExperimentStore(experiment_uri).read_bytes("lease.json"))
        assert stored["holder"] == "alice@node1:101"
        assert stored["command"] == "lotterylab run spec.yaml  # alice@node1:101"
        left = LeaseInfo(**stored).expires_unix - time.time()
        assert 25 < left <= 30
        with pytest.raises(LeaseHeldError) as caught:
            lease(experiment_uri, "bob@node2:202").acquire()
        message = str(caught.value)
        assert "alice@node1:101" in message
        assert stored["expires"] in message
        assert f"lotterylab resume {ExperimentStore(experiment_uri).uri}" in message
        assert caught.value.info.holder == "alice@node1:101"
        assert first.held and first.current().holder == "alice@node1:101"
    finally:
        assert first.release() is True
    assert not ExperimentStore(experiment_uri).exists("lease.json")


def test_release_then_reacquire_and_context_manager(experiment_uri):
    first = lease(experiment_uri, "alice@node1:101")
    with first:
        assert first.held
    assert not first.held and first.current() is None
    assert first.release() is False  # nothing left to release
    with lease(experiment_uri, "bob@node2:202") as second:
        assert second.current().holder == "bob@node2:202"
        with pytest.raises(LeaseHeldError, match="bob@node2:202"):
            first.acquire()
    with first:  # the same object can take it again
        assert first.current().holder == "alice@node1:101"


def test_expired_lease_is_taken_over(experiment_uri):
    write_lease(experiment_uri, stale_info("dead@node3:303", expired_s_ago=5))
    with lease(experiment_uri, "bob@node2:202") as taker:
        current = taker.current()
        assert current.holder == "bob@node2:202" and current.serial == 0
        assert not current.expired()


def test_heartbeat_extends_expiry_and_only_the_holder_renews(experiment_uri):
    lost = []
    holder = lease(experiment_uri, "alice@node1:101", ttl_s=3.0, heartbeat_s=0.2)
    holder.on_lost = lost.append
    holder.acquire()
    first_expiry = holder.current().expires_unix
    give_up = time.monotonic() + 120  # a safety net: the test waits on three renewals
    while holder.current().serial < 3:
        assert time.monotonic() < give_up, "the heartbeat never renewed the lease"
        time.sleep(0.05)
    renewed = holder.current()
    assert renewed.holder == "alice@node1:101"
    assert renewed.serial >= 3
    assert renewed.expires_unix > first_expiry + 0.5
    assert not renewed.expired()
    with pytest.raises(LeaseHeldError, match="alice@node1:101"):
        lease(experiment_uri, "bob@node2:202").acquire()

    # a taker overwrote the lease while the holder stalled: the next renewal must fail
    write_lease(experiment_uri, stale_info("carol@node4:404", expired_s_ago=-30))
    give_up = time.monotonic() + 120  # a safety net: the test waits on the next renewal
    while not lost and time.monotonic() < give_up:
        time.sleep(0.05)
    assert holder.lost and len(lost) == 1 and isinstance(lost[0], LeaseLostError)
    assert "carol@node4:404" in str(lost[0])
    with pytest.raises(LeaseLostError, match="carol@node4:404"):
        holder.check()
    assert holder.release() is False  # not ours: left alone
    assert holder.current().holder == "carol@node4:404"


def race(uri: str, n: int) -> tuple[list[str], list[LeaseHeldError]]:
    leases = [lease(uri, f"racer@node:{i}") for i in range(n)]
    barrier = threading.Barrier(n)
    winners: list[str] = []
    refused: list[LeaseHeldError] = []

    def go(item: ExperimentLease) -> None:
        barrier.wait()
        try:
            item.acquire()
            winners.append(item.holder)
        except LeaseHeldError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=go, args=(item,)) for item in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for item in leases:
        item.release()
    return winners, refused


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "takeover"])
def test_racing_writers_exactly_one_wins(experiment_uri, stale):
    for attempt in range(3):
        uri = f"{experiment_uri}-{attempt}"
        if stale:
            write_lease(uri, stale_info("dead@node3:303", expired_s_ago=1))
        winners, refused = race(uri, 8)
        assert len(winners) == 1, winners
        assert len(refused) == 7
        assert all(exc.info.holder == winners[0] for exc in refused)


CHILD = """
import sys, time
from lotterylab.platform.store.lease import ExperimentLease, LeaseHeldError
from lotterylab.platform.store.experiment_store import ExperimentStore
uri, start, ttl = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lease = ExperimentLease(ExperimentStore(uri), ttl_s=ttl, heartbeat_s=ttl / 5)
time.sleep(max(0.0, start - time.time()))
try:
    lease.acquire()
except LeaseHeldError:
    print("refused", flush=True)
    sys.exit(0)
print("won", flush=True)
time.sleep(600)
"""


def test_racing_processes_and_a_killed_holder(tmp_path):
    uri = str(tmp_path / "exp")
    start = time.time() + 6  # every child has imported torch by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, str(start), "30.0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    try:
        lines = {child.pid: child.stdout.readline().strip() for child in children}
        winners = [pid for pid, line in lines.items() if line == "won"]
        assert sorted(lines.values()) == ["refused", "refused", "won"]
        (winner,) = winners
        held = ExperimentStore(uri)
        with pytest.raises(LeaseHeldError, match=f":{winner}"):
            lease(uri, "bob@node2:202").acquire()
        os.kill(winner, signal.SIGKILL)  # the holder dies without releasing
        next(c for c in children if c.pid == winner).wait()
        # its lease has not expired (30 s), but its process is gone from this host: taken over
        # at once, with no wait on the clock
        with lease(uri, "bob@node2:202") as taker:
            assert taker.current().holder == "bob@node2:202"
        assert not held.exists("lease.json")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()


def test_bad_settings_and_unsupported_storage(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    with pytest.raises(ValueError, match="heartbeat_s must be > 0 and below ttl_s=5"):
        ExperimentLease(store, ttl_s=5, heartbeat_s=5)
    with pytest.raises(ValueError, match=r"ttl_s must be > 0 seconds \(got 0\)"):
        ExperimentLease(store, ttl_s=0, heartbeat_s=0.1)
    with pytest.raises(LeaseError, match="memory://lease-test/exp.*local path or s3://"):
        ExperimentLease(ExperimentStore("memory://lease-test/exp"))


def test_unreadable_lease_file_is_named(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    os.makedirs(store.root)
    with open(store.path("lease.json"), "w") as handle:
        handle.write('{"holder": "x"')
    with pytest.raises(LeaseError, match=r"lease file .*exp/lease.json is unreadable"):
        lease(store.uri, "bob@node2:202").acquire()


def test_a_second_run_of_a_held_experiment_is_refused_naming_the_holder(
    tiny_spec_dict, write_spec, tmp_path, capsys
):
    from lotterylab.cli import main

    tiny_spec_dict["storage"] = str(tmp_path / "results")
    path = write_spec(tiny_spec_dict)
    holder = ExperimentLease(ExperimentStore(str(tmp_path / "results" / "tiny")), holder="alice@a")
    with holder:
        assert main(["run", path]) == 2
        error = capsys.readouterr().err
        assert "alice@a" in error
        assert main(["resume", str(tmp_path / "results" / "tiny")]) == 2
    assert not (tmp_path / "results" / "tiny" / "spec.yaml").exists()  # nothing written


def test_a_lease_left_by_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    import getpass
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = f"{getpass.getuser()}@{socket.gethostname()}:{dead.pid}"
    uri = str(tmp_path / "exp")
    write_lease(uri, stale_info(holder, expired_s_ago=-50))  # 50 s of validity left
    with lease(uri, "bob@b") as taken:
        assert taken.held
    alive = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
    write_lease(uri, stale_info(alive, expired_s_ago=-50))
    with pytest.raises(LeaseHeldError):
        lease(uri, "bob@b").acquire()
    other_host = f"{getpass.getuser()}@elsewhere.example:{dead.pid}"
    write_lease(uri, stale_info(other_host, expired_s_ago=-50))
    with pytest.raises(LeaseHeldError):
        lease(uri, "bob@b").acquire()
