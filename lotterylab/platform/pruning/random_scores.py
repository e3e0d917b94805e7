"""Random pruning: i.i.d. uniform scores, so every alive weight is equally likely to stay."""

from __future__ import annotations

import torch

from lotterylab.platform.schema import Strict


class RandomHParams(Strict):
    """Random pruning has no hyper-parameters."""


def random_scores(net, masks, data, generator, hparams: RandomHParams) -> dict[str, torch.Tensor]:
    return {
        n: torch.rand(masks[n].shape, generator=generator, device=net.device, dtype=torch.float64)
        for n in net.names
    }
