"""The lease file as both the lease and the fence read it: its name, a bounded read and a parse.

A writer that lost the lease (taken over after a stall, or its file deleted) must not go on
writing beside the new holder. A fenced :class:`~lotterylab.platform.store.experiment_store.
ExperimentStore` therefore reads ``lease.json`` before every write and refuses unless its token
is the one the store was given. Object stores offer no write conditional on another object, so a
window stays between the check and the write: each writer can land at most the one write it had
in flight when it lost the lease. Everything written after that is refused. The check costs
one small read per write (a GET on object stores), next to writes of rows, states and masks.

Ray Tune's own files in the experiment folder (its experiment state, trial logs) are written by
Tune, not through the store, and are not fenced: the platform never reads them back.

Here, and not in ``lease.py``, so that the store can read the lease without importing the lease
machinery (which imports the store).
"""

from __future__ import annotations

import json
from typing import Any

LEASE_FILE = "lease.json"
MAX_LEASE_BYTES = 64 * 1024  # a lease is a few hundred bytes; bounds a hostile file
FIELDS = {
    "holder": str,
    "acquired": str,
    "expires": str,
    "command": str,
    "token": str,
    "serial": int,
}


def read_lease_bytes(fs, path: str, is_local: bool) -> bytes | None:
    """At most ``MAX_LEASE_BYTES + 1`` bytes of the lease file, fresh; None when there is none."""
    try:
        if is_local:
            with open(path, "rb") as handle:
                return handle.read(MAX_LEASE_BYTES + 1)
        fs.invalidate_cache(path)  # a cached listing or ETag may predate another writer's lease
        return fs.cat_file(path, start=0, end=MAX_LEASE_BYTES + 1)
    except FileNotFoundError:
        return None


def parse_lease(data: bytes) -> dict[str, Any]:
    """The lease's fields, each of its type; ``ValueError`` saying what is wrong otherwise."""
    if len(data) > MAX_LEASE_BYTES:
        raise ValueError(f"over {MAX_LEASE_BYTES} bytes")
    raw = json.loads(data)  # ValueError (JSONDecodeError, UnicodeDecodeError) on garbage
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON {type(raw).__name__}, not an object")
    fields = {}
    for name, kind in FIELDS.items():
        if name not in raw:
            raise ValueError(f"no key {name!r}")
        value = raw[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name!r} is a {type(value).__name__}, not a {kind.__name__}")
        fields[name] = value
    return fields


__all__ = ["FIELDS", "LEASE_FILE", "MAX_LEASE_BYTES", "parse_lease", "read_lease_bytes"]
