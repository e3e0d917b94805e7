"""Paper 1 (IMP discovers local receptive fields), Figs. 1–5, drawn from an experiment's store.

Each ``*_section`` function turns tables (and, for the image figures, artifacts) into one PNG and
the numbers behind it; when the store lacks what a figure needs, the section says so instead.
The ``plot_*`` functions draw on Agg canvases and take plain data, so they can be reused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lotterylab.analysis.aggregate import aggregate_over_seeds, seed_stats
from lotterylab.analysis.experiment import Experiment, MissingArtifactError
from lotterylab.analysis.figures import (
    UNITS_PER_ROW,
    MaskPanel,
    Output,
    draw_mask_row,
    method_colour,
    ordered_methods,
    plot_accuracy_vs_sparsity,
    plot_first_layer_masks,
    plot_method_lines,
    plot_rf_width_vs_sparsity,
    save_png,
    series_styles,
    units_with_most_weights,
)
from lotterylab.analysis.markdown import MISSING, mean_range, number, percent, spread, table
from lotterylab.analysis.sections import Section
from lotterylab.analysis.stats import comparison_sentence, pairwise_comparisons
from lotterylab.platform.imp.lineage import IMP
from lotterylab.platform.imp.masks import mask_after_round

EXAMPLES_PER_ROW = 8
COMPONENTS_SHOWN = 16
KEPT = "kept"  # removal-round group of weights never removed


# -- shared selections -----------------------------------------------------------------------
def lowest_seed_lineages(rounds: pd.DataFrame) -> list[str]:
    """Per data set, the lineage with the lowest seed: the one whose masks are shown."""
    lineages = rounds.sort_values(["dataset", "seed", "lineage_id"]).drop_duplicates("dataset")
    return lineages["lineage_id"].tolist()


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


def mask_panels(
    experiment: Experiment, rounds: pd.DataFrame, methods: Sequence[str] | None = None
) -> tuple[list[MaskPanel], list[str]]:
    """First-layer masks at each shown lineage's last round, and notes on what is missing.

    Lineages or methods whose files are not written yet are left out (with a note); a corrupt
    file still raises ``StoreError``.
    """
    panels, notes = [], []
    for lineage_id in lowest_seed_lineages(rounds):
        try:
            lineage = experiment.lineage(lineage_id)
        except MissingArtifactError as exc:
            notes.append(str(exc))
            continue
        if lineage.get("first_layer") is None:
            notes.append(f"lineage {lineage_id}: model {lineage.get('model')!r} has no FCN mask")
            continue
        for method in ordered_methods(lineage["methods"]):
            if methods is not None and method not in methods:
                continue
            try:
                removal_rounds = experiment.removal_rounds(lineage_id, method)
            except MissingArtifactError as exc:
                notes.append(str(exc))
                continue
            panels.append(mask_panel(lineage, method, removal_rounds))
    return panels, notes


def last_round_rows(rounds: pd.DataFrame) -> pd.DataFrame:
    """Rows of the last round that every lineage of a (data set, method) has finished."""
    if rounds.empty:
        return rounds
    reached = rounds.groupby(["dataset", "method", "lineage_id"])["round"].max()
    last = reached.groupby(["dataset", "method"]).min().rename("last_round").reset_index()
    merged = rounds.merge(last, on=["dataset", "method"])
    return merged[merged["round"] == merged["last_round"]].drop(columns="last_round")


def datasets_in_order(rows: pd.DataFrame) -> list[str]:
    return sorted(rows["dataset"].unique())


# -- accuracy and RF width against sparsity (the walking skeleton's figures) ------------------
SUMMARY_VALUES = ("rf_width_median", "test_accuracy")


STRUCTURE_VALUES = ("effective_density", "macs")


def accuracy_sections(rounds: pd.DataFrame) -> list[Section]:
    values = [*SUMMARY_VALUES, *(v for v in STRUCTURE_VALUES if v in rounds)]
    summary = aggregate_over_seeds(rounds, values)
    rf = Section("RF width (median) vs sparsity", "rf_width_vs_sparsity.png")
    rf.draw = lambda out: plot_rf_width_vs_sparsity(summary, out)
    accuracy = Section("Test accuracy vs sparsity", "accuracy_vs_sparsity.png")
    accuracy.draw = lambda out: plot_accuracy_vs_sparsity(summary, out)
    rows = [
        (
            r["dataset"],
            r["method"],
            r["round"],
            percent(r["sparsity_mean"]),
            percent(r.get("effective_density_mean", float("nan")), 2),
            macs_cell(r.get("macs_mean", float("nan"))),
            spread(r, "test_accuracy", 3, with_range=False),
            interval_cell(r, "test_accuracy", 3),
            spread(r, "rf_width_median", 2, with_range=True),
            r["n_seeds"],
        )
        for r in ordered_rows(summary, ["round"])
    ]
    header = (
        "data set",
        "method",
        "round",
        "sparsity",
        "effective density",
        "MACs",
        "test accuracy",
        "95 % interval",
        "RF width median",
        "seeds",
    )
    accuracy.lines = table(header, rows) + sibling_comparison_lines(rounds)
    if summary["test_accuracy_mean"].isna().all():
        accuracy.notes.append("no test accuracy in the rounds table (no method was trained)")
    return [rf, accuracy]


def macs_cell(macs: float) -> str:
    return MISSING if macs is None or macs != macs else f"{macs / 1e6:.3g} M"


def interval_cell(row: dict, column: str, digits: int) -> str:
    low, high = row[f"{column}_ci_low"], row[f"{column}_ci_high"]
    return MISSING if low != low else f"[{low:.{digits}f}, {high:.{digits}f}]"


def sibling_comparison_lines(rounds: pd.DataFrame) -> list[str]:
    """IMP against each sibling at every pruned round: Welch, Holm over the round's pairs."""
    trained = rounds[(rounds["round"] > 0) & rounds["test_accuracy"].notna()]
    if trained.empty or IMP not in set(trained["method"]):
        return []

    def against_imp(labels: list[str]) -> list[tuple[str, str]]:
        return [(IMP, other) for other in labels if other != IMP] if IMP in labels else []

    pairs = pairwise_comparisons(
        trained, "test_accuracy", ["dataset", "round"], "method", against_imp
    )
    if pairs.empty:
        return []
    lines = [
        "IMP against each sibling, test accuracy: difference of means (IMP − sibling) with its "
        "95 % Welch interval; Welch's t-test with Holm's correction over the pairs of the round.",
        "",
    ]
    body, sentences = [], []
    for r in pairs.to_dict("records"):
        where = f"{r['dataset']} round {r['round']}"
        body.append(
            (
                r["dataset"],
                r["round"],
                r["b"],
                number(r["difference"], 4),
                f"[{number(r['low'], 4)}, {number(r['high'], 4)}]",
                number(r["p_holm"], 4),
                "yes" if r["separable"] else "no",
            )
        )
        sentences.append(comparison_sentence(r, where))
    lines += table(
        ("data set", "round", "sibling", "IMP − sibling", "95 % interval", "p (Holm)", "separable"),
        body,
    )
    return lines + ["; ".join(sentences) + ".", ""]


def ordered_rows(summary: pd.DataFrame, then: Sequence[str]) -> list[dict]:
    """Rows by data set, method in the paper's order, then the given columns."""
    out = []
    for dataset in datasets_in_order(summary):
        rows = summary[summary["dataset"] == dataset]
        for method in ordered_methods(rows["method"].unique()):
            out += rows[rows["method"] == method].sort_values(list(then)).to_dict("records")
    return out


# -- Fig. 1: IMP vs oneshot masks --------------------------------------------------------------
def fig1_section(experiment: Experiment, rounds: pd.DataFrame) -> Section:
    section = Section("Fig. 1 — first-layer masks, IMP vs oneshot", "fig1_masks.png")
    panels, notes = mask_panels(experiment, rounds, methods=("imp", "oneshot"))
    section.notes += notes
    if not panels:
        return section.skip("no first-layer IMP or oneshot masks in the store")
    section.draw = lambda out: plot_first_layer_masks(panels, out)
    rows = []
    for p in panels:
        units = units_with_most_weights(p.mask, UNITS_PER_ROW)
        counts = ", ".join(str(int(p.mask[u].sum())) for u in units)
        rows.append((p.dataset, p.method, p.seed, p.round, percent(p.sparsity), counts))
    header = ("data set", "method", "seed", "round", "first-layer sparsity", "surviving inputs")
    section.lines = [
        f"Units with the most surviving weights ({UNITS_PER_ROW} per row), pruned inputs black.",
        "",
        *table(header, rows),
    ]
    return section


def all_masks_section(experiment: Experiment, rounds: pd.DataFrame) -> Section:
    section = Section("First-layer masks of every method", "first_layer_masks.png")
    panels, notes = mask_panels(experiment, rounds)
    section.notes += notes
    section.draw = lambda out: plot_first_layer_masks(panels, out)
    return section


# -- Fig. 2: PCA vs ICA ------------------------------------------------------------------------
def component_image(component: torch.Tensor, image_shape: Sequence[int]) -> np.ndarray:
    """A component as an image in [0, 1], 0.5 at zero, scaled by its largest |value|."""
    channels, height, width = (int(v) for v in image_shape)
    values = component.to(torch.float64).reshape(channels, height, width).numpy()
    scale = float(np.abs(values).max()) or 1.0
    values = 0.5 + 0.5 * values / scale
    if channels == 1:
        return values[0]
    rgb = np.zeros((height, width, 3))
    rgb[:, :, : min(channels, 3)] = values[:3].transpose(1, 2, 0)
    return rgb


def draw_image_grid(figure, images: Sequence[np.ndarray], title: str, columns: int = 4) -> None:
    rows = max(1, -(-len(images) // columns))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, image in zip(axes.flat, images, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for ax in axes.flat[len(images) :]:
        ax.set_axis_off()
    figure.suptitle(title, fontsize="small")


def plot_components(sources: Sequence[tuple[str, dict]], out: Output) -> None:
    """One row per source: FastICA components (left) and PCA components (right)."""
    figure = Figure(figsize=(8, 4.2 * len(sources)), layout="constrained")
    rows = figure.subfigures(len(sources), 2, squeeze=False)
    for (source, comps), (left, right) in zip(sources, rows, strict=True):
        shape = comps["image_shape"].tolist()
        for sub, key in ((left, "ica"), (right, "pca")):
            shown = comps[key][:COMPONENTS_SHOWN]
            images = [component_image(c, shape) for c in shown]
            draw_image_grid(sub, images, f"{source}: {key.upper()} ({len(comps[key])} comp.)")
    save_png(figure, out)


def fig2_section(experiment: Experiment) -> Section:
    section = Section("Fig. 2 — PCA vs FastICA components", "fig2_components.png")
    sources = [(s, experiment.components(s)) for s in experiment.component_sources()]
    if not sources:
        return section.skip("no `data/components/*.pt` in the store (analysis.components unset?)")
    for source, comps in sources:
        for key in ("pca", "ica", "image_shape"):
            if key not in comps:
                raise ValueError(f"data/components/{source}.pt: no {key!r} tensor")
    section.draw = lambda out: plot_components(sources, out)
    rows = [
        (s, len(c["pca"]), len(c["ica"]), "×".join(str(v) for v in c["image_shape"].tolist()))
        for s, c in sources
    ]
    section.lines = table(("source", "PCA components", "ICA components", "image shape"), rows)
    return section


# -- Fig. 3: data vs Gaussian clone ------------------------------------------------------------
def example_image(x: torch.Tensor, image_shape: Sequence[int]) -> np.ndarray:
    """An example image rescaled to [0, 1] (its own min–max), grey or RGB."""
    channels, height, width = (int(v) for v in image_shape)
    values = x.to(torch.float64).reshape(channels, height, width).numpy()
    low, high = values.min(), values.max()
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if channels == 1:
        return values[0]
    rgb = np.zeros((height, width, 3))
    rgb[:, :, : min(channels, 3)] = values[:3].transpose(1, 2, 0)
    return rgb


def plot_width_bars(ax: Axes, widths: pd.DataFrame, value: str = "rf_width_median") -> None:
    """Bars of the mean over seeds per data set × method, error bars min–max."""
    datasets = datasets_in_order(widths)
    methods = ordered_methods(widths["method"].unique())
    step = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        rows = widths[widths["method"] == method].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) - 0.4 + step * (i + 0.5)
        mean = rows[f"{value}_mean"].to_numpy(dtype=float)
        error = np.vstack(
            [
                mean - rows[f"{value}_min"].to_numpy(float),
                rows[f"{value}_max"].to_numpy(float) - mean,
            ]
        )
        ax.bar(x, mean, step, yerr=error, capsize=3, color=method_colour(method), label=method)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("RF width, median over units (px)")
    ax.grid(axis="y", alpha=0.3)
    if methods:
        ax.legend(fontsize="small")


def plot_fig3(
    examples: Sequence[tuple[str, torch.Tensor, Sequence[int]]],
    panels: Sequence[MaskPanel],
    widths: pd.DataFrame,
    out: Output,
) -> None:
    """(A) example images per data set, (B) IMP masks per data set, (C) RF width bars."""
    heights = [1.6] * len(examples) + [1.8] * len(panels) + ([3.5] if not widths.empty else [])
    figure = Figure(figsize=(1.3 * EXAMPLES_PER_ROW, sum(heights)), layout="constrained")
    subs = list(figure.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0])
    for (dataset, x, shape), sub in zip(examples, subs, strict=False):
        axes = sub.subplots(1, EXAMPLES_PER_ROW, squeeze=False)[0]
        for ax in axes:
            ax.set_axis_off()
        for ax, image in zip(axes, x[:EXAMPLES_PER_ROW], strict=False):
            ax.imshow(example_image(image, shape), cmap="gray", vmin=0, vmax=1)
        sub.suptitle(f"(A) examples of {dataset}", fontsize="small")
    for panel, sub in zip(panels, subs[len(examples) :], strict=False):
        draw_mask_row(sub, panel)
    if not widths.empty:
        ax = subs[-1].subplots()
        plot_width_bars(ax, widths)
        ax.set_title("(C) RF width at the last round (mean over seeds, min–max)", fontsize="small")
    save_png(figure, out)


def fig3_section(experiment: Experiment | None, rounds: pd.DataFrame) -> Section:
    section = Section("Fig. 3 — data vs Gaussian clone", "fig3_gaussian_clone.png")
    examples, panels = [], []
    if experiment is not None:
        for dataset in datasets_in_order(rounds) if not rounds.empty else []:
            try:
                data = experiment.examples(dataset)
            except MissingArtifactError as exc:
                section.notes.append(str(exc))
                continue
            examples.append((dataset, data["x"], data["image_shape"].tolist()))
        panels, notes = mask_panels(experiment, rounds, methods=("imp",))
        section.notes += notes
    last = last_round_rows(rounds)
    last = last[last["rf_width_median"].notna()] if not last.empty else last
    widths = seed_stats(
        last, ["rf_width_median"], ["dataset", "method", "round"], means=["sparsity_first_layer"]
    )
    if not examples and not panels and widths.empty:
        return section.skip("no example images, IMP masks or RF widths in the store")
    if widths.empty:
        section.notes.append("no RF widths in the rounds table (panel C left out)")
    section.draw = lambda out: plot_fig3(examples, panels, widths, out)
    rows = [
        (
            r["dataset"],
            r["method"],
            r["round"],
            percent(r["sparsity_first_layer_mean"]),
            mean_range(r, "rf_width_median", 2),
            r["n_seeds"],
        )
        for r in ordered_rows(widths, ["round"])
    ]
    header = ("data set", "method", "round", "first-layer sparsity", "RF width median", "seeds")
    section.lines = [
        "Example images: " + (", ".join(d for d, _, _ in examples) or "none") + ".",
        "",
        "(C) Median RF width over units at the last round: mean over seeds (min–max).",
        "",
        *table(header, rows),
    ]
    return section


# -- Fig. 4: RF width and kurtosis vs sparsity -------------------------------------------------
def fig4_summaries(rounds: pd.DataFrame, kurtosis: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    by = ["dataset", "method", "round"]
    rf = seed_stats(rounds, ["rf_width_mean"], by, means=["sparsity_first_layer"])
    kurt = seed_stats(kurtosis, ["kurtosis_mean"], by, means=["sparsity_first_layer"])
    return rf, kurt


def plot_fig4(rf: pd.DataFrame, kurt: pd.DataFrame, out: Output) -> None:
    """(A) mean RF width and (B) mean per-class kurtosis against first-layer sparsity."""
    datasets = sorted(set(rf["dataset"]) | set(kurt["dataset"]))
    figure = Figure(figsize=(4.5 * len(datasets), 7.0), layout="constrained")
    axes = figure.subplots(2, len(datasets), squeeze=False, sharex="col")
    for column, dataset in enumerate(datasets):
        top, bottom = axes[0, column], axes[1, column]
        x = "sparsity_first_layer_mean"
        plot_method_lines(top, rf[rf["dataset"] == dataset], "rf_width_mean", x)
        plot_method_lines(bottom, kurt[kurt["dataset"] == dataset], "kurtosis_mean", x)
        bottom.axhline(3.0, color="grey", linestyle=":", linewidth=1)
        top.set_title(dataset)
        bottom.set_xlabel("first-layer sparsity (%)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    axes[0, 0].set_ylabel("(A) RF width, mean over units (px)")
    axes[1, 0].set_ylabel("(B) pre-activation kurtosis")
    save_png(figure, out)


def fig4_section(rounds: pd.DataFrame, kurtosis: pd.DataFrame) -> Section:
    section = Section("Fig. 4 — RF width and kurtosis vs sparsity", "fig4_rf_width_kurtosis.png")
    rf, kurt = fig4_summaries(rounds, kurtosis)
    has_rf = not rf.empty and rf["rf_width_mean_mean"].notna().any()
    if not has_rf and kurt.empty:
        return section.skip("no RF widths in the rounds table and no kurtosis table")
    if not has_rf:
        section.notes.append("no RF widths in the rounds table (panel A empty)")
    if kurt.empty:
        section.notes.append("no kurtosis table in the store (panel B empty)")
    section.draw = lambda out: plot_fig4(rf, kurt, out)
    merged = rf.merge(kurt, on=["dataset", "method", "round"], how="outer", suffixes=("", "_k"))
    rows = []
    for r in ordered_rows(merged, ["round"]):
        sparsity = r["sparsity_first_layer_mean"]
        if pd.isna(sparsity):
            sparsity = r["sparsity_first_layer_mean_k"]
        seeds = r["n_seeds"] if not pd.isna(r["n_seeds"]) else r["n_seeds_k"]
        rows.append(
            (
                r["dataset"],
                r["method"],
                r["round"],
                percent(sparsity),
                mean_range(r, "rf_width_mean", 2),
                mean_range(r, "kurtosis_mean", 3),
                int(seeds),
            )
        )
    header = ("data set", "method", "round", "first-layer sparsity", "RF width mean", "kurtosis")
    section.lines = [
        "Mean over seeds (min–max); kurtosis is the mean over units and classes (3: Gaussian).",
        "",
        *table((*header, "seeds"), rows),
    ]
    return section


# -- Fig. 5: cavity scores by removal round ----------------------------------------------------
def cavity_summary(cavity: pd.DataFrame) -> pd.DataFrame:
    """N_W·cavity per (data set, method, evaluated round, removal round), stats over seeds."""
    rows = cavity.rename(columns={"mean": "score"})
    by = ["dataset", "method", "evaluated_at_round", "removed_at_round"]
    return seed_stats(rows, ["score"], by, means=["count", "n_alive"])


def kept_position(removed: pd.Series) -> int:
    """x of the weights never removed (-1): one step after the last removal round."""
    return int(max(removed.max(), -1)) + 1 if len(removed) else 0


def plot_cavity_lines(ax: Axes, rows: pd.DataFrame, key: str, styles: dict, kept_at: int) -> None:
    for label, style in styles.items():
        line = rows[(rows[key] == label) & rows["score_mean"].notna()]
        if line.empty:
            continue
        removed = line["removed_at_round"].to_numpy()
        x = np.where(removed < 0, kept_at, removed).astype(float)
        order = np.argsort(x)
        mean, low, high = (
            line[c].to_numpy()[order] for c in ("score_mean", "score_ci_low", "score_ci_high")
        )
        ax.plot(x[order], mean, marker="o", ms=3, label=label, **style)
        ax.fill_between(x[order], low, high, color=style["color"], alpha=0.2)


def set_removal_ticks(ax: Axes, removed: pd.Series) -> None:
    kept_at = kept_position(removed)
    ticks = list(range(kept_at)) + [kept_at]
    ax.set_xticks(ticks, [str(t) for t in ticks[:-1]] + [KEPT])
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.grid(alpha=0.3)


def plot_fig5(summary: pd.DataFrame, out: Output) -> None:
    """(B) at round 0, lines per method; (C) one row per method, one line per evaluated round."""
    datasets = datasets_in_order(summary)
    methods = ordered_methods(summary["method"].unique())
    figure = Figure(figsize=(4.5 * len(datasets), 3.2 * (1 + len(methods))), layout="constrained")
    axes = figure.subplots(1 + len(methods), len(datasets), squeeze=False)
    for column, dataset in enumerate(datasets):
        rows = summary[summary["dataset"] == dataset]
        kept_at = kept_position(rows["removed_at_round"])
        ax = axes[0, column]
        first = rows[rows["evaluated_at_round"] == 0]
        plot_cavity_lines(ax, first, "method", series_styles(methods), kept_at)
        set_removal_ticks(ax, rows["removed_at_round"])
        ax.set_title(f"{dataset}: (B) evaluated at round 0", fontsize="small")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        for row, method in enumerate(methods, start=1):
            ax = axes[row, column]
            own = rows[rows["method"] == method]
            evaluated = sorted(own["evaluated_at_round"].unique())
            cmap = colormaps["viridis"]
            styles = {
                n: {"color": cmap(i / max(len(evaluated) - 1, 1)), "linestyle": "-"}
                for i, n in enumerate(evaluated)
            }
            plot_cavity_lines(ax, own, "evaluated_at_round", styles, kept_at)
            set_removal_ticks(ax, rows["removed_at_round"])
            ax.set_title(f"{dataset}: (C) {method}, one line per evaluated round", fontsize="small")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(
                    fontsize="x-small", ncol=2, title="evaluated at", title_fontsize="x-small"
                )
    for row in range(1 + len(methods)):
        axes[row, 0].set_ylabel("N_W · cavity score")
    for ax in axes[-1]:
        ax.set_xlabel("round in which the weights are removed")
    save_png(figure, out)


def removal_label(removed: int) -> str:
    return KEPT if removed < 0 else str(removed)


def fig5_section(cavity: pd.DataFrame) -> Section:
    section = Section("Fig. 5 — cavity scores by removal round", "fig5_cavity.png")
    if cavity.empty:
        return section.skip("no cavity table in the store (imp.measure_cavity off, or not done)")
    summary = cavity_summary(cavity)
    section.draw = lambda out: plot_fig5(summary, out)
    first = summary[summary["evaluated_at_round"] == 0]
    first = first.assign(
        order=first["removed_at_round"].where(first["removed_at_round"] >= 0, 1 << 30)
    )
    rows = [
        (
            r["dataset"],
            r["method"],
            removal_label(r["removed_at_round"]),
            mean_range(r, "score", 4),
            number(r["count_mean"], 1),
            r["n_seeds"],
        )
        for r in ordered_rows(first, ["order"])
    ]
    header = ("data set", "method", "removed at round", "N_W·cavity", "weights", "seeds")
    lines = [
        "(B) Evaluated at round 0: mean over seeds (min–max) of the group mean of N_W·cavity.",
        "",
        *table(header, rows),
        "(C) Mean over seeds by evaluated round (rows) and removal round (columns).",
        "",
    ]
    for dataset in datasets_in_order(summary):
        for method in ordered_methods(summary[summary["dataset"] == dataset]["method"].unique()):
            own = summary[(summary["dataset"] == dataset) & (summary["method"] == method)]
            pivot = own.pivot(
                index="evaluated_at_round", columns="removed_at_round", values="score_mean"
            )
            columns = sorted(pivot.columns, key=lambda c: (c < 0, c))
            body = [
                (n, *(number(pivot.loc[n, c], 4) for c in columns)) for n in pivot.index.tolist()
            ]
            lines += [f"{dataset} · {method}:", ""]
            lines += table(("evaluated \\ removed", *(removal_label(c) for c in columns)), body)
    section.lines = lines
    return section
