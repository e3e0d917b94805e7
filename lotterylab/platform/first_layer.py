"""Paper 1's first-layer measurements, defined once for every caller.

IMP lineages, PaI runs and the analysis units all measure a dense first layer on pixels the
same way: its inputs are what the layer sees in eval mode on the first training images, and its
mask and pre-activations become the same row columns (RF widths, kurtosis) wherever they are
written. Models declare the capability (``ModelEntry.dense_first_layer``) and implement
``first_layer_inputs(x)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.metrics import PreactivationKurtosis, rf_width_summary

RF_WIDTH_COLUMNS = (
    "rf_width_median",
    "rf_width_mean",
    "rf_width_y_median",
    "rf_width_y_mean",
    "rf_width_cross_median",
    "rf_width_cross_mean",
    "empty_units",
)
KURTOSIS_COLUMNS = ("kurtosis_mean", "kurtosis_all_mean", "kurtosis_median")


def first_layer_inputs(
    model: nn.Module, data: ImageDataset, count: int, device: torch.device
) -> torch.Tensor:
    """The first layer's inputs on the first ``count`` training images, the model in eval mode.

    The weights and batch-norm statistics of ``model`` fix them; the model is left in eval mode
    on ``device``.
    """
    model = model.to(device).eval()
    x = data.batch("train", torch.arange(min(count, data.size("train")))).to(device)
    with torch.no_grad():
        return model.first_layer_inputs(x)


def rf_width_columns(mask: torch.Tensor | None, image_shape: tuple[int, int, int]) -> dict:
    """The RF-width row columns of a first-layer mask; all null without one."""
    row = dict.fromkeys(RF_WIDTH_COLUMNS)
    if mask is None:
        return row
    same = rf_width_summary(mask, image_shape)
    row.update(
        rf_width_median=finite_or_none(same.median_x),
        rf_width_mean=finite_or_none(same.mean_x),
        rf_width_y_median=finite_or_none(same.median_y),
        rf_width_y_mean=finite_or_none(same.mean_y),
        empty_units=same.empty_units,
    )
    if image_shape[0] > 1:
        cross = rf_width_summary(mask, image_shape, "all")
        row.update(
            rf_width_cross_median=finite_or_none(cross.median_x),
            rf_width_cross_mean=finite_or_none(cross.mean_x),
        )
    return row


def kurtosis_columns(kurtosis: PreactivationKurtosis) -> dict:
    """Mean over units and classes, and mean and median over units of all inputs pooled."""
    overall = kurtosis.overall[kurtosis.overall.isfinite()].cpu()
    return {
        "kurtosis_mean": None if kurtosis.per_class is None else finite_or_none(kurtosis.mean),
        "kurtosis_all_mean": finite_or_none(overall.mean()) if len(overall) else None,
        "kurtosis_median": finite_or_none(overall.median()) if len(overall) else None,
    }


def finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
