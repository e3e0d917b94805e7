"""SynFlow (Tanaka et al. 2020): |theta * dR/dtheta| of the network with |theta|.

R is the sum of the outputs on an all-ones input, batch norm in eval mode, computed in float64:
path products overflow float32 in deep networks.
"""

from __future__ import annotations

import torch
from pydantic import Field

from lotterylab.platform.pruning.network import path_gradients, path_scores, sample_shape
from lotterylab.platform.schema import Strict


class SynFlowHParams(Strict):
    input_shape: tuple[int, ...] | None = Field(
        None,
        description="shape of one input sample (C, H, W), used when no data are given "
        "(default (D,) for a first layer nn.Linear(D, ...))",
    )


def synflow_scores(net, masks, data, generator, hparams: SynFlowHParams) -> dict[str, torch.Tensor]:
    shape = sample_shape("synflow", data, hparams.input_shape, net)
    with torch.no_grad():  # |w| in float64, all layers in one call (exact in any order)
        weights = [w.to(torch.float64) for w in net.masked(masks).values()]
        torch._foreach_abs_(weights)
    leaves = {n: w.requires_grad_(True) for n, w in zip(net.names, weights, strict=True)}
    grads = path_gradients(net, "abs", leaves, shape)
    return path_scores(net, grads, leaves)
