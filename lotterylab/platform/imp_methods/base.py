"""What a sibling method sees when it picks its mask for the next round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from lotterylab.platform import masks as mk


@dataclass(frozen=True)
class RoundContext:
    """The end of round ``round`` for one method of a lineage.

    ``alive`` is the mask this method trained under in that round; ``keep_counts`` are IMP's
    per-tensor alive counts after its pruning at the end of that round, which every sibling
    matches; ``trained`` are this method's trained prunable weights (None if not trained).
    ``first_layer_inputs`` gives what the first layer sees at θ(t_rewind) (FCN lineages only).
    """

    round: int
    seed: int
    alive: dict[str, torch.Tensor]
    keep_counts: dict[str, int]
    trained: dict[str, torch.Tensor] | None
    dense_final: dict[str, torch.Tensor]
    rewind_weights: dict[str, torch.Tensor]
    first_layer: str | None
    first_layer_inputs: Callable[[], torch.Tensor]


class SiblingMethod(Protocol):
    def trains(self, train_baselines: bool) -> bool:
        """Whether the method's network is trained each round."""

    def keep(self, ctx: RoundContext) -> dict[str, torch.Tensor]:
        """The mask for the next round: ``keep_counts`` weights kept among ``alive``."""


def keep_by_scores(scores: dict[str, torch.Tensor], ctx: RoundContext) -> dict[str, torch.Tensor]:
    """Per tensor, the ``keep_counts`` highest-scoring alive weights."""
    return {
        name: mk.keep_top(scores[name], ctx.alive[name], ctx.keep_counts[name])
        for name in ctx.alive
    }
