"""Networks whose prunable tensors carry their masks, so a pruned weight stays exactly zero.

A mask acts twice: the forward pass multiplies each prunable tensor by its mask (so a pruned
weight gets no gradient), and ``apply_masks`` zeroes the stored weights (so a rewound or
loaded state cannot revive one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lotterylab.platform.spec import FCNModel

FIRST_LAYER = "layers.0.weight"


class MaskedLinear(nn.Linear):
    """A linear layer with boolean ``weight_mask`` / ``bias_mask`` buffers (all ones = dense)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool))
        if bias:
            self.register_buffer("bias_mask", torch.ones_like(self.bias, dtype=torch.bool))
        else:
            self.bias_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.bias_mask
        return F.linear(x, self.weight * self.weight_mask, bias)


class FCN(nn.Module):
    """Pellegrini & Biroli's FCN: [batch norm →] dense → ReLU per hidden layer, then dense."""

    def __init__(
        self,
        input_dim: int,
        hidden: list[int],
        num_classes: int,
        batch_norm: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        dims = [input_dim, *hidden, num_classes]
        self.layers = nn.ModuleList(
            MaskedLinear(d_in, d_out, bias=bias)
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(d) for d in dims[:-1]) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if self.norms is not None:
                x = self.norms[i](x)
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


def glorot_(weight: torch.Tensor, kind: str, generator: torch.Generator) -> None:
    fan_out, fan_in = weight.shape
    with torch.no_grad():
        if kind == "glorot_normal":
            weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        elif kind == "glorot_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"init {kind!r} is not one of 'glorot_normal', 'glorot_uniform'")


def build_model(spec: FCNModel, input_dim: int, num_classes: int, seed: int) -> FCN:
    """A freshly initialised model; the same seed gives the same weights on any machine."""
    model = FCN(input_dim, list(spec.hidden), num_classes, spec.batch_norm, spec.bias)
    generator = torch.Generator().manual_seed(seed)
    for layer in model.layers:
        glorot_(layer.weight, spec.init, generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return model


def prunable_names(model: FCN, prune_biases: bool, prune_output: bool) -> list[str]:
    """Names (as in ``named_parameters``) of the tensors that pruning may remove weights from."""
    names = []
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        if i == last and not prune_output:
            continue
        names.append(f"layers.{i}.weight")
        if prune_biases and layer.bias is not None:
            names.append(f"layers.{i}.bias")
    return names


def apply_masks(model: FCN, masks: Mapping[str, torch.Tensor]) -> None:
    """Install masks (missing names become dense) and zero the pruned stored weights."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for kind in ("weight", "bias"):
                param = getattr(layer, kind)
                if param is None:
                    continue
                name = f"layers.{i}.{kind}"
                mask = masks.get(name)
                mask = torch.ones_like(param, dtype=torch.bool) if mask is None else mask.bool()
                if mask.shape != param.shape:
                    raise ValueError(
                        f"mask for {name} has shape {tuple(mask.shape)}, "
                        f"the tensor has {tuple(param.shape)}"
                    )
                getattr(layer, f"{kind}_mask").copy_(mask)
                params[name].mul_(mask)
