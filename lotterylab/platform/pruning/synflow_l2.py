"""SynFlow-L2 (Gebhart et al. 2021): |dR/d(theta^2) * theta^2|, the path-kernel trace's share.

The same path network as SynFlow with squared weights; the squared weights themselves are the
leaves, so the gradient is taken with respect to theta^2.
"""

from __future__ import annotations

import torch
from pydantic import Field

from lotterylab.platform.pruning.network import path_gradients, path_scores, sample_shape
from lotterylab.platform.schema import Strict


class SynFlowL2HParams(Strict):
    input_shape: tuple[int, ...] | None = Field(
        None,
        description="shape of one input sample (C, H, W), used when no data are given "
        "(default (D,) for a first layer nn.Linear(D, ...))",
    )


def squared_path_scores(net, masks, shape, output_weights=None) -> dict[str, torch.Tensor]:
    """|dR/d(theta^2) * theta^2| with R = sum of outputs (times ``output_weights``)."""
    with torch.no_grad():  # theta^2 in float64, all layers in one call; square(t) is t * t
        weights = [w.to(torch.float64) for w in net.masked(masks).values()]
        squares = torch._foreach_mul(weights, weights)
    leaves = {n: w.requires_grad_(True) for n, w in zip(net.names, squares, strict=True)}
    grads = path_gradients(net, "square", leaves, shape, output_weights)
    return path_scores(net, grads, leaves)


def synflow_l2_scores(
    net, masks, data, generator, hparams: SynFlowL2HParams
) -> dict[str, torch.Tensor]:
    return squared_path_scores(
        net, masks, sample_shape("synflow_l2", data, hparams.input_shape, net)
    )
