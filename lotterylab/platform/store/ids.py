"""Readable, stable lineage ids: results stay addressable across renames and re-runs.

The id is ``<kind>-<model>-<data>-<hash>-s<seed>``; the hash covers the canonical JSON of
everything that changes what a lineage computes (data, model, training, pruning), so two
specs that differ only in name, storage, seeds or resources share lineage ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return format(value, ".12g")
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    raise TypeError(f"cannot canonicalise {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, floats as 12 significant digits."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


def short_hash(value: Any, length: int = 8) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def lineage_id(kind: str, model: str, data: str, identity: dict, seed: int) -> str:
    return f"{kind}-{model}-{data}-{short_hash(identity)}-s{seed}"
