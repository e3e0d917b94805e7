"""What an IMP sibling is: a scorer applied at IMP's per-layer counts, and what it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoundContext:
    """The end of round ``round`` for one method of a lineage.

    ``alive`` is the mask this method trained under in that round; ``keep_counts`` are IMP's
    per-tensor alive counts after its pruning at the end of that round, which every sibling
    matches; ``trained`` are this method's trained prunable weights (None if not trained).
    ``first_layer_inputs`` gives what the first layer sees at θ(t_rewind) (models with a dense
    first layer on pixels only).
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


@dataclass(frozen=True)
class Sibling:
    """A mask chosen each round at IMP's per-tensor counts by the highest ``scores(ctx)``.

    ``always_trains``: trained every round (else only with ``imp.train_baselines``);
    ``needs_dense_first_layer``: the scores read the first layer's inputs, so the model must
    declare a dense first layer on pixels.
    """

    scores: Callable[[RoundContext], dict[str, torch.Tensor]]
    description: str
    always_trains: bool = False
    needs_dense_first_layer: bool = False

    def trains(self, train_baselines: bool) -> bool:
        return self.always_trains or train_baselines
