"""One live writer per experiment: a lease file ``<experiment>/lease.json``.

Two ``lotterylab run`` of the same spec and storage started together would train the same
lineages twice and interleave their writes. The first writer takes the lease; any other is
refused with a message naming the holder. The holder renews the lease from a heartbeat
thread; if it dies, the lease expires after ``ttl_s`` and the next writer may take it over.
A holder that stalled past expiry must not write beside the one that took over: its stores are
fenced by the lease's token (``fence.py``) and refuse every write once the token is gone.

Every change to the lease is a compare-and-swap, so two writers can never both win:

- local disks: creation is ``os.link`` of a complete temp file onto ``lease.json`` (fails
  when the name exists); renewal, release and take-over read, check and replace while
  holding ``fcntl.flock`` on ``.lease.lock`` beside it (one host, or NFSv4 with locking).
- S3: creation is a PUT with ``If-None-Match: *``; renewal and take-over are a PUT with
  ``If-Match: <ETag>`` of the version read; release is a DELETE with ``If-Match``. Each
  write carries a fresh token and serial, so no two versions share an ETag.
- GCS: the same with generation preconditions: creation is an upload with
  ``ifGenerationMatch=0``; renewal and take-over an upload with ``ifGenerationMatch`` set to
  the generation read; release a DELETE with ``ifGenerationMatch``. Every write makes a new
  generation. A server that ignores preconditions (some emulators do) would let two writers
  both win, so the lease first checks that a precondition which cannot hold is refused, and
  refuses the storage otherwise.

Other filesystems (``memory://``, ``az://`` …) are refused: they offer no conditional write
through fsspec that this module could rely on.

Expiry is wall-clock time: hosts sharing an experiment need clocks within a small part of
``ttl_s`` of each other (NTP gives milliseconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import posixpath
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.fence import LEASE_FILE, parse_lease

LOCK_FILE = ".lease.lock"
_ATTEMPTS = 5

log = logging.getLogger(__name__)


class LeaseError(RuntimeError):
    """The lease cannot be used here (unsupported storage, unreadable lease file)."""


class LeaseHeldError(LeaseError):
    """Another live writer holds the experiment."""

    def __init__(self, uri: str, info: LeaseInfo, now: float | None = None):
        self.uri = uri
        self.info = info
        now = time.time() if now is None else now
        left = max(0.0, info.expires_unix - now)
        super().__init__(
            f"experiment {uri} is being written by {info.holder} "
            f"(command: {info.command!r}, since {info.acquired}); its lease expires at "
            f"{info.expires} (in {left:.0f} s) unless the holder renews it. Wait for that run "
            f"to finish, then continue with `lotterylab resume {uri}`; if the holder died, the "
            "experiment is free once the lease has expired."
        )


class LeaseLostError(LeaseError):
    """The lease was taken over or removed while this writer believed it held it."""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


def _unix(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def default_holder() -> str:
    """``user@host:pid`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def holder_gone(holder: str) -> bool:
    """True when ``holder`` (``user@host:pid``) ran on this host and its process has exited.

    A driver killed with SIGKILL cannot release its lease; on the same host its death is
    certain at once, so ``resume`` need not wait for the lease to expire.
    """
    host, _, pid = holder.rpartition("@")[2].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def default_command() -> str:
    """The command line of this process, as a user would type it."""
    return shlex.join([posixpath.basename(sys.argv[0] or "python"), *sys.argv[1:]])


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """The content of ``lease.json``; ``token`` and ``serial`` make every version unique."""

    holder: str
    acquired: str
    expires: str
    command: str
    token: str
    serial: int

    @property
    def expires_unix(self) -> float:
        return _unix(self.expires)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_unix

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LeaseInfo:
        try:
            info = cls(**parse_lease(data))
            info.expires_unix  # noqa: B018  (parses the timestamp)
            _unix(info.acquired)
        except ValueError as exc:
            raise LeaseError(
                f"lease file {where} is unreadable ({exc!r}); it should be JSON with the keys "
                f"{[f.name for f in dataclasses.fields(cls)]}. If no run is writing this "
                "experiment, delete the file."
            ) from exc
        return info


class _LocalBackend:
    """Atomic link-create plus read-check-replace under ``flock`` on a sidecar file."""

    def __init__(self, store: ExperimentStore):
        import fcntl  # POSIX only, like Ray itself

        self._fcntl = fcntl
        self.folder = store.root
        self.path = posixpath.join(self.folder, LEASE_FILE)

    @contextlib.contextmanager
    def guard(self):
        os.makedirs(self.folder, exist_ok=True)
        # the lock file is never removed, so every process locks the same inode
        with open(posixpath.join(self.folder, LOCK_FILE), "a+b") as handle:
            self._fcntl.flock(handle.fileno(), self._fcntl.LOCK_EX)
            try:
                yield
            finally:
                self._fcntl.flock(handle.fileno(), self._fcntl.LOCK_UN)

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as handle:
                return handle.read(), ""
        except FileNotFoundError:
            return None

    def _temp(self, data: bytes) -> str:
        tmp = posixpath.join(self.folder, f".{LEASE_FILE}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def create(self, data: bytes) -> str | None:
        """Write ``data`` as the lease only if none exists; None when one does."""
        tmp = self._temp(data)
        try:
            os.link(tmp, self.path)  # fails if the name exists: the file appears whole
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return ""

    def replace(self, data: bytes, version: str) -> str | None:
        """Overwrite the lease; the caller holds the guard and has checked the content."""
        os.replace(self._temp(data), self.path)
        return ""

    def delete(self, version: str) -> bool:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True


class _S3Backend:
    """Conditional PUT/DELETE on the object's ETag (AWS S3 and compatible servers)."""

    def __init__(self, store: ExperimentStore):
        self.fs = store.fs
        self.path = store.path(LEASE_FILE)
        self.bucket, self.key, _ = self.fs.split_path(self.path)
        try:  # else a missing bucket reads as a lease that keeps changing
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
        except FileNotFoundError as exc:
            raise LeaseError(
                f"cannot hold a writer lease on {store.uri}: bucket {self.bucket!r} was not "
                "found; create it first or check the URI"
            ) from exc

    @contextlib.contextmanager
    def guard(self):
        yield  # every step below is itself conditional on the server

    @staticmethod
    def _code(exc: BaseException) -> str:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        response = getattr(cause, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def _conditional_failed(self, exc: BaseException) -> bool:
        # 412: the condition did not hold; 409: a concurrent conditional write won
        return isinstance(exc, FileExistsError | FileNotFoundError) or self._code(exc) in {
            "PreconditionFailed",
            "ConditionalRequestConflict",
            "NoSuchKey",
        }

    def read(self) -> tuple[bytes, str] | None:
        """Content and ETag from one GET, so the ETag is that of the bytes read."""
        from fsspec.asyn import sync

        async def get():
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def _put(self, data: bytes, **condition: str) -> str | None:
        try:
            out = self.fs.pipe_file(self.path, data, **condition)
        except OSError as exc:
            if self._conditional_failed(exc):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return out["ETag"]

    def create(self, data: bytes) -> str | None:
        return self._put(data, mode="create")  # If-None-Match: *

    def replace(self, data: bytes, version: str) -> str | None:
        return self._put(data, IfMatch=version)

    def delete(self, version: str) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except OSError as exc:
            if self._conditional_failed(exc):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return True


class _GCSBackend:
    """Generation preconditions of Google Cloud Storage (``ifGenerationMatch``) through gcsfs."""

    PROBE = ".lease-precondition-probe"

    def __init__(self, store: ExperimentStore):
        self.fs = store.fs
        self.uri = store.uri
        self.path = store.path(LEASE_FILE)
        self.bucket, self.key, _ = self.fs.split_path(self.path)
        self._check_preconditions(self.fs.split_path(store.path(self.PROBE))[1])

    @contextlib.contextmanager
    def guard(self):
        yield  # every step below is itself conditional on the server

    def _upload(self, key: str, data: bytes, if_generation_match: str) -> str | None:
        """One-request upload that lands only if the object's generation is as given."""
        try:
            out = self.fs.call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{{}}/o",
                self.bucket,
                uploadType="media",
                name=key,
                ifGenerationMatch=if_generation_match,
                headers={"Content-Type": "application/octet-stream"},
                data=data,
                json_out=True,
            )
        except FileExistsError:  # gcsfs raises it for 412 Precondition Failed
            return None
        finally:
            self.fs.invalidate_cache(self.path)
        return str(out["generation"])

    def _check_preconditions(self, probe_key: str) -> None:
        # no object has generation 1 (generations are timestamps in microseconds): GCS
        # answers 412 and writes nothing
        try:
            landed = self._upload(probe_key, b"{}", "1")
        except FileNotFoundError as exc:
            raise LeaseError(
                f"cannot hold a writer lease on {self.uri}: bucket {self.bucket!r} was not "
                f"found ({exc}); create it first or check the URI"
            ) from exc
        if landed is None:
            return
        with contextlib.suppress(OSError):
            self.fs.call("DELETE", "b/{}/o/{}", self.bucket, probe_key)
        raise LeaseError(
            f"cannot hold a writer lease on {self.uri}: the storage server at "
            f"{self.fs._location} ignored a generation precondition (ifGenerationMatch), so it "
            "cannot keep a second writer out. Google Cloud Storage honours them; a local "
            "emulator may not: point STORAGE_EMULATOR_HOST at one that does, or use s3:// or "
            "a local path"
        )

    def read(self) -> tuple[bytes, str] | None:
        """Content and generation; the media read is pinned to the generation looked up."""
        for _ in range(_ATTEMPTS):
            try:
                meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
            except FileNotFoundError:
                return None
            generation = str(meta["generation"])
            try:
                _, data = self.fs.call(
                    "GET", "b/{}/o/{}", self.bucket, self.key, alt="media", generation=generation
                )
            except FileNotFoundError:
                continue  # replaced or removed between the two requests: look again
            return data, generation
        raise LeaseError(
            f"lease file {self.uri}/{LEASE_FILE} changed on every one of {_ATTEMPTS} reads; "
            "another writer is rewriting it continuously"
        )

    def create(self, data: bytes) -> str | None:
        return self._upload(self.key, data, "0")

    def replace(self, data: bytes, version: str) -> str | None:
        return self._upload(self.key, data, version)

    def delete(self, version: str) -> bool:
        try:
            self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=version)
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            self.fs.invalidate_cache(self.path)
        return True


def _backend(store: ExperimentStore) -> _LocalBackend | _S3Backend | _GCSBackend:
    if store.is_local:
        return _LocalBackend(store)
    protocols = store.fs.protocol if isinstance(store.fs.protocol, tuple) else (store.fs.protocol,)
    if {"s3", "s3a"} & set(protocols):
        return _S3Backend(store)
    if {"gs", "gcs"} & set(protocols):
        return _GCSBackend(store)
    raise LeaseError(
        f"cannot hold a writer lease on {store.uri}: leases need a local path or s3:// or "
        f"gs:// (filesystem {type(store.fs).__name__} offers no conditional write)"
    )


class ExperimentLease:
    """The single-writer lease of one experiment; a context manager.

    ``acquire()`` takes it or raises :class:`LeaseHeldError`; a heartbeat thread renews it
    every ``heartbeat_s`` seconds to ``now + ttl_s``; ``release()`` removes it if it is still
    ours. If a renewal finds the lease taken over, ``lost`` becomes True, ``on_lost`` is
    called (from the heartbeat thread) and ``check()`` raises :class:`LeaseLostError`.
    """

    def __init__(
        self,
        store: ExperimentStore,
        holder: str | None = None,
        ttl_s: float = 60.0,
        heartbeat_s: float = 15.0,
        command: str | None = None,
        on_lost: Callable[[LeaseLostError], Any] | None = None,
    ):
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 seconds (got {ttl_s})")
        if not 0 < heartbeat_s < ttl_s:
            raise ValueError(
                f"heartbeat_s must be > 0 and below ttl_s={ttl_s} so the lease is renewed "
                f"before it expires (got {heartbeat_s}); a third of ttl_s or less is safe"
            )
        self.store = store
        self.holder = holder or default_holder()
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s)
        self.command = command or default_command()
        self.on_lost = on_lost
        self._backend = _backend(store)
        self._lock = threading.Lock()  # one lease operation at a time within this object
        self._info: LeaseInfo | None = None
        self._lost: LeaseLostError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def where(self) -> str:
        return self.store.url(LEASE_FILE)

    @property
    def held(self) -> bool:
        return self._info is not None and self._lost is None

    @property
    def lost(self) -> bool:
        return self._lost is not None

    @property
    def info(self) -> LeaseInfo | None:
        """What this writer last wrote to the lease (None when not held)."""
        return self._info

    def current(self) -> LeaseInfo | None:
        """The lease as stored now, whoever holds it (None when there is none)."""
        current = self._read()
        return None if current is None else current[0]

    # -- taking and giving back -------------------------------------------------------------
    def acquire(self) -> ExperimentLease:
        with self._lock:
            if self._info is not None:
                raise LeaseError(f"lease on {self.uri} is already held by this object")
            now = time.time()
            mine = LeaseInfo(
                holder=self.holder,
                acquired=_iso(now),
                expires=_iso(now + self.ttl_s),
                command=self.command,
                token=uuid.uuid4().hex,
                serial=0,
            )
            data = mine.to_bytes()
            for _ in range(_ATTEMPTS):
                with self._backend.guard():
                    if self._take(data, mine.token):
                        self._info, self._lost = mine, None
                        self._start_heartbeat()
                        return self
            raise LeaseError(
                f"could not settle the lease {self.where} in {_ATTEMPTS} attempts: it keeps "
                "changing under us; another writer is starting at the same moment, try again"
            )

    def _take(self, data: bytes, token: str) -> bool:
        """One attempt: create, or take over an expired lease; False to look again."""
        if self._backend.create(data) is not None:
            return True
        current = self._read()
        if current is None:
            return False  # released in between: create again
        info, version = current
        if info.token == token:
            return True  # our create landed and only its reply was lost
        if not info.expired() and not holder_gone(info.holder):
            raise LeaseHeldError(self.uri, info)
        log.warning(
            "taking over the expired or orphaned lease of %s on %s (expires %s)",
            info.holder,
            self.uri,
            info.expires,
        )
        # conditional on the expired version just read: of several takers, one wins
        return self._backend.replace(data, version) is not None

    def renew(self) -> LeaseInfo:
        """Push ``expires`` to now + ttl_s; only the current holder can."""
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._info is None:
                raise LeaseError(f"lease on {self.uri} is not held: acquire() it first")
            token = self._info.token
            with self._backend.guard():
                current = self._read()
                if current is None or current[0].token != token:
                    raise self._mark_lost(current)
                mine = dataclasses.replace(
                    self._info,
                    expires=_iso(time.time() + self.ttl_s),
                    serial=current[0].serial + 1,
                )
                # conditional on the version just read, which is ours
                if self._backend.replace(mine.to_bytes(), current[1]) is None:
                    again = self._read()  # a retried write may have landed before failing
                    if again is None or (again[0].token, again[0].serial) != (token, mine.serial):
                        raise self._mark_lost(again)
            self._info = mine
            return mine

    def _read(self) -> tuple[LeaseInfo, str] | None:
        found = self._backend.read()
        return None if found is None else (LeaseInfo.from_bytes(found[0], self.where), found[1])

    def _mark_lost(self, current: tuple[LeaseInfo, str] | None) -> LeaseLostError:
        now_holder = "nobody (the lease file is gone)"
        if current is not None:
            now_holder = f"{current[0].holder} (command: {current[0].command!r})"
        self._lost = LeaseLostError(
            f"lost the lease on {self.uri}: it is now held by {now_holder}. This writer "
            f"({self.holder}) must stop writing; continue later with "
            f"`lotterylab resume {self.uri}`"
        )
        return self._lost

    def release(self) -> bool:
        """Stop renewing and remove the lease if it is still ours; True when removed."""
        self._stop_heartbeat()
        with self._lock:
            if self._info is None:
                return False
            removed = False
            try:
                with self._backend.guard():
                    current = self._read()
                    if current is not None and current[0].token == self._info.token:
                        removed = self._backend.delete(current[1])
            finally:
                self._info = None
            if not removed and self._lost is None:
                log.warning("lease on %s was no longer ours at release", self.uri)
            return removed

    def verify(self) -> None:
        """Read the lease now and mark it lost unless it is still ours; raises
        :class:`LeaseLostError` then. A fenced write that failed need not wait for the heartbeat.
        """
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._info is None:
                raise LeaseError(f"lease on {self.uri} is not held: acquire() it first")
            with self._backend.guard():
                try:
                    current = self._read()
                except LeaseError as exc:  # unreadable: this writer cannot show it holds it
                    self._lost = LeaseLostError(f"lost the lease on {self.uri}: {exc}")
                    raise self._lost from exc
            if current is None or current[0].token != self._info.token:
                raise self._mark_lost(current)

    def lost_error(self) -> LeaseLostError | None:
        """None while the lease is ours; once lost, the error naming whoever holds it now
        (read again: the writer that took it may have come after the loss was noticed)."""
        if self._lost is None:
            return None
        try:
            current = self._read()
        except LeaseError as exc:
            now_holder = f"nobody this writer can tell ({exc})"
        else:
            now_holder = "nobody (the lease file is gone)"
            if current is not None:
                now_holder = f"{current[0].holder} (command: {current[0].command!r})"
        return LeaseLostError(
            f"lost the lease on {self.uri}, which is now held by {now_holder}: this writer "
            f"({self.holder}) stopped its trials and wrote no report. Continue with "
            f"`lotterylab resume {self.uri}` (once any other writer has finished)"
        )

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if a renewal found the lease taken over."""
        if self._lost is not None:
            raise self._lost
        if self._info is None:
            raise LeaseError(f"lease on {self.uri} is not held")

    def __enter__(self) -> ExperimentLease:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    # -- heartbeat ---------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-heartbeat-{self.store.name}", daemon=True
        )
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except LeaseLostError as exc:
                log.error("%s", exc)
                if self.on_lost is not None:
                    self.on_lost(exc)
                return
            except Exception as exc:  # a network blip: try again at the next beat
                info = self._info
                log.warning("could not renew the lease on %s: %r", self.uri, exc)
                if info is not None and info.expired():
                    self._lost = LeaseLostError(
                        f"could not renew the lease on {self.uri} before it expired at "
                        f"{info.expires} (last error: {exc!r}); another writer may have taken "
                        "it over, so this writer must stop"
                    )
                    if self.on_lost is not None:
                        self.on_lost(self._lost)
                    return
