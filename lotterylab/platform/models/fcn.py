"""Pellegrini & Biroli's fully connected net, built from stock layers.

Masks live outside the model, as for every other architecture: ``apply_masks`` zeroes the
pruned stored weights and the training loop zeroes them again after each optimiser step. A
forward-pass multiply by a mask buffer would cost two extra passes over every weight per step
(forward and backward) and change nothing: a weight that is zero before a step gets a gradient
but is zeroed again after it, and the unpruned weights see the same forward pass.
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
            nn.Linear(d_in, d_out, bias=bias)
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(d) for d in dims[:-1]) if batch_norm else None
        self.register_load_state_dict_pre_hook(_drop_mask_buffers)

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


def _drop_mask_buffers(module, state_dict, prefix, *args) -> None:
    """States saved when the dense layers carried ``weight_mask`` buffers still load; a model
    that carries them now (``torch.nn.utils.prune``) keeps its own."""
    own = set(module.state_dict(prefix=prefix))
    for key in [k for k in state_dict if k.endswith(("weight_mask", "bias_mask")) and k not in own]:
        del state_dict[key]


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
