"""Multiply-accumulates of a masked network for one input, dense and with the mask.

A Conv/Linear layer does one MAC per weight and output position: a conv output channel's MACs
scale with its kept kernel weights, a linear unit's with its kept inputs. Output positions are
recorded by forward hooks during one pass of the model's private copy on a zero input of the
model's input size, so any module of standard layers is counted, whatever its forward does
between layers; a layer called twice counts twice. Biases, norms, activations and pools are not
counted, as Synaptic-Flow and ShrinkBench count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lotterylab.platform.pruning.network import ScoringNet


@dataclass(frozen=True)
class MACs:
    dense: dict[str, int]  # per Conv/Linear weight, every weight kept
    masked: dict[str, int]  # per Conv/Linear weight, the mask's kept weights only
    dense_total: int
    masked_total: int

    def columns(self) -> dict:
        """The totals as the plain values of a table row."""
        return {"macs": int(self.masked_total), "dense_macs": int(self.dense_total)}


def count_macs(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    input_shape: Sequence[int],
) -> MACs:
    """MACs of one sample of ``input_shape`` (C, H, W or a flat width); weights without a mask
    count as dense. ``model`` is not touched."""
    net = ScoringNet(model)
    masks = dict(masks or {})
    unknown = sorted(n for n in masks if n not in net.layers and not n.endswith("bias"))
    if unknown:
        raise ValueError(f"masks name {unknown}; allowed: Conv/Linear weights {net.names}")
    positions = dict.fromkeys(net.names, 0)
    hooks = []
    for name, layer in net.layers.items():

        def record(module, inputs, output, name=name):
            # positions per sample: every output entry of one output unit
            per_unit = output.shape[2:] if not isinstance(module, nn.Linear) else output.shape[1:-1]
            positions[name] += math.prod(per_unit)

        hooks.append(layer.register_forward_hook(record))
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape), dtype=net.dtype, device=net.device))
    finally:
        for hook in hooks:
            hook.remove()
    dense, masked = {}, {}
    for name in net.names:
        weight = net.params[name]
        kept = int((masks[name] != 0).sum()) if name in masks else weight.numel()
        dense[name] = positions[name] * weight.numel()
        masked[name] = positions[name] * kept
    return MACs(dense, masked, sum(dense.values()), sum(masked.values()))
