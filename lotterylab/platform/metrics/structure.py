"""What a mask leaves of a network's paths and compute, as the columns of a mask's row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lotterylab.platform.metrics.connectivity import connectivity
from lotterylab.platform.metrics.flops import count_macs

STRUCTURE_COLUMNS = (
    "effective_density",
    "effective_units",
    "disconnected",
    "log10_paths",
    "macs",
    "dense_macs",
)


def structure_columns(
    model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]
) -> dict:
    """Connectivity (effective density and units, disconnection, log10 paths) and MACs."""
    weights = {n: m for n, m in masks.items() if not n.endswith("bias")}
    return {
        **connectivity(model, weights, input_shape).columns(),
        **count_macs(model, weights, input_shape).columns(),
    }
