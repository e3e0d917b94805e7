"""GraSP (Wang et al. 2020): theta * Hg; the lowest are pruned, so the top of theta * Hg stays.

g is the loss gradient without graph, summed over the batches; Hg comes from one more backward
pass through the gradient of each batch (a Hessian-vector product), logits divided by the
temperature as in the public code.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from lotterylab.platform.pruning.network import require_data
from lotterylab.platform.pruning.snip import loss_gradients
from lotterylab.platform.schema import Strict


class GraSPHParams(Strict):
    temperature: float = Field(200.0, gt=0, description="the logits are divided by it")
    batch_norm: Literal["train", "eval"] = Field(
        "train",
        description="batch-norm mode while scoring; 'train' (batch statistics) as the public code",
    )


def grasp_scores(net, masks, data, generator, hparams: GraSPHParams) -> dict[str, torch.Tensor]:
    data = require_data("grasp", data)
    train = hparams.batch_norm == "train"
    weights = {n: w.requires_grad_(True) for n, w in net.masked(masks).items()}
    leaves = [weights[n] for n in net.names]
    g = loss_gradients(net, weights, data, hparams.temperature, train)
    g = {n: t.detach() for n, t in g.items()}
    hg = [torch.zeros_like(w) for w in leaves]
    for batch in data:
        grads = loss_gradients(net, weights, [batch], hparams.temperature, train, create_graph=True)
        inner = sum((grads[n] * g[n]).sum() for n in net.names)
        step = torch.autograd.grad(inner, leaves, materialize_grads=True)
        hg = [a + b for a, b in zip(hg, step, strict=True)]
    return {
        n: (h * weights[n]).detach().to(torch.float64) for n, h in zip(net.names, hg, strict=True)
    }
