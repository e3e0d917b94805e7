"""The one pruning core of IMP and PaI (top-k per tensor or global), density schedules and the
shuffle sanity branch."""

from __future__ import annotations

from collections.abc import Mapping

import torch

SCHEDULES = ("exponential", "linear")


def round_densities(density: float, rounds: int, schedule: str) -> list[float]:
    """d_t for t = 1..rounds: density^(t/T) (exponential) or 1 - (1 - density) t/T (linear).

    The last one is ``density`` itself, not a rounded formula, so the final count is exact.
    """
    steps = range(1, rounds)
    if schedule == "exponential":
        return [density ** (t / rounds) for t in steps] + [density]
    if schedule == "linear":
        return [1.0 - (1.0 - density) * t / rounds for t in steps] + [density]
    raise ValueError(f"schedule {schedule!r} is not one of {list(SCHEDULES)}")


def kept_count(masks: Mapping[str, torch.Tensor], density: float) -> int:
    return round(density * sum(m.numel() for m in masks.values()))


def keep_top(
    scores: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    counts: int | Mapping[str, int],
    invert: bool = False,
) -> dict[str, torch.Tensor]:
    """Keep the highest (``invert``: lowest) scores among alive weights: IMP's and PaI's core.

    ``counts`` is one number kept over all tensors (a global threshold) or one per tensor.
    Pruned weights stay pruned, so masks of successive rounds are nested. Ties at the threshold
    go to the lower index (in ``alive``'s order of tensors). One kthvalue instead of a sort:
    linear in the number of weights.
    """
    names = list(alive)
    if isinstance(counts, Mapping):
        return {
            n: split(_keep_flat(*concatenate(scores, alive, [n]), counts[n], invert), alive, [n])[n]
            for n in names
        }
    return split(_keep_flat(*concatenate(scores, alive, names), counts, invert), alive, names)


def concatenate(
    scores: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor], names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores (float64) and alive flags of ``names`` as two flat vectors, in that order."""
    flat_alive = torch.cat([alive[n].reshape(-1) for n in names])
    flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float64) for n in names])
    return flat.to(flat_alive.device), flat_alive


def split(
    flat: torch.Tensor, like: Mapping[str, torch.Tensor], names: list[str]
) -> dict[str, torch.Tensor]:
    """A flat vector cut back into tensors shaped like ``like[name]`` for each of ``names``."""
    out, start = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = flat[start : start + size].reshape(like[n].shape)
        start += size
    return out


def _keep_flat(flat: torch.Tensor, flat_alive: torch.Tensor, keep: int, invert: bool):
    n_alive = int(flat_alive.sum())
    if not 0 <= keep <= n_alive:
        raise ValueError(f"cannot keep {keep} weights: {n_alive} are alive")
    if not bool(torch.isfinite(flat[flat_alive]).all()):
        raise ValueError("scores of alive weights contain NaN or infinity")
    key = torch.where(flat_alive, -flat if invert else flat, torch.full_like(flat, -torch.inf))
    kept = torch.zeros_like(flat_alive)
    if keep > 0:
        threshold = torch.kthvalue(key, key.numel() - keep + 1).values
        kept = key > threshold
        ties = torch.nonzero(key == threshold).squeeze(1)
        kept[ties[: keep - int(kept.sum())]] = True
    return kept


def shuffle_masks(masks: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each layer's mask permuted within the layer (the ``shuffle`` sanity branch)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.items():
        perm = torch.randperm(m.numel(), generator=generator).to(m.device)
        out[name] = m.reshape(-1)[perm].reshape(m.shape)
    return out
