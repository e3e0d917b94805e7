"""GraSP (Wang et al. 2020): theta * Hg; the lowest are pruned, so the top of theta * Hg stays.

g is the loss gradient, summed over the batches; Hg comes from one more backward pass through
the gradient of each batch (a Hessian-vector product), logits divided by the temperature as in
the public code. The last batch's gradient keeps its graph, and its Hessian-vector product
reuses it rather than running that batch again, unless its forward pass drew random numbers
(dropout in train mode), where a second pass would see other draws; the other batches' graphs
are freed as they go, so no more than one graph is held at a time.
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


def _rng_state(device: torch.device) -> list[torch.Tensor] | None:
    """The generators a forward pass on ``device`` may draw from; None if not known."""
    if device.type == "cpu":
        return [torch.get_rng_state()]
    if device.type == "cuda":
        return [torch.get_rng_state(), torch.cuda.get_rng_state(device)]
    return None


def _drew_nothing(before: list[torch.Tensor] | None, device: torch.device) -> bool:
    after = _rng_state(device)
    return (
        before is not None
        and after is not None
        and all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    )


def grasp_scores(net, masks, data, generator, hparams: GraSPHParams) -> dict[str, torch.Tensor]:
    data = require_data("grasp", data)
    train, temperature = hparams.batch_norm == "train", hparams.temperature
    weights = {n: w.requires_grad_(True) for n, w in net.masked(masks).items()}
    leaves = [weights[n] for n in net.names]
    rest, last = list(data[:-1]), data[-1]
    g = loss_gradients(net, weights, rest, temperature, train) if rest else None
    before = _rng_state(net.device)
    last_grads = loss_gradients(net, weights, [last], temperature, train, create_graph=True)
    reuse = _drew_nothing(before, net.device)
    g = {
        n: t.detach() if g is None else g[n] + t.detach()  # the sum in batch order
        for n, t in last_grads.items()
    }

    def hessian_gradient(grads):
        inner = sum((grads[n] * g[n]).sum() for n in net.names)
        return torch.autograd.grad(inner, leaves, materialize_grads=True)

    last_step = hessian_gradient(last_grads) if reuse else None
    del last_grads  # its graph is freed before the next batch runs
    hg = [torch.zeros_like(w) for w in leaves]
    for batch in rest if reuse else data:
        grads = loss_gradients(net, weights, [batch], temperature, train, create_graph=True)
        step = hessian_gradient(grads)
        hg = [a + b for a, b in zip(hg, step, strict=True)]
    if last_step is not None:  # added last, as in batch order
        hg = [a + b for a, b in zip(hg, last_step, strict=True)]
    return {
        n: (h * weights[n]).detach().to(torch.float64) for n, h in zip(net.names, hg, strict=True)
    }
