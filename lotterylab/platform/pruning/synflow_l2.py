"""SynFlow-L2 (Gebhart et al. 2021): |dR/d(theta^2) * theta^2|, the path-kernel trace's share.

The same path network as SynFlow with squared weights; the squared weights themselves are the
leaves, so the gradient is taken with respect to theta^2.
"""

from __future__ import annotations

import torch
from pydantic import Field

from lotterylab.platform.pruning.network import path_gradients, sample_shape
from lotterylab.platform.schema import Strict


class SynFlowL2HParams(Strict):
    input_shape: tuple[int, ...] | None = Field(
        None, description="shape of one input sample (C, H, W), used when no data are given"
    )


def squared_path_scores(net, masks, shape, output_weights=None) -> dict[str, torch.Tensor]:
    """|dR/d(theta^2) * theta^2| with R = sum of outputs (times ``output_weights``)."""
    leaves = {
        n: w.to(torch.float64).square().requires_grad_(True) for n, w in net.masked(masks).items()
    }
    grads = path_gradients(net, "square", leaves, shape, output_weights)
    return {n: (grads[n] * leaves[n]).detach().abs() for n in net.names}


def synflow_l2_scores(
    net, masks, data, generator, hparams: SynFlowL2HParams
) -> dict[str, torch.Tensor]:
    return squared_path_scores(net, masks, sample_shape("synflow_l2", data, hparams.input_shape))
