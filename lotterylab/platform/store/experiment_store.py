"""The experiment store: one folder per experiment on any fsspec URI.

Layout under ``<root>/<experiment>/``::

    spec.yaml                 the spec as given
    spec.resolved.json        the validated spec with every default filled in
    tables/<table>/<lineage>/<part>.parquet   result rows (see ``tables.py``)
    lineages/<lineage>/...    per-lineage artifacts (masks, weights), each with a sidecar
                              ``<artifact>.sha256`` written after the artifact itself
    figures/                  PNG figures and ``summary.md``
    <Ray Tune's experiment state and trial folders>

Writes are atomic: temp file + rename on local disks, a single PUT on object stores. An
artifact without its sidecar was not finished and is never read back as complete.

A store made with ``fence=<lease token>`` (``ExperimentStore.fenced``) is a writer's: before
every write or removal it reads ``lease.json`` and refuses with :class:`WriterFencedError` unless
the lease still carries that token, so a writer that lost the lease stops at its next write
(see ``fence.py`` for the one write that may slip through). Stores without a fence (analysis,
figures, tests) write unchecked.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from fsspec.implementations.local import LocalFileSystem

from lotterylab.platform.store.fence import LEASE_FILE, parse_lease, read_lease_bytes
from lotterylab.platform.store.tables import SCHEMAS, rows_to_table


class StoreError(RuntimeError):
    """An artifact is missing, unfinished or corrupt."""


class WriterFencedError(StoreError):
    """This writer no longer holds the experiment's lease: another one may be writing."""


# what each object store's client raises when it finds no credentials, and what to set
_CREDENTIAL_ERRORS = {
    "NoCredentialsError": "s3",
    "PartialCredentialsError": "s3",
    "DefaultCredentialsError": "gs",
    "RefreshError": "gs",
}
_CREDENTIAL_ADVICE = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the "
    "machine an IAM role); for an S3-compatible server also AWS_ENDPOINT_URL",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run "
    "`gcloud auth application-default login`)",
}


def credentials_problem(error: BaseException) -> str | None:
    """What to set when ``error`` (or its cause) says a storage client found no credentials."""
    seen = 0
    while error is not None and seen < 10:
        kind = _CREDENTIAL_ERRORS.get(type(error).__name__)
        if kind is not None:
            return f"no credentials for {kind}:// storage ({error}): {_CREDENTIAL_ADVICE[kind]}"
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def normalise_uri(uri: str) -> str:
    """Absolute local paths for bare paths; URIs with a scheme are kept as given."""
    if "://" in uri:
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


class ExperimentStore:
    """Reads and writes one experiment's folder."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        fence: str | None = None,
    ):
        self.uri = normalise_uri(uri)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._journals: list = []  # open ``manifest.Journal``s: what a round or epoch wrote
        self.fence = fence

    def fenced(self, token: str) -> ExperimentStore:
        """A copy (same filesystem) whose writes land only while the lease carries ``token``."""
        twin = copy.copy(self)
        twin.fence = token
        twin._journals = []  # journals are opened per store
        return twin

    def check_fence(self, rel: str) -> None:
        """Refuse to write ``rel`` unless the lease still carries this store's fence token."""
        if self.fence is None:
            return
        data = read_lease_bytes(self.fs, self.path(LEASE_FILE), self.is_local)
        refused = f"refused to write {self.url(rel)}"
        if data is None:
            holder = "nobody (the lease file is gone)"
        else:
            try:
                lease = parse_lease(data)
            except ValueError as exc:
                raise WriterFencedError(
                    f"{refused}: the lease file {self.url(LEASE_FILE)} of experiment {self.uri} "
                    f"is unreadable ({exc}), so this writer cannot tell that it still holds the "
                    f"lease. If no run is writing this experiment, delete the file and continue "
                    f"with `lotterylab resume {self.uri}`"
                ) from None
            if lease["token"] == self.fence:
                return
            holder = f"{lease['holder']} (command: {lease['command']!r})"
        raise WriterFencedError(
            f"{refused}: this writer lost the lease of experiment {self.uri}, which is now held "
            f"by {holder}. It stops here; continue with `lotterylab resume {self.uri}` (once "
            "any other writer has finished)"
        )

    @property
    def name(self) -> str:
        return posixpath.basename(self.root)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """A full URI for the given relative path (what a user would pass back to the CLI)."""
        if self.is_local:
            return self.path(*parts)
        return self.uri + ("/" + "/".join(parts) if parts else "")

    # -- bytes ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def journal(self):
        """Record what is written meanwhile (a lineage's round, a run's epoch) for its manifest."""
        from lotterylab.platform.store.manifest import Journal

        journal = Journal()
        self._journals.append(journal)
        try:
            yield journal
        finally:
            self._journals.remove(journal)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.check_fence(rel)
        target = self.path(rel)
        if self.is_local:
            directory = posixpath.dirname(target)
            os.makedirs(directory, exist_ok=True)
            # a dot-prefixed temp name is ignored by pyarrow datasets and by listings
            tmp = posixpath.join(directory, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:  # a full disk must not also keep the part that did not fit
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        else:
            self.fs.pipe_file(target, data)  # one PUT: the object appears whole or not at all
        for journal in self._journals:
            journal.wrote_file(rel)

    def remove(self, rel: str) -> bool:
        """Delete one file (fenced like a write); False when it was not there."""
        self.check_fence(rel)
        try:
            self.fs.rm(self.path(rel))
        except FileNotFoundError:
            return False
        finally:
            if not self.is_local:
                self.fs.invalidate_cache(self.path(rel))
        return True

    def read_bytes(self, rel: str) -> bytes:
        target = self.path(rel)
        try:
            return self.fs.cat_file(target)
        except FileNotFoundError as exc:
            raise StoreError(f"missing file {self.url(rel)}") from exc

    def exists(self, rel: str) -> bool:
        target = self.path(rel)
        if not self.is_local:
            # object-store clients answer from cached listings: another process may have
            # written the object since
            self.fs.invalidate_cache(target)
        return self.fs.exists(target)

    def list(self, rel: str) -> list[str]:
        """Names directly under a folder (empty when the folder does not exist)."""
        if not self.is_local:
            # a cached listing would miss what other processes added below the folder since
            self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    # -- verified artifacts --------------------------------------------------------------
    def write_artifact(self, rel: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.write_bytes(rel, data)
        self.write_bytes(rel + ".sha256", digest.encode())
        return digest

    def read_artifact(self, rel: str) -> bytes:
        if not self.exists(rel + ".sha256"):
            raise StoreError(
                f"artifact {self.url(rel)} has no checksum file: it was never finished "
                "(the writer died) or does not exist"
            )
        expected = self.read_bytes(rel + ".sha256").decode().strip()
        data = self.read_bytes(rel)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise StoreError(
                f"artifact {self.url(rel)} is corrupt: sha256 {actual} != recorded {expected}"
            )
        return data

    def write_tensors(self, rel: str, tensors: dict[str, torch.Tensor]) -> str:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
        return self.write_artifact(rel, buffer.getvalue())

    def read_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        data = self.read_artifact(rel)
        try:
            tensors = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # hostile bytes can fail anywhere in the zip or pickle reader
            raise StoreError(
                f"artifact {self.url(rel)} matches its checksum but is not a tensor file "
                f"torch.load(weights_only=True) can read ({type(exc).__name__}); "
                "delete it and its .sha256 so it is computed again"
            ) from exc
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
        ):
            raise StoreError(
                f"artifact {self.url(rel)} holds a {type(tensors).__name__}, not a mapping of "
                "names to tensors; delete it and its .sha256 so it is computed again"
            )
        return tensors

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_artifact(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        data = self.read_artifact(rel)
        try:
            return json.loads(data)
        except ValueError as exc:  # not UTF-8, or not JSON
            raise StoreError(
                f"artifact {self.url(rel)} matches its checksum but is not JSON ({exc})"
            ) from exc

    # -- tables --------------------------------------------------------------------------
    def write_rows(self, table: str, lineage_id: str, part: str, rows: list[dict]) -> str:
        """Write one Parquet part file; the same (lineage, part) overwrites itself."""
        arrow = rows_to_table(table, rows)
        buffer = io.BytesIO()
        pq.write_table(arrow, buffer)
        rel = posixpath.join("tables", table, lineage_id, f"{part}.parquet")
        self.write_bytes(rel, buffer.getvalue())
        for journal in self._journals:
            journal.wrote_rows(rel, table, lineage_id, part, rows)
        return rel

    def read_table(self, table: str) -> pa.Table:
        """All finished part files of a table (temp files are skipped by their dot prefix)."""
        folder = self.path("tables", table)
        if not self.is_local:
            # cached listings hold the ETags of parts other writers may have replaced since;
            # reading a replaced part with a stale ETag fails (412) instead of reading it
            self.fs.invalidate_cache()
        if not self.fs.exists(folder):
            return SCHEMAS[table].empty_table()
        files = sorted(
            f
            for f in self.fs.find(folder)
            if f.endswith(".parquet") and not posixpath.basename(f).startswith((".", "_"))
        )
        if not files:
            return SCHEMAS[table].empty_table()
        dataset = ds.dataset(files, schema=SCHEMAS[table], format="parquet", filesystem=self.fs)
        return dataset.to_table()
