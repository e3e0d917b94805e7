"""Fixed-weight NTK spectra of PaI masks against the dense net they were pruned from (paper 2,
Fig. 5), read back from what ``lotterylab analyze --what ntk`` stored.

One figure per density: a panel per method (with ``T=k`` and the branch where they vary), the
distribution of log10 eigenvalues of Θ over the seeds' runs as a line, that of the dense net at
the same initialisations and on the same inputs filled grey behind it. A method that keeps the
NTK of the dense net lies on top of the grey; eigenvalues at rounding level (rank deficit) are
left out of the histogram and counted in the panel's title.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lotterylab.analysis.figures import Output, ordered_methods, save_png, series_styles
from lotterylab.analysis.paper2 import sparsity_label, with_series
from lotterylab.platform.post_run import DENSE, NTK, eigen_rank
from lotterylab.platform.store.experiment_store import ExperimentStore

NTK_TABLE = f"analysis_{NTK}"
FIGURES = "figures"
BINS = 40
PANELS_PER_ROW = 4


def ntk_rows(store: ExperimentStore) -> pd.DataFrame:
    """The NTK table: a row per (run or dense net, N samples), spectra named in ``artifact``."""
    return store.read_table(NTK_TABLE).to_pandas()


def eigenvalues(store: ExperimentStore, artifact: str) -> np.ndarray:
    return store.read_tensors(artifact)["eigenvalues"].numpy()


@dataclass(frozen=True)
class SpectrumPanel:
    """One method's spectra (one array per seed) and the dense net's at the same seeds."""

    model: str
    dataset: str
    samples: int
    density: float
    series: str
    spectra: list[np.ndarray]
    dense: list[np.ndarray]


def spectrum_panels(
    store: ExperimentStore, rows: pd.DataFrame | None = None
) -> list[SpectrumPanel]:
    """Every (model, data set, N, density, series) with spectra, each with its dense reference."""
    rows = ntk_rows(store) if rows is None else rows
    if rows.empty:
        return []
    runs = rows[rows["source"] != DENSE].reset_index(drop=True)
    runs = with_series(runs.assign(rounds=runs["rounds"].astype("int64")))
    dense = rows[rows["source"] == DENSE]
    panels = []
    keys = ["model", "dataset", "samples", "density", "series"]
    for (model, dataset, samples, density, series), group in runs.groupby(keys, sort=True):
        reference = dense[
            (dense["model"] == model)
            & (dense["dataset"] == dataset)
            & (dense["samples"] == samples)
            & dense["seed"].isin(group["seed"])
            & dense["init"].isin(group["init"])
        ]
        panels.append(
            SpectrumPanel(
                model=model,
                dataset=dataset,
                samples=int(samples),
                density=float(density),
                series=series,
                spectra=[eigenvalues(store, a) for a in group["artifact"]],
                dense=[eigenvalues(store, a) for a in reference["artifact"]],
            )
        )
    return panels


def log_spectrum(spectra: Sequence[np.ndarray]) -> tuple[np.ndarray, int, int]:
    """log10 of the eigenvalues above rounding, pooled; and the pooled rank and size."""
    values, rank, size = [], 0, 0
    for spectrum in spectra:
        r = eigen_rank(torch.from_numpy(spectrum))
        ordered = np.sort(spectrum)[::-1]
        values.append(np.log10(ordered[:r]))
        rank, size = rank + r, size + len(spectrum)
    pooled = np.concatenate(values) if values else np.zeros(0)
    return pooled, rank, size


def plot_ntk_spectra(panels: Sequence[SpectrumPanel], out: Output) -> None:
    """Panels of one density: each method's eigenvalue distribution over the dense net's."""
    columns = min(PANELS_PER_ROW, max(len(panels), 1))
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(3.4 * columns, 2.8 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    logs = [log_spectrum(p.spectra)[0] for p in panels] + [log_spectrum(p.dense)[0] for p in panels]
    pooled = np.concatenate(logs) if logs else np.zeros(0)
    low, high = (pooled.min(), pooled.max()) if len(pooled) else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
    labels = [p.series for p in panels]
    styles = series_styles(labels)
    order = {label: i for i, label in enumerate(ordered_methods(labels))}
    for ax, panel in zip(axes, sorted(panels, key=lambda p: order[p.series]), strict=False):
        dense, dense_rank, dense_size = log_spectrum(panel.dense)
        values, rank, size = log_spectrum(panel.spectra)
        if len(dense):
            ax.hist(dense, bins=bins, density=True, color="0.75", label="dense")
        if len(values):
            ax.hist(
                values,
                bins=bins,
                density=True,
                histtype="step",
                linewidth=1.5,
                color=styles[panel.series]["color"],
                label=panel.series,
            )
        title = f"{panel.series}: rank {rank}/{size}"
        if dense_size:
            title += f" (dense {dense_rank}/{dense_size})"
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("log10 eigenvalue of Θ")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if panels:
        first = panels[0]
        figure.suptitle(
            f"Fixed-weight NTK spectrum · {first.model} · {first.dataset} · sparsity "
            f"{sparsity_label(first.density)} · N = {first.samples} inputs, at initialisation",
            fontsize="medium",
        )
    else:
        figure.text(0.5, 0.5, "no NTK spectra stored", ha="center", va="center")
    save_png(figure, out)


def figure_name(model: str, dataset: str, samples: int, density: float) -> str:
    return f"ntk_spectrum_{model}_{dataset}_n{samples}_d{density:.4g}.png"


def write_ntk_figures(store: ExperimentStore) -> list[str]:
    """One figure per (model, data set, N, density) under ``figures/``; their URIs."""
    panels = spectrum_panels(store)
    groups: dict[tuple, list[SpectrumPanel]] = {}
    for panel in panels:
        key = (panel.model, panel.dataset, panel.samples, panel.density)
        groups.setdefault(key, []).append(panel)
    written = []
    for key, group in sorted(groups.items()):
        buffer = io.BytesIO()
        plot_ntk_spectra(group, buffer)
        rel = f"{FIGURES}/{figure_name(*key)}"
        store.write_bytes(rel, buffer.getvalue())
        written.append(store.url(rel))
    return written
