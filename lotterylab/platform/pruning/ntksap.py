"""NTK-SAP (Wang et al. 2023): the mask's share in the fixed-weight NTK trace.

Each step draws fresh Kaiming-normal weights (batch norm affine reset to 1 and 0, biases kept)
and a Gaussian input shaped like a data batch, sets batch-norm statistics from that input
(train mode, momentum 1), then, in eval mode, compares f(X; theta * m) with
f(X; (theta + eps * Delta) * m) for Gaussian Delta: ||f - f'||^2 estimates eps^2 times the NTK
trace. Gradients with respect to the mask are summed over steps; score = |grad * m|.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from lotterylab.platform.pruning.network import join_name
from lotterylab.platform.schema import Strict


class NTKSAPHParams(Strict):
    epsilon: float = Field(0.01, gt=0, description="size of the weight perturbation")
    repeats: int = Field(1, ge=1, description="passes over the batches (the public code's R)")
    input_shape: tuple[int, ...] | None = Field(
        None,
        description="shape (N, C, H, W) of one random input batch, used when no data are given",
    )


def _randn(shape, like, generator):
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def ntksap_scores(net, masks, data, generator, hparams: NTKSAPHParams) -> dict[str, torch.Tensor]:
    if data:
        shapes = [tuple(x.shape) for x, _ in data]
    elif hparams.input_shape is not None:
        shapes = [tuple(hparams.input_shape)]
    else:
        raise ValueError(
            "method 'ntksap' needs the input batch shape: pass data=[(x, y), ...] or "
            "hparams={'input_shape': [N, C, H, W]}"
        )
    m = {n: masks[n].to(net.dtype).requires_grad_(True) for n in net.names}
    leaves = [m[n] for n in net.names]
    base = {}
    for prefix, bn in net.norms.items():
        if bn.affine:
            base[join_name(prefix, "weight")] = torch.ones_like(bn.weight)
            base[join_name(prefix, "bias")] = torch.zeros_like(bn.bias)
    total = [torch.zeros_like(t) for t in leaves]
    for _ in range(hparams.repeats):
        for shape in shapes:
            theta = {}
            for n in net.names:
                w = net.params[n]
                theta[n] = _randn(w.shape, w, generator) * math.sqrt(2.0 / w[0].numel())
            x = torch.randn(shape, generator=generator, device=net.device, dtype=net.dtype)
            stats = net.running_stats(x, {**base, **{n: theta[n] * masks[n] for n in net.names}})
            out = net(x, {**base, **stats, **{n: theta[n] * m[n] for n in net.names}})
            moved = {
                n: (theta[n] + hparams.epsilon * _randn(theta[n].shape, theta[n], generator)) * m[n]
                for n in net.names
            }
            out_moved = net(x, {**base, **stats, **moved})
            trace = (out - out_moved).square().sum()
            grads = torch.autograd.grad(trace, leaves, materialize_grads=True)
            total = [t + g for t, g in zip(total, grads, strict=True)]
    return {
        n: (g * m[n]).detach().abs().to(torch.float64)
        for n, g in zip(net.names, total, strict=True)
    }
