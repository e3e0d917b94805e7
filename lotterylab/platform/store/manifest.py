"""What each lineage or run has finished: a checksummed ``manifest.json`` in its folder.

A lineage (``lineages/<id>/``) or PaI run (``runs/<id>/``) records, after every round or epoch,
every file it has written and the rows of every table part. With it the store can say what is
missing (a part or artifact deleted, or lost with a disk), ``figures`` refuses to draw from an
experiment with holes, and ``resume`` rewrites a missing part exactly from the rows recorded
here and asks the lineage or run to rebuild a missing artifact. The files it lists are
relative to the experiment's folder.

Experiments written before manifests existed have none; their completeness is not checked.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import Any

import pyarrow as pa

from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.tables import SCHEMAS, rows_to_table

MANIFEST = "manifest.json"
OWNER_FOLDERS = ("lineages", "runs")  # the folders whose children keep a manifest
MAX_MANIFEST_BYTES = 64 * 2**20  # the rows of a 40-round lineage fit many times over
_NAME = re.compile(r"^[A-Za-z0-9_.=-]{1,200}$")


class IncompleteResultsError(StoreError):
    """Files that lineages or runs recorded as written are missing from the store."""


@dataclasses.dataclass
class Journal:
    """What was written while it was open: file paths, and the rows of each table part."""

    files: set[str] = dataclasses.field(default_factory=set)
    parts: dict[str, dict] = dataclasses.field(default_factory=dict)

    def wrote_file(self, rel: str) -> None:
        if not rel.endswith(".sha256"):
            self.files.add(rel)

    def wrote_rows(self, rel: str, table: str, owner: str, part: str, rows: list[dict]) -> None:
        self.parts[rel] = {
            "table": table,
            "owner": owner,
            "part": part,
            "rows": json_rows(table, rows),
        }


def json_rows(table: str, rows: list[dict]) -> list[dict]:
    """Rows as plain JSON values that rebuild the same Parquet part: map columns as lists of
    ``[key, value]`` pairs, since their order is part of the value and JSON objects get sorted."""
    arrow = rows_to_table(table, rows)
    maps = _map_columns(table)
    out = []
    for row in arrow.to_pylist():
        for name in maps:
            if row[name] is not None:
                row[name] = [list(pair) for pair in row[name]]
        out.append(row)
    return out


def rows_from_json(table: str, rows: list[dict]) -> list[dict]:
    maps = _map_columns(table)
    return [
        {k: dict(v) if k in maps and isinstance(v, list) else v for k, v in row.items()}
        for row in rows
    ]


def _map_columns(table: str) -> set[str]:
    return {f.name for f in SCHEMAS[table] if pa.types.is_map(f.type)}


@dataclasses.dataclass
class Manifest:
    folder: str  # lineages/<id> or runs/<id>
    steps: int = 0  # rounds or epochs finished
    files: set[str] = dataclasses.field(default_factory=set)
    parts: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def owner(self) -> str:
        return posixpath.basename(self.folder)

    def record(self, journal: Journal, steps: int) -> None:
        self.files |= journal.files
        self.parts.update(journal.parts)
        self.steps = steps

    def artifacts(self) -> list[str]:
        """Files other than table parts (each kept with its ``.sha256``)."""
        return sorted(self.files - self.parts.keys())

    def missing(self, present: set[str]) -> list[str]:
        """Recorded files absent from ``present`` (paths relative to the experiment)."""
        gone = [rel for rel in self.parts if rel not in present]
        gone += [r for r in self.artifacts() if r not in present or f"{r}.sha256" not in present]
        return sorted(gone)

    def to_json(self) -> dict:
        return {
            "folder": self.folder,
            "steps": self.steps,
            "files": sorted(self.files),
            "parts": self.parts,
        }


def manifest_rel(folder: str) -> str:
    return f"{folder}/{MANIFEST}"


def write_manifest(store: ExperimentStore, manifest: Manifest) -> None:
    store.write_json(manifest_rel(manifest.folder), manifest.to_json())


def read_manifest(store: ExperimentStore, folder: str) -> Manifest | None:
    """The stored manifest of ``folder``, checked as hostile input; None when there is none."""
    rel = manifest_rel(folder)
    if not store.exists(rel + ".sha256"):
        return None
    size = store.fs.size(store.path(rel))
    if size is not None and size > MAX_MANIFEST_BYTES:
        raise _bad(store, rel, f"it is {size} bytes, over the bound of {MAX_MANIFEST_BYTES}")
    raw = store.read_json(rel)
    return _parse(store, rel, folder, raw)


def _bad(store: ExperimentStore, rel: str, why: str) -> StoreError:
    return StoreError(
        f"manifest {store.url(rel)} cannot be used: {why}; delete it (and its .sha256) and "
        "resume to record the lineage or run again"
    )


def _parse(store: ExperimentStore, rel: str, folder: str, raw: Any) -> Manifest:
    if not isinstance(raw, dict) or raw.get("folder") != folder:
        raise _bad(store, rel, f"it is not the manifest of {folder}")
    steps, files, parts = raw.get("steps"), raw.get("files"), raw.get("parts")
    if not isinstance(steps, int) or steps < 0:
        raise _bad(store, rel, "'steps' is not a count")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise _bad(store, rel, "'files' is not a list of paths")
    if not isinstance(parts, dict):
        raise _bad(store, rel, "'parts' is not a mapping")
    owner = posixpath.basename(folder)
    for path in files:
        if ".." in path.split("/") or path.startswith("/"):
            raise _bad(store, rel, f"file {path[:80]!r} leaves the experiment's folder")
        if not (path.startswith(folder + "/") or path in parts):
            raise _bad(store, rel, f"file {path[:80]!r} is not {owner}'s")
    for path, entry in parts.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), list):
            raise _bad(store, rel, f"part {path[:80]!r} has no rows")
        table, part = entry.get("table"), entry.get("part")
        if table not in SCHEMAS or entry.get("owner") != owner or not _NAME.match(str(part)):
            raise _bad(store, rel, f"part {path[:80]!r} names another table, owner or file")
        if path != part_rel(table, owner, part):
            raise _bad(store, rel, f"part {path[:80]!r} is not where its table keeps it")
    return Manifest(folder, steps, set(files), parts)


def part_rel(table: str, owner: str, part: str) -> str:
    return posixpath.join("tables", table, owner, f"{part}.parquet")


def present_files(store: ExperimentStore, folders: list[str] | None = None) -> set[str]:
    """Every file under ``folders`` (default: the whole experiment), relative to its folder."""
    if not store.is_local:
        store.fs.invalidate_cache()
    root = store.root.rstrip("/") + "/"
    found: list[str] = []
    for folder in folders if folders is not None else [""]:
        top = store.path(folder) if folder else store.root
        if store.fs.exists(top):
            found += store.fs.find(top)
    return {f[len(root) :] for f in found if f.startswith(root)}


def missing_files(store: ExperimentStore, manifest: Manifest) -> list[str]:
    """What ``manifest`` recorded that its own folders no longer hold."""
    if not manifest.files:
        return []
    tables = sorted({f"tables/{e['table']}/{manifest.owner}" for e in manifest.parts.values()})
    return manifest.missing(present_files(store, [manifest.folder, *tables]))


def manifests(store: ExperimentStore) -> list[Manifest]:
    return [
        manifest
        for top in OWNER_FOLDERS
        for name in store.list(top)
        if (manifest := read_manifest(store, f"{top}/{name}")) is not None
    ]


def incomplete(store: ExperimentStore) -> dict[str, list[str]]:
    """Folder of each lineage or run with missing files -> those files."""
    present = present_files(store)
    found = {m.folder: m.missing(present) for m in manifests(store)}
    return {folder: gone for folder, gone in found.items() if gone}


def describe_incomplete(holes: dict[str, list[str]], limit: int = 5) -> str:
    lines = []
    for folder, gone in sorted(holes.items())[:limit]:
        shown = ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
        lines.append(f"  {folder}: {shown}")
    if len(holes) > limit:
        lines.append(f"  and {len(holes) - limit} more lineages or runs")
    return "\n".join(lines)


def check_complete(store: ExperimentStore, holes: dict[str, list[str]] | None = None) -> None:
    """Raise :class:`IncompleteResultsError` naming what is missing, with what to do."""
    holes = incomplete(store) if holes is None else holes
    if holes:
        raise IncompleteResultsError(
            f"{len(holes)} lineages or runs of {store.uri} miss files they had written:\n"
            f"{describe_incomplete(holes)}\n"
            f"`lotterylab resume {store.uri}` rebuilds them; "
            f"`lotterylab figures {store.uri} --partial` draws what is complete and says so"
        )


def restore_parts(store: ExperimentStore, manifest: Manifest, missing: list[str]) -> list[str]:
    """Rewrite the missing table parts from their recorded rows; return what is left."""
    left = []
    for rel in missing:
        entry = manifest.parts.get(rel)
        if entry is None:
            left.append(rel)
            continue
        try:
            rows = rows_from_json(entry["table"], entry["rows"])
            store.write_rows(entry["table"], entry["owner"], entry["part"], rows)
        except (ValueError, TypeError, AttributeError, pa.ArrowException) as error:
            rel_manifest = manifest_rel(manifest.folder)
            raise _bad(
                store, rel_manifest, f"rows of {rel} do not fit its table ({error})"
            ) from error
    return left


__all__ = [
    "MANIFEST",
    "IncompleteResultsError",
    "Journal",
    "Manifest",
    "check_complete",
    "describe_incomplete",
    "incomplete",
    "manifests",
    "missing_files",
    "read_manifest",
    "restore_parts",
    "write_manifest",
]
