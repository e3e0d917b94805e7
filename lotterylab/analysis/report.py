"""An experiment's report (figures and a Markdown summary), written back into its store so it
sits next to the results on any fsspec URI, local disk or object store alike."""

from __future__ import annotations

import io
import math
import posixpath
from collections.abc import Callable
from typing import Any

import pandas as pd

from lotterylab.analysis.aggregate import aggregate_over_seeds
from lotterylab.analysis.figures import (
    MaskPanel,
    ordered_methods,
    plot_accuracy_vs_sparsity,
    plot_first_layer_masks,
    plot_rf_width_vs_sparsity,
)
from lotterylab.analysis.tables import load_rounds
from lotterylab.platform.masks import mask_after_round
from lotterylab.platform.store import ExperimentStore

FIGURES = "figures"
SUMMARY_VALUES = ("rf_width_median", "test_accuracy")
MISSING = "—"


def write_report(store: ExperimentStore) -> list[str]:
    """Write the three figures and ``summary.md`` under ``figures/``; return their URIs."""
    rounds = load_rounds(store)
    if rounds.empty:
        raise ValueError(f"no results in {store.uri}: has the experiment run?")
    summary = aggregate_over_seeds(rounds, SUMMARY_VALUES)
    panels = first_layer_mask_panels(store, rounds)
    return [
        write_png(store, "rf_width_vs_sparsity.png", plot_rf_width_vs_sparsity, summary),
        write_png(store, "accuracy_vs_sparsity.png", plot_accuracy_vs_sparsity, summary),
        write_png(store, "first_layer_masks.png", plot_first_layer_masks, panels),
        write_figure_file(store, "summary.md", summary_markdown(store, rounds, summary).encode()),
    ]


def write_figure_file(store: ExperimentStore, name: str, data: bytes) -> str:
    rel = posixpath.join(FIGURES, name)
    store.write_bytes(rel, data)
    return store.url(rel)


def write_png(
    store: ExperimentStore, name: str, plot: Callable[[Any, io.BytesIO], None], data: Any
) -> str:
    buffer = io.BytesIO()
    plot(data, buffer)
    return write_figure_file(store, name, buffer.getvalue())


# -- masks -----------------------------------------------------------------------------------
def lowest_seed_lineages(rounds: pd.DataFrame) -> list[str]:
    """Per data set, the lineage with the lowest seed: the one whose masks are shown."""
    lineages = rounds.sort_values(["dataset", "seed", "lineage_id"]).drop_duplicates("dataset")
    return lineages["lineage_id"].tolist()


def first_layer_mask_panels(store: ExperimentStore, rounds: pd.DataFrame) -> list[MaskPanel]:
    """First-layer masks in force at each shown lineage's last round, per method.

    Lineages or methods whose files are not written yet are left out; an unfinished or corrupt
    file still raises ``StoreError``.
    """
    panels = []
    for lineage_id in lowest_seed_lineages(rounds):
        lineage_file = f"lineages/{lineage_id}/lineage.json"
        if not store.exists(lineage_file):
            continue
        lineage = store.read_json(lineage_file)
        for method in ordered_methods(lineage["methods"]):
            masks_file = f"lineages/{lineage_id}/masks/{method}.pt"
            if store.exists(masks_file):
                panels.append(mask_panel(lineage, method, store.read_tensors(masks_file)))
    return panels


def mask_panel(lineage: dict, method: str, removal_rounds: dict) -> MaskPanel:
    last_round = lineage["last_round"]
    removal_round = removal_rounds[lineage["first_layer"]]
    return MaskPanel(
        dataset=lineage["dataset"],
        method=method,
        seed=lineage["seed"],
        round=last_round,
        image_shape=tuple(lineage["image_shape"]),
        mask=mask_after_round(removal_round, last_round - 1),  # the mask round last_round used
    )


# -- summary.md ------------------------------------------------------------------------------
SUMMARY_COLUMNS = (
    "method",
    "round",
    "sparsity",
    "first-layer sparsity",
    "RF width median (px)",
    "test accuracy",
    "seeds",
)


def summary_markdown(store: ExperimentStore, rounds: pd.DataFrame, summary: pd.DataFrame) -> str:
    datasets = sorted(summary["dataset"].unique())
    lines = [
        f"# Experiment `{store.name}`",
        "",
        f"{rounds['lineage_id'].nunique()} lineages on {', '.join(datasets)}; "
        f"results at `{store.uri}`.",
        "Values are the mean over seeds ± std (ddof=0); RF widths give the min–max over seeds "
        "in brackets.",
        "",
    ]
    for dataset in datasets:
        lines += dataset_table(dataset, summary[summary["dataset"] == dataset])
    return "\n".join(lines)


def dataset_table(dataset: str, rows: pd.DataFrame) -> list[str]:
    lines = [
        f"## {dataset}",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for method in ordered_methods(rows["method"].unique()):
        for row in rows[rows["method"] == method].sort_values("round").to_dict("records"):
            lines.append(summary_row(row))
    return lines + [""]


def summary_row(row: dict) -> str:
    cells = (
        row["method"],
        str(row["round"]),
        percent(row["sparsity_mean"]),
        percent(row["sparsity_first_layer_mean"]),
        spread(row, "rf_width_median", digits=2, with_range=True),
        spread(row, "test_accuracy", digits=3, with_range=False),
        str(row["n_seeds"]),
    )
    return "| " + " | ".join(cells) + " |"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def spread(row: dict, column: str, digits: int, with_range: bool) -> str:
    """``mean ± std`` and optionally ``(min–max)``; a dash when no seed has a value."""
    mean = row[f"{column}_mean"]
    if math.isnan(mean):
        return MISSING
    text = f"{mean:.{digits}f} ± {row[f'{column}_std']:.{digits}f}"
    if with_range:
        text += f" ({row[f'{column}_min']:.{digits}f}–{row[f'{column}_max']:.{digits}f})"
    return text
