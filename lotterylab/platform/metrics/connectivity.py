"""Which kept weights a network can use: effective density, disconnection and path counts.

A mask may keep weights that lie on no path from the input to the output (a unit whose every
outgoing weight is pruned, and all that feeds only it); its nominal density then overstates what
the network can use (Vysogorets & Kempe, JMLR 2023). Here the mask itself is run as a network:
the model's private copy (``ScoringNet``, as SynFlow and PX use) with every Conv/Linear weight
replaced by its 0/1 mask, biases zero, batch norm the identity, ReLUs linear, max and average
pools summing their windows, every skip connection kept, on an all-ones input. Its output sums
the number of input-to-output paths, and the gradient of that sum with respect to a weight
counts the paths through it: a kept weight is effective iff that count is positive, so one
forward and one backward pass decide every weight at once.

Path counts overflow float32 and, in deep nets, approach float64's range, so the pass runs in
float64 with the input and the backward seed each scaled by 2**-500 (powers of two: exact):
a count of one path is 2**-500 forward, a weight's count 2**-1000 (still a normal number), and
counts up to about 1e458 stay finite. The path count is read back as
log10(scaled output sum) + 500 log10(2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lotterylab.platform.pruning.network import Relus, ScoringNet

SCALE_EXPONENT = 500  # input and backward seed scaled by 2**-500 each
MAX_LOG10_PATHS = (1023 + SCALE_EXPONENT) * math.log10(2.0)  # about 458


@dataclass(frozen=True)
class Connectivity:
    effective_density: float  # kept weights on >= 1 input-to-output path / all masked weights
    effective_units: dict[str, int]  # output units with >= 1 effective incoming weight
    disconnected: bool  # no input-to-output path at all
    log10_paths: float | None  # log10 of the number of paths; None when disconnected
    effective: dict[str, torch.Tensor]  # the effective weights, one bool tensor per mask

    def columns(self) -> dict:
        """The connectivity as the plain values of a table row."""
        return {
            "effective_density": float(self.effective_density),
            "effective_units": {k: int(v) for k, v in self.effective_units.items()},
            "disconnected": bool(self.disconnected),
            "log10_paths": None if self.log10_paths is None else float(self.log10_paths),
        }


def connectivity(
    model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]
) -> Connectivity:
    """Connectivity of ``masks`` on ``model`` for inputs of one sample's ``input_shape``.

    ``masks`` maps Conv/Linear weight names (as ``model.named_parameters`` gives them) to 0/1
    or bool tensors; weights without a mask count as dense, and bias masks are ignored (a bias
    starts no path from the input). ``model`` is not touched.
    """
    net = ScoringNet(model)
    weights = [n for n in masks if n in net.layers]
    unknown = sorted(n for n in masks if n not in net.layers and not n.endswith("bias"))
    if unknown or not weights:
        raise ValueError(
            f"masks name {unknown or 'no prunable weight'}; allowed: Conv/Linear weights "
            f"{net.names}"
        )
    leaves = {}
    for n in net.names:
        p = net.params[n]
        if n in masks:
            if tuple(masks[n].shape) != tuple(p.shape):
                raise ValueError(
                    f"mask {n!r} has shape {tuple(masks[n].shape)}; the weight has {tuple(p.shape)}"
                )
            leaf = (masks[n].to(net.device) != 0).to(torch.float64)
        else:
            leaf = torch.ones(p.shape, dtype=torch.float64, device=net.device)
        leaves[n] = leaf.requires_grad_(True)
    scale = 2.0**-SCALE_EXPONENT
    x = torch.full((1, *input_shape), scale, dtype=torch.float64, device=net.device)
    with torch.enable_grad(), Relus("linear", track_peak=False), SumPools():
        out = net(x, net.path_state("unit", leaves))
        total = out.sum()
        seed = torch.full_like(total, scale)
        grads = torch.autograd.grad(total, list(leaves.values()), seed, allow_unused=True)
    total = float(total.detach())
    if not math.isfinite(total) or any(
        g is not None and not bool(torch.isfinite(g).all()) for g in grads
    ):
        raise ValueError(
            f"the path count of {type(model).__name__} exceeds 1e{MAX_LOG10_PATHS:.0f}, "
            "beyond what a float64 pass scaled by 2**-500 can hold"
        )
    through = dict(zip(net.names, grads, strict=True))
    effective = {}
    for n in weights:
        g = through[n]
        kept = leaves[n].detach() > 0
        effective[n] = (kept & (g > 0)) if g is not None else torch.zeros_like(kept)
    kept_total = sum(int(e.sum()) for e in effective.values())
    size = sum(e.numel() for e in effective.values())
    disconnected = total <= 0.0
    return Connectivity(
        effective_density=kept_total / size,
        effective_units={
            n: int(e.reshape(e.shape[0], -1).any(1).sum()) for n, e in effective.items()
        },
        disconnected=disconnected,
        log10_paths=None if disconnected else math.log10(total) + SCALE_EXPONENT * math.log10(2.0),
        effective={n: e.cpu() for n, e in effective.items()},
    )


def _arguments(args, kwargs, names: Sequence[str], defaults: Mapping[str, object]) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args, strict=False))
    bound.update(kwargs or {})
    return bound


_MAX_POOLS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}
_AVG_POOLS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_ADAPTIVE = {
    F.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2,
    F.adaptive_max_pool3d: 3,
}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding")


class SumPools(TorchFunctionMode):
    """Max and average pools sum their windows, so a path network counts paths through them.

    A max pool on a path network would send the gradient to one input of each window and hide
    the paths through the others. Adaptive pools sum when the input divides into equal bins
    (global pooling always does); otherwise they average, which still keeps every path.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MAX_POOLS:
            a = _arguments(
                args, kwargs, (*_POOL_ARGS, "dilation", "ceil_mode", "return_indices"), {}
            )
            if a.get("return_indices"):
                raise ValueError("a max pool returning indices has no path-network counterpart")
            dilation = a.get("dilation", 1)
            if any(d != 1 for d in ([dilation] if isinstance(dilation, int) else dilation)):
                raise ValueError(f"a dilated max pool (dilation {dilation}) is not supported")
            return _sum_pool(_MAX_POOLS[func], a)
        if func in _AVG_POOLS:
            return _sum_pool(_AVG_POOLS[func], _arguments(args, kwargs, _POOL_ARGS, {}))
        if func in _ADAPTIVE:
            a = _arguments(args, kwargs, ("input", "output_size"), {})
            x, dims = a["input"], _ADAPTIVE[func]
            size = a["output_size"]
            size = [size] * dims if isinstance(size, int) or size is None else list(size)
            spatial = list(x.shape[-dims:])
            size = [s if o is None else o for s, o in zip(spatial, size, strict=True)]
            pooled = getattr(F, f"adaptive_avg_pool{dims}d")(x, size)
            if all(s % o == 0 for s, o in zip(spatial, size, strict=True)):
                pooled = pooled * math.prod(s // o for s, o in zip(spatial, size, strict=True))
            return pooled
        return func(*args, **kwargs)


def _sum_pool(dims: int, a: dict) -> torch.Tensor:
    x, kernel = a["input"], a["kernel_size"]
    stride = a.get("stride") or kernel
    padding, ceil_mode = a.get("padding", 0), bool(a.get("ceil_mode", False))
    if dims == 1:  # avg_pool1d has no divisor_override: scale by the window instead
        k = kernel if isinstance(kernel, int) else kernel[0]
        return F.avg_pool1d(x, kernel, stride, padding, ceil_mode, True) * k
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    return pool(x, kernel, stride, padding, ceil_mode, True, 1)
