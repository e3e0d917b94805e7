"""gs:// through gcsfs against gcp-storage-emulator on 127.0.0.1: store, lease, a CLI run.

The emulator speaks GCS's JSON API but ignores generation preconditions (``ifGenerationMatch``)
and the ``generation`` of reads. The lease must notice that and refuse such a server. To test
the lease's own logic, ``gcs_preconditions`` adds GCS's documented precondition semantics to
the emulator's handlers (412 when ``ifGenerationMatch`` does not hold, 404 for a generation
that is no longer live); the server stays the emulator, reached over HTTP by gcsfs.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from http import HTTPStatus

import fsspec
import pytest
from fsspec.registry import _registry
from test_store import roundtrip

from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.lease import (
    ExperimentLease,
    LeaseError,
    LeaseHeldError,
    LeaseInfo,
    LeaseLostError,
)

BUCKET = "lotterylab-gcs"
# gcsfs's zonal/hierarchical-bucket probe speaks gRPC over TLS, which the emulator lacks
CLIENT_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GS_TOKEN": "anon"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_emulator():
    """The emulator in a thread, gcsfs pointed at it with anonymous credentials."""
    from gcp_storage_emulator.server import create_server

    patch = pytest.MonkeyPatch()
    for key, value in CLIENT_ENV.items():
        patch.setenv(key, value)
    import gcsfs.core

    # the plain client whatever an earlier import chose; token "anon" as FSSPEC_GS_TOKEN says
    patch.setitem(_registry, "gs", gcsfs.core.GCSFileSystem)
    patch.setitem(_registry, "gcs", gcsfs.core.GCSFileSystem)
    patch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    patch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    yield endpoint
    server.stop()
    patch.undo()


def _store(prefix: str) -> ExperimentStore:
    store = ExperimentStore(f"gs://{BUCKET}/{prefix}-{uuid.uuid4().hex[:8]}/exp")
    store.fs.invalidate_cache()
    return store


# -- GCS generation preconditions, added to the emulator ----------------------------------------
def _live_generation(storage, bucket: str, name: str) -> str:
    from gcp_storage_emulator.exceptions import NotFound

    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"  # GCS: ifGenerationMatch=0 holds only when there is no live object


def _object_name(request) -> str | None:
    if request.params and request.params.get("object_id"):
        return request.params["object_id"]
    if request.query.get("name"):
        return request.query["name"][0]
    data = request.data
    return data["meta"].get("name") if isinstance(data, dict) and "meta" in data else None


def _conditional(handler):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        bucket, name = request.params["bucket_name"], _object_name(request)
        if name is not None:
            live = _live_generation(storage, bucket, name)
            match = request.query.get("ifGenerationMatch")
            if match and match[0] != live:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
            pinned = request.query.get("generation")
            if pinned and request.method != "POST" and pinned[0] != live:
                response.status = HTTPStatus.NOT_FOUND  # that generation is no longer live
                return None
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


@pytest.fixture
def gcs_preconditions(gcs_emulator):
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    targets = {objects.insert, objects.get, objects.download, objects.delete}
    patch = pytest.MonkeyPatch()
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in targets:
                patch.setitem(handlers, method, _conditional(handler))
    yield gcs_emulator
    patch.undo()


# -- the store ----------------------------------------------------------------------------------
def test_store_roundtrip_and_refusals_on_gcs(gcs_emulator):
    store = _store("store")
    roundtrip(store)  # the local and S3 round trip of test_store: tensors, JSON, rows, listing
    assert store.url("tables") == f"{store.uri}/tables" and store.uri.startswith("gs://")
    digest = store.write_artifact("lineages/a/blob.bin", b"\x00payload")
    assert len(digest) == 64 and store.read_artifact("lineages/a/blob.bin") == b"\x00payload"

    # a corrupt artifact, and one whose checksum was never written, are refused
    store.fs.pipe_file(store.path("lineages/a/blob.bin"), b"\x00tampered")
    with pytest.raises(StoreError, match=r"gs://.*/exp/lineages/a/blob.bin is corrupt"):
        store.read_artifact("lineages/a/blob.bin")
    store.write_bytes("lineages/a/half.pt", b"written, never finished")
    with pytest.raises(StoreError, match=r"half.pt has no checksum file"):
        store.read_artifact("lineages/a/half.pt")
    with pytest.raises(StoreError, match=r"missing file gs://.*/exp/nothing"):
        store.read_bytes("nothing")


# -- the lease ----------------------------------------------------------------------------------
def test_lease_refuses_a_server_that_ignores_preconditions(gcs_emulator):
    store = _store("plain")
    with pytest.raises(LeaseError, match=r"ignored a generation precondition") as info:
        ExperimentLease(store)
    assert gcs_emulator in str(info.value) and store.uri in str(info.value)
    assert not store.exists("lease.json")
    assert not store.exists(".lease-precondition-probe")  # the probe left nothing behind
    with pytest.raises(LeaseError, match=r"bucket 'no-such-bucket' was not found"):
        ExperimentLease(ExperimentStore("gs://no-such-bucket/runs/exp"))


def _lease(store: ExperimentStore, holder: str, **kwargs) -> ExperimentLease:
    kwargs.setdefault("ttl_s", 30)
    kwargs.setdefault("heartbeat_s", 10)
    return ExperimentLease(store, holder=holder, command=f"lotterylab run  # {holder}", **kwargs)


def test_second_writer_refused_renewal_release_on_gcs(gcs_preconditions):
    store = _store("lease")
    first = _lease(store, "alice@node1:101").acquire()
    try:
        with pytest.raises(LeaseHeldError, match=r"being written by alice@node1:101") as info:
            _lease(store, "bob@node2:202").acquire()
        assert f"lotterylab resume {store.uri}" in str(info.value)
        before = first.current()
        renewed = first.renew()
        assert renewed.serial == before.serial + 1 and renewed.expires > before.expires
        assert first.current() == renewed
    finally:
        assert first.release()
    assert not store.exists("lease.json")
    with _lease(store, "bob@node2:202") as second:
        assert second.current().holder == "bob@node2:202"
    assert not store.exists("lease.json")


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(gcs_preconditions):
    store = _store("takeover")
    old = _lease(store, "alice@node1:101", ttl_s=0.5, heartbeat_s=0.2)
    old.acquire()
    old._stop_heartbeat()  # a holder that stopped renewing (hung, partitioned)
    now = dt.datetime.now(dt.UTC)
    expired = LeaseInfo(
        holder="alice@node1:101",
        acquired=(now - dt.timedelta(seconds=60)).isoformat(),
        expires=(now - dt.timedelta(seconds=1)).isoformat(),
        command="lotterylab run",
        token=old.info.token,
        serial=old.info.serial,
    )
    assert old._backend.replace(expired.to_bytes(), old._backend.read()[1]) is not None
    new = _lease(store, "bob@node2:202").acquire()
    try:
        assert new.current().holder == "bob@node2:202"
        with pytest.raises(LeaseLostError, match=r"now held by bob@node2:202"):
            old.renew()
        assert not old.release()  # never deletes the new holder's lease
        assert new.current().holder == "bob@node2:202"
    finally:
        new.release()


def test_racing_writers_exactly_one_wins_on_gcs(gcs_preconditions):
    store = _store("race")
    barrier = threading.Barrier(4)
    outcome: dict[str, str] = {}

    def contend(name: str) -> None:
        lease = _lease(ExperimentStore(store.uri), f"{name}@host:1")
        barrier.wait()
        try:
            lease.acquire()
            outcome[name] = "won"
            lease._stop_heartbeat()
        except LeaseHeldError:
            outcome[name] = "refused"

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["refused"] * 3 + ["won"]
    winner = next(k for k, v in outcome.items() if v == "won")
    stored = json.loads(store.fs.cat_file(store.path("lease.json")))
    assert stored["holder"] == f"{winner}@host:1"


# -- a run through the CLI ----------------------------------------------------------------------
def test_tiny_run_on_gcs_through_the_cli(gcs_preconditions, tiny_spec_dict, write_spec, tmp_path):
    from lotterylab.platform.store.trial_states import read_state

    tiny_spec_dict.update(name="gcsrun", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["imp"]["rounds"] = 1
    spec = parse_spec(tiny_spec_dict)
    root = f"gs://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"
    ray_tmp = tempfile.mkdtemp(prefix="llray-", dir="/tmp")  # short: Ray's sockets live there
    env = dict(os.environ, **CLIENT_ENV, STORAGE_EMULATOR_HOST=gcs_preconditions)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "lotterylab.cli", "run", write_spec(tiny_spec_dict)]
            + ["--storage", root],
            env=dict(env, RAY_TMPDIR=ray_tmp),
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    store = ExperimentStore(f"{root}/gcsrun")
    assert f"experiment: {store.uri}" in run.stdout
    rows = store.read_table("rounds").to_pylist()
    assert {(r["round"], r["method"]) for r in rows} == {
        (n, m) for n in range(spec.imp.rounds + 1) for m in ("imp", "oneshot", "random")
    }
    [lineage] = store.list("lineages")
    masks = store.read_tensors(f"lineages/{lineage}/masks/imp.pt")
    assert (masks["layers.0.weight"] == 0).sum() == round(0.4 * 64 * 32)
    assert b"| imp |" in store.read_bytes("figures/summary.md")
    assert not store.exists("lease.json")  # released at the end
    # the trial's state went through gcsfs too: `resume` goes on from the store alone
    [lineage_folder] = [f"lineages/{name}" for name in store.list("lineages")]
    assert read_state(store, lineage_folder).state["next_round"] == spec.imp.rounds + 1
    assert any(n.startswith("experiment_state") for n in store.list(""))  # Tune wrote via gcsfs
