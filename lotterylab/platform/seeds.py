"""Seeds derived from a lineage seed and a purpose, stable across Python processes."""

from __future__ import annotations

import hashlib


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from the lineage seed and a purpose (init, batches, random masks, …)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
