"""Pellegrini & Biroli's fully connected net, whose dense layers carry their masks.

A mask acts twice: the forward pass multiplies each prunable tensor by its mask (so a pruned
weight gets no gradient), and ``apply_masks`` zeroes the stored weights (so a rewound or
loaded state cannot revive one).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotterylab.platform.schema import Strict

FIRST_LAYER = "layers.0.weight"


class FCNModel(Strict):
    """Pellegrini & Biroli's fully connected net: [batch norm →] dense → ReLU, then dense."""

    name: Literal["fcn"] = Field("fcn", description="model name in the registry")
    hidden: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = Field(
        [1024, 1024], description="widths of the hidden layers"
    )
    batch_norm: bool = Field(True, description="batch norm on the input of every dense layer")
    init: Literal["glorot_normal", "glorot_uniform"] = Field(
        "glorot_normal", description="initialisation of the dense weights (biases start at 0)"
    )
    bias: bool = Field(True, description="whether dense layers have biases")


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
        x = x.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if self.norms is not None:
                x = self.norms[i](x)
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x

    def first_layer_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the first dense layer sees in eval mode: the input batch norm's running stats.

        Kurtosis and cavity scores are functions of these inputs; the module's mode and
        statistics are left untouched.
        """
        x = x.flatten(1)
        if self.norms is None:
            return x
        norm = self.norms[0]
        return F.batch_norm(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )


def glorot_(weight: torch.Tensor, kind: str, generator: torch.Generator) -> None:
    """Glorot init from an explicit generator, so a seed fixes the weights whatever else ran."""
    fan_out, fan_in = weight.shape
    with torch.no_grad():
        if kind == "glorot_normal":
            weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        elif kind == "glorot_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"init {kind!r} is not one of 'glorot_normal', 'glorot_uniform'")


def build_fcn(
    spec: FCNModel, image_shape: tuple[int, int, int], num_classes: int, seed: int
) -> FCN:
    """A freshly initialised FCN; the same seed gives the same weights on any machine."""
    input_dim = math.prod(image_shape)
    model = FCN(input_dim, list(spec.hidden), num_classes, spec.batch_norm, spec.bias)
    generator = torch.Generator().manual_seed(seed)
    for layer in model.layers:
        glorot_(layer.weight, spec.init, generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return model
