"""Pruning at initialisation: score the masked network, keep the global top-k, repeat."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from lotterylab.platform.pruning.batches import DEFAULT_SCORING_BATCHES
from lotterylab.platform.pruning.network import Batch, ScoringNet
from lotterylab.platform.pruning.registry import method as get_method
from lotterylab.platform.pruning.registry import method_names, resolve_hparams
from lotterylab.platform.pruning.select import SCHEDULES, keep_top, kept_count, round_densities
from lotterylab.platform.schema import Strict


def check_data(data: Iterable[Batch] | None, max_batches: int | None = None) -> list[Batch] | None:
    """The scoring batches: a list is taken as given (its first ``max_batches`` if set); any
    other iterable of (x, y) batches, a ``DataLoader`` included, gives its first
    ``max_batches`` (default ``DEFAULT_SCORING_BATCHES``, as ``pai.scoring_batches``), so an
    endless loader is read only that far."""
    if data is None:
        return None
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be an integer >= 1 or None; got {max_batches!r}")
    if isinstance(data, torch.Tensor | str | bytes | Mapping) or not isinstance(data, Iterable):
        raise ValueError(
            "data must be (x, y) batches: a list, a DataLoader or any iterable of them; "
            f"got {type(data).__name__}"
        )
    if isinstance(data, Sequence):
        data = list(data[:max_batches])
    else:
        data = list(itertools.islice(data, max_batches or DEFAULT_SCORING_BATCHES))
    if not data:
        raise ValueError("data must hold at least one (x, y) batch; got none")
    for i, batch in enumerate(data):
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise ValueError(f"data[{i}] must be an (x, y) pair; got {type(batch).__name__}")
        x, y = batch
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2):
            raise ValueError(f"data[{i}] x must be a float tensor (N, ...); got {_describe(x)}")
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and len(y) == len(x)):
            raise ValueError(
                f"data[{i}] y must be an int64 tensor with {len(x)} labels; got {_describe(y)}"
            )
    return [tuple(batch) for batch in data]


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def _check_method(name: str, data: Sequence[Batch] | None) -> None:
    if name not in method_names():
        raise ValueError(f"method {name!r} is not a pruning method; allowed: {method_names()}")
    if data is None and get_method(name).needs_data:
        raise ValueError(f"method {name!r} scores on training data: pass data=[(x, y), ...]")


def dense_masks(net: ScoringNet) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(w, dtype=torch.bool) for n, w in net.weights().items()}


def _score(net, name, masks, data, generator, hparams) -> dict[str, torch.Tensor]:
    scores = get_method(name).scorer(net, masks, data, generator, hparams)
    return {n: scores[n].to(net.device) for n in net.names}


def score(
    model: nn.Module,
    method: str,
    masks: Mapping[str, torch.Tensor] | None = None,
    data: Iterable[Batch] | None = None,
    seed: int = 0,
    hparams: Strict | dict | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """One round's scores (float64, on the model's device) of ``model`` under ``masks``."""
    _check_method(method, data)
    resolved = resolve_hparams(method, hparams)
    data = check_data(data, max_batches)
    net = ScoringNet(model)
    masks = dense_masks(net) if masks is None else _check_masks(net, masks)
    generator = torch.Generator(device=net.device).manual_seed(seed)
    return _score(net, method, masks, data, generator, resolved)


def _check_masks(net: ScoringNet, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    missing, extra = set(net.names) - set(masks), set(masks) - set(net.names)
    if missing or extra:
        raise ValueError(
            f"masks must cover exactly the prunable weights {net.names}; "
            f"missing {sorted(missing)}, extra {sorted(extra)}"
        )
    return {n: masks[n].to(device=net.device, dtype=torch.bool) for n in net.names}


def prune_at_init(
    model: nn.Module,
    method: str,
    density: float,
    data: Iterable[Batch] | None = None,
    rounds: int = 1,
    schedule: str = "exponential",
    seed: int = 0,
    hparams: Strict | dict | None = None,
    invert: bool = False,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Masks keeping round(density * total) prunable weights, chosen over ``rounds`` rounds.

    Round t keeps the global top round(d_t * total) of the scores of the network masked by
    round t-1; ``invert`` keeps the lowest instead (the sanity branch). ``model`` is not
    touched: everything runs on one copy. ``data`` is a list of (x, y) batches or any
    iterable of them (a ``DataLoader``), read once: see ``check_data`` for ``max_batches``.
    """
    _check_method(method, data)
    if isinstance(density, bool) or not isinstance(density, int | float):
        raise ValueError(f"density must be a number in (0, 1]; got {density!r}")
    if not (math.isfinite(density) and 0 < density <= 1):
        raise ValueError(f"density must be in (0, 1]; got {density!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1; got {rounds!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {list(SCHEDULES)}")
    resolved = resolve_hparams(method, hparams)
    data = check_data(data, max_batches)
    net = ScoringNet(model)
    masks = dense_masks(net)
    generator = torch.Generator(device=net.device).manual_seed(seed)
    for d_t in round_densities(float(density), rounds, schedule):
        scores = _score(net, method, masks, data, generator, resolved)
        masks = keep_top(scores, masks, kept_count(masks, d_t), invert)
    return masks
