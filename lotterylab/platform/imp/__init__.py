"""Iterative magnitude pruning, all in one place.

``lineage``: one IMP lineage and its siblings, round by round; ``siblings``: the registry of
methods pruned at IMP's counts; ``masks``: a whole mask history as removal rounds;
``round_trainings`` and ``batched``: a round's trainings, stacked where the model allows;
``group``: several lineages advanced together in one trial; ``branches``: the lottery-ticket
controls of a round's ticket.

Submodules load on first use, so that the spec (which lists the siblings) and the metrics
(which read removal rounds) can import pieces of this package without loading all of it.
"""

from importlib import import_module

_EXPORTS = {
    "IMP": "lineage",
    "IMPLineage": "lineage",
    "LineageConfig": "lineage",
    "trained_path": "lineage",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
