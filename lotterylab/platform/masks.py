"""Masks as removal rounds, and the magnitude / random selections that produce them.

A whole mask history is one integer tensor per prunable tensor: ``removal_round`` holds the
round at whose end a weight was pruned (-1 while alive). The mask after round n is
``removal_round == -1 | removal_round > n``; round n trains under the mask after round n-1
(round 0 is dense). The tensor itself is each weight's fate, which the cavity analysis needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

ALIVE = -1


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


def keep_top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask keeping the ``keep`` highest-scoring alive entries (ties broken by flat index)."""
    flat_scores = scores.detach().reshape(-1).to(torch.float64)
    flat_alive = alive.reshape(-1)
    if keep > int(flat_alive.sum()):
        raise ValueError(f"cannot keep {keep} of {int(flat_alive.sum())} alive weights")
    masked = torch.where(flat_alive, flat_scores, torch.full_like(flat_scores, -torch.inf))
    order = torch.argsort(masked, descending=True, stable=True)
    keep_mask = torch.zeros_like(flat_alive)
    keep_mask[order[:keep]] = True
    return keep_mask.reshape(alive.shape)


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
        return {
            name: keep_top(weights[name].abs(), masks[name], alive[name] - counts[name])
            for name in masks
        }
    names = list(masks)
    flat_scores = torch.cat([weights[n].detach().abs().reshape(-1) for n in names])
    flat_alive = torch.cat([masks[n].reshape(-1) for n in names])
    keep = keep_top(flat_scores, flat_alive, int(flat_alive.sum()) - counts)
    out, start = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = keep[start : start + size].reshape(masks[n].shape)
        start += size
    return out


def nested_removal_rounds(
    scores: Mapping[str, torch.Tensor], keep_counts: list[Mapping[str, int]]
) -> dict[str, torch.Tensor]:
    """Removal rounds of nested masks that keep, in round n, the top ``keep_counts[n]`` scores.

    Used for the oneshot (scores = |dense final weights|) and random (scores = uniform noise)
    baselines: the mask of round n has exactly IMP's per-tensor counts of round n.
    """
    out = {}
    for name, score in scores.items():
        flat = score.detach().reshape(-1).to(torch.float64)
        order = torch.argsort(flat, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        rr = torch.full_like(order, ALIVE)
        for n in range(1, len(keep_counts)):
            newly_removed = (rank >= keep_counts[n][name]) & (rr == ALIVE)
            rr[newly_removed] = n - 1
        out[name] = rr.reshape(score.shape)
    return out
