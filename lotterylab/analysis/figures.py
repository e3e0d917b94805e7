"""The paper's figures: do IMP's first-layer masks become local, more than oneshot / random,
and on non-Gaussian data (nlgp) but not on its Gaussian clone?

Figures are drawn on Agg canvases without pyplot, so nothing needs a display and no global
state is left behind; each function writes one PNG to a path or a binary file object.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# paper 1's methods, then paper 2's in its order (single-shot, then iterative)
METHOD_ORDER = (
    "imp",
    "oneshot",
    "random",
    "cavity",
    "magnitude",
    "snip",
    "grasp",
    "synflow",
    "synflow_l2",
    "ntksap",
    "px",
    "px_literal",
)
METHOD_COLOURS = {
    "imp": "black",
    "oneshot": "tab:blue",
    "random": "tab:red",
    "cavity": "tab:green",
    "magnitude": "tab:orange",
    "snip": "tab:purple",
    "grasp": "tab:brown",
    "synflow": "tab:pink",
    "synflow_l2": "tab:olive",
    "ntksap": "tab:cyan",
    "px": "tab:green",
    "px_literal": "darkgreen",
}
# unknown methods draw from a palette by a stable hash of their name: same method, same colour
EXTRA_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
LINESTYLES = ("-", "--", ":", "-.")
UNITS_PER_ROW = 8
DPI = 120

Output = str | BinaryIO


@dataclass(frozen=True)
class MaskPanel:
    """One row of the mask figure: a first-layer mask (H, C*Np*Np) of one lineage and method."""

    dataset: str
    method: str
    seed: int
    round: int
    image_shape: tuple[int, int, int]
    mask: torch.Tensor

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.mask.float().mean())


def base_method(label: str) -> str:
    """The method of a series label ``[<experiment>/]<method>[ T=k][ (branch)]``."""
    return re.split(r"[\s(]", label.rsplit("/", 1)[-1], maxsplit=1)[0]


def method_colour(label: str) -> str:
    method = base_method(label)
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return EXTRA_COLOURS[zlib.crc32(method.encode()) % len(EXTRA_COLOURS)]


def ordered_methods(methods: Sequence[str]) -> list[str]:
    """The known methods in the paper's order, then any others alphabetically.

    Labels ``<experiment>/<method>`` sort by experiment, then by their method in that order.
    """
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}

    def key(label: str) -> tuple:
        prefix = label.rsplit("/", 1)[0] if "/" in label else ""
        method = base_method(label)
        return (prefix, rank.get(method, len(rank)), method, label)

    return sorted(set(methods), key=key)


def series_styles(labels: Sequence[str]) -> dict[str, dict]:
    """Colour by method; series sharing a method (experiments, T, branches) differ in dashes."""
    styles, used = {}, {}
    for label in ordered_methods(labels):
        method = base_method(label)
        index = used.get(method, 0)
        used[method] = index + 1
        styles[label] = {
            "color": method_colour(label),
            "linestyle": LINESTYLES[index % len(LINESTYLES)],
        }
    return styles


def save_png(figure: Figure, out: Output) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(out, format="png", dpi=DPI)


# -- metric vs sparsity ----------------------------------------------------------------------
def plot_method_lines(ax: Axes, rows: pd.DataFrame, metric: str, sparsity: str) -> None:
    """Mean over seeds with its 95 % interval as a band, one line per method with a value."""
    styles = series_styles(rows["method"].unique())
    for method, style in styles.items():
        line = rows[rows["method"] == method].sort_values(sparsity)
        line = line[line[f"{metric}_mean"].notna()]
        if line.empty:
            continue
        x = 100.0 * line[sparsity]
        ax.plot(x, line[f"{metric}_mean"], marker="o", ms=3, label=method, **style)
        ax.fill_between(
            x, line[f"{metric}_ci_low"], line[f"{metric}_ci_high"], color=style["color"], alpha=0.2
        )


def plot_metric_vs_sparsity(
    summary: pd.DataFrame, metric: str, sparsity: str, xlabel: str, ylabel: str, out: Output
) -> None:
    """One panel per data set side by side, sharing the y axis."""
    datasets = sorted(summary["dataset"].unique())
    figure = Figure(figsize=(4.5 * max(len(datasets), 1), 3.8), layout="constrained")
    axes = figure.subplots(1, max(len(datasets), 1), sharey=True, squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=False):
        plot_method_lines(ax, summary[summary["dataset"] == dataset], metric, sparsity)
        ax.set_title(dataset)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_ylabel(ylabel)
    save_png(figure, out)


def plot_rf_width_vs_sparsity(summary: pd.DataFrame, out: Output) -> None:
    """Median receptive-field width of first-layer units against first-layer sparsity."""
    plot_metric_vs_sparsity(
        summary,
        metric="rf_width_median",
        sparsity="sparsity_first_layer_mean",
        xlabel="first-layer sparsity (%)",
        ylabel="RF width, median over units (px)",
        out=out,
    )


def plot_accuracy_vs_sparsity(summary: pd.DataFrame, out: Output) -> None:
    """Test accuracy against overall sparsity; methods never evaluated are left out."""
    plot_metric_vs_sparsity(
        summary,
        metric="test_accuracy",
        sparsity="sparsity_mean",
        xlabel="sparsity (%)",
        ylabel="test accuracy",
        out=out,
    )


# -- first-layer masks -----------------------------------------------------------------------
def units_with_most_weights(mask: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` units (rows) with the most surviving inputs, ties by index."""
    alive = mask.reshape(mask.shape[0], -1).sum(dim=1)
    order = torch.argsort(alive, descending=True, stable=True)
    return order[:count].tolist()


def unit_image(unit_mask: torch.Tensor, image_shape: Sequence[int]) -> np.ndarray:
    """A unit's surviving inputs as an image: (Np, Np) for one channel, else RGB (Np, Np, 3)
    with each surviving input lit in its channel's colour (channel 0 red, 1 green, 2 blue)."""
    channels, height, width = image_shape
    if channels > 3:
        raise ValueError(f"cannot colour {channels} input channels (at most 3)")
    planes = unit_mask.reshape(channels, height, width).to(torch.float32).numpy()
    if channels == 1:
        return planes[0]
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    rgb[:, :, :channels] = planes.transpose(1, 2, 0)
    return rgb


def draw_mask_row(figure: Figure, panel: MaskPanel) -> None:
    units = units_with_most_weights(panel.mask, UNITS_PER_ROW)
    axes = figure.subplots(1, UNITS_PER_ROW, squeeze=False)[0]
    for ax in axes[len(units) :]:
        ax.set_axis_off()
    for ax, unit in zip(axes, units, strict=False):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(unit_image(panel.mask[unit], panel.image_shape), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"unit {unit} ({int(panel.mask[unit].sum())})", fontsize="x-small")
    figure.suptitle(
        f"{panel.dataset} · {panel.method} · seed {panel.seed} · round {panel.round} · "
        f"first-layer sparsity {100 * panel.sparsity:.1f}%",
        fontsize="small",
    )


def plot_first_layer_masks(panels: Sequence[MaskPanel], out: Output) -> None:
    """One row per (data set, method): the units with the most surviving first-layer weights."""
    figure = Figure(figsize=(1.3 * UNITS_PER_ROW, 1.8 * max(len(panels), 1)), layout="constrained")
    if not panels:
        figure.text(0.5, 0.5, "no finished first-layer masks", ha="center", va="center")
    else:
        subfigures = figure.subfigures(len(panels), 1, squeeze=False)[:, 0]
        for subfigure, panel in zip(subfigures, panels, strict=True):
            draw_mask_row(subfigure, panel)
    save_png(figure, out)
