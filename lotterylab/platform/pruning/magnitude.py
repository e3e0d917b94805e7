"""Magnitude pruning at initialisation: keep the largest |theta|."""

from __future__ import annotations

import torch

from lotterylab.platform.schema import Strict


class MagnitudeHParams(Strict):
    """Magnitude pruning has no hyper-parameters."""


def magnitude_scores(
    net, masks, data, generator, hparams: MagnitudeHParams
) -> dict[str, torch.Tensor]:
    return {n: w.abs().to(torch.float64) for n, w in net.weights().items()}
