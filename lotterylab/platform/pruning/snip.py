"""SNIP (Lee et al. 2019): |dL/dtheta * theta|, the first-order loss change when a weight goes."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lotterylab.platform.data.dataset import IGNORE_LABEL
from lotterylab.platform.pruning.network import on_device, require_data
from lotterylab.platform.schema import Strict


class SNIPHParams(Strict):
    batch_norm: Literal["train", "eval"] = Field(
        "train",
        description="batch-norm mode while scoring; 'train' (batch statistics) as the public code",
    )


def loss_gradients(net, weights, data, temperature: float, train: bool, create_graph=False):
    """Summed gradients of the per-batch mean cross-entropy of logits / temperature."""
    leaves = [weights[n] for n in net.names]
    total = None
    for batch in data:
        x, y = on_device(net, batch)
        logits = net(x, weights, train=train) / temperature
        # label maps mark unlabelled pixels; image labels may use 255 as a class
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE_LABEL if y.dim() > 1 else -100)
        grads = torch.autograd.grad(loss, leaves, create_graph=create_graph, materialize_grads=True)
        total = list(grads) if total is None else [t + g for t, g in zip(total, grads, strict=True)]
    return dict(zip(net.names, total, strict=True))


def snip_scores(net, masks, data, generator, hparams: SNIPHParams) -> dict[str, torch.Tensor]:
    data = require_data("snip", data)
    weights = {n: w.requires_grad_(True) for n, w in net.masked(masks).items()}
    grads = loss_gradients(net, weights, data, 1.0, hparams.batch_norm == "train")
    return {n: (grads[n] * weights[n]).detach().abs().to(torch.float64) for n in net.names}
