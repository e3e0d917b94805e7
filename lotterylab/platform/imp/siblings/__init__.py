"""IMP's sibling methods: masks chosen at IMP's per-layer counts by another criterion.

Each sibling is one module holding a scorer (``Sibling``); ``SIBLINGS`` is the registry the
lineage and the spec draw from. Adding a sibling is one module and one line here, or one
``lotterylab.imp_siblings`` entry point in the user's own package.
"""

from __future__ import annotations

from lotterylab.platform.imp.siblings.base import RoundContext, Sibling
from lotterylab.platform.imp.siblings.cavity import CAVITY
from lotterylab.platform.imp.siblings.oneshot import ONESHOT
from lotterylab.platform.imp.siblings.random_mask import RANDOM
from lotterylab.platform.registry import Registry

SIBLINGS: Registry[Sibling] = Registry(
    "IMP sibling method",
    "lotterylab.imp_siblings",
    Sibling,
    {"oneshot": ONESHOT, "random": RANDOM, "cavity": CAVITY},
)

__all__ = ["SIBLINGS", "RoundContext", "Sibling", "sibling", "sibling_names"]


def sibling_names() -> list[str]:
    return SIBLINGS.names()


def sibling(name: str) -> Sibling:
    return SIBLINGS.entry(name)
