"""What a pruning-at-initialisation method is: a scorer, its hyper-parameters and its facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import torch

from lotterylab.platform.pruning.network import Batch, ScoringNet
from lotterylab.platform.schema import Strict


class Scorer(Protocol):
    def __call__(
        self,
        net: ScoringNet,
        masks: Mapping[str, torch.Tensor],
        data: Sequence[Batch] | None,
        generator: torch.Generator,
        hparams: Strict,
    ) -> dict[str, torch.Tensor]:
        """One round's scores of the masked network; higher = more worth keeping."""
        ...


class Method(NamedTuple):
    """``single_shot``: scored once whatever the rounds (paper 2's single-shot methods);
    ``needs_data``: the scorer reads batches of training data."""

    scorer: Scorer
    hparams: type[Strict]
    single_shot: bool = False
    needs_data: bool = False
