"""IMP's sibling methods: masks chosen at IMP's per-layer counts by another criterion.

Each sibling is one module holding a small strategy (``keep`` picks the next mask, ``trains``
says whether it is trained each round); ``SIBLINGS`` is the registry the lineage and the spec
draw from. Adding a sibling is one module and one line here.
"""

from __future__ import annotations

from lotterylab.platform.imp_methods.base import RoundContext, SiblingMethod
from lotterylab.platform.imp_methods.cavity import CavityGuided
from lotterylab.platform.imp_methods.oneshot import Oneshot
from lotterylab.platform.imp_methods.random_mask import RandomMask

SIBLINGS: dict[str, type[SiblingMethod]] = {
    "oneshot": Oneshot,
    "random": RandomMask,
    "cavity": CavityGuided,
}

__all__ = ["SIBLINGS", "RoundContext", "SiblingMethod", "sibling"]


def sibling(name: str) -> SiblingMethod:
    if name not in SIBLINGS:
        raise ValueError(f"unknown IMP sibling method {name!r}; allowed: {sorted(SIBLINGS)}")
    return SIBLINGS[name]()
