"""Masks as removal rounds, and IMP's magnitude selection that produces them.

A whole mask history is one integer tensor per prunable tensor: ``removal_round`` holds the
round at whose end a weight was pruned (-1 while alive). The mask after round n is
``removal_round == -1 | removal_round > n``; round n trains under the mask after round n-1
(round 0 is dense). The tensor itself is each weight's fate, which the cavity analysis needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lotterylab.platform.pruning.select import keep_top

ALIVE = -1
_TOP = torch.finfo(torch.float64).max


def new_removal_rounds(shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    return {
        name: torch.full(tuple(shape), ALIVE, dtype=torch.int64) for name, shape in shapes.items()
    }


def mask_after_round(removal_round: torch.Tensor, round_index: int) -> torch.Tensor:
    """The mask (bool) after ``round_index`` prunings; ``-1`` gives the dense mask."""
    return (removal_round == ALIVE) | (removal_round > round_index)


def masks_after_round(
    removal_rounds: Mapping[str, torch.Tensor], round_index: int
) -> dict[str, torch.Tensor]:
    return {name: mask_after_round(rr, round_index) for name, rr in removal_rounds.items()}


def alive_counts(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in masks.items()}


def sparsities(masks: Mapping[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Overall and per-tensor fraction of removed weights."""
    per = {name: 1.0 - float(m.sum()) / m.numel() for name, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    return 1.0 - alive / total, per


def prune_counts(alive: Mapping[str, int], fraction: float, scope: str) -> dict[str, int] | int:
    """How many weights to remove: per tensor (``layer``) or one pooled count (``global``)."""
    if scope == "layer":
        return {name: int(round(fraction * n)) for name, n in alive.items()}
    if scope == "global":
        return int(round(fraction * sum(alive.values())))
    raise ValueError(f"threshold scope {scope!r} is not one of 'layer', 'global'")


def magnitude_prune(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    fraction: float,
    scope: str,
) -> dict[str, torch.Tensor]:
    """Remove ``fraction`` of the alive weights by |w|, per tensor or under one global threshold."""
    alive = alive_counts(masks)
    counts = prune_counts(alive, fraction, scope)
    if scope == "layer":
        keep = {name: alive[name] - counts[name] for name in masks}
    else:
        keep = sum(alive.values()) - counts
    # a diverged training's NaN or infinite weights rank above every finite one
    scores = {
        n: torch.nan_to_num(weights[n].detach().double().abs(), nan=_TOP, posinf=_TOP)
        for n in masks
    }
    return keep_top(scores, masks, keep)
