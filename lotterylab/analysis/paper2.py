"""Paper 2 (PX, pruning at initialisation): accuracy over the sparsity grid (Figs. 2/3), layer
width at the lowest density (Fig. 6), the timing table (Table 2) and what a reader checks next
(collapsed masks, first-layer RF widths of FCN masks), from the ``pai_*`` tables alone."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from lotterylab.analysis.aggregate import seed_stats
from lotterylab.analysis.figures import Output, ordered_methods, save_png, series_styles
from lotterylab.analysis.markdown import MISSING, number, spread, table
from lotterylab.analysis.sections import Section

PANEL_KEYS = ["model", "dataset"]


def sparsity_label(density: float) -> str:
    return f"{100 * (1 - density):.2f}%"


def with_series(rows: pd.DataFrame) -> pd.DataFrame:
    """A ``series`` label per row: the method, `` T=k`` when it ran with several T, the branch."""
    if rows.empty:
        return rows.assign(series=pd.Series(dtype=str))
    several = rows.groupby("method")["rounds"].nunique()
    labels = []
    for method, rounds, branch in zip(rows["method"], rows["rounds"], rows["branch"], strict=True):
        label = method + (f" T={rounds}" if several[method] > 1 else "")
        labels.append(label + (f" ({branch})" if branch else ""))
    return rows.assign(series=labels)


def final_rows(epochs: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of each finished run, its score (accuracy, else mIoU) in ``score``."""
    final = epochs[epochs["final"]] if not epochs.empty else epochs
    final = final.assign(score=final["test_accuracy"].fillna(final["test_miou"]))
    return with_series(final)


def score_name(final: pd.DataFrame) -> str:
    if not final.empty and final["test_accuracy"].isna().all() and final["test_miou"].notna().any():
        return "test mIoU"
    return "test accuracy"


def accuracy_summary(final: pd.DataFrame) -> pd.DataFrame:
    return seed_stats(final, ["score"], [*PANEL_KEYS, "series", "density"])


def panels(rows: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted({(m, d) for m, d in zip(rows["model"], rows["dataset"], strict=True)})


def panel_title(model: str, dataset: str) -> str:
    return f"{model} · {dataset}"


# -- Figs. 2/3: accuracy vs density ------------------------------------------------------------
def plot_accuracy_vs_density(summary: pd.DataFrame, ylabel: str, out: Output) -> None:
    """Mean ± std band over seeds per method; x is log density, labelled as sparsity."""
    keys = panels(summary)
    figure = Figure(figsize=(5.0 * len(keys), 4.0), layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    styles = series_styles(summary["series"].unique())
    for ax, (model, dataset) in zip(axes, keys, strict=True):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        for label, style in styles.items():
            line = rows[(rows["series"] == label) & rows["score_mean"].notna()]
            if line.empty:
                continue
            line = line.sort_values("density", ascending=False)
            mean, std = line["score_mean"], line["score_std"]
            ax.plot(line["density"], mean, marker="o", ms=3, label=label, **style)
            ax.fill_between(
                line["density"], mean - std, mean + std, color=style["color"], alpha=0.2
            )
        densities = sorted(rows["density"].unique(), reverse=True)
        ax.set_xscale("log")
        ax.set_xticks(densities, [sparsity_label(d) for d in densities], rotation=45)
        ax.minorticks_off()
        if len(densities) > 1:
            ax.set_xlim(max(densities) * 1.15, min(densities) / 1.15)  # sparser to the right
        ax.set_title(panel_title(model, dataset))
        ax.set_xlabel("sparsity (log density)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_ylabel(f"final {ylabel}")
    save_png(figure, out)


def accuracy_section(epochs: pd.DataFrame) -> Section:
    section = Section(
        "Paper 2 Figs. 2/3 — final accuracy vs sparsity", "pai_accuracy_vs_density.png"
    )
    final = final_rows(epochs)
    if final.empty or final["score"].isna().all():
        return section.skip("no finished PaI run in the pai_epochs table")
    unfinished = set(epochs["run_id"]) - set(final["run_id"])
    if unfinished:
        section.notes.append(f"{len(unfinished)} run(s) not finished yet are left out")
    summary = accuracy_summary(final)
    ylabel = score_name(final)
    section.draw = lambda out: plot_accuracy_vs_density(summary, ylabel, out)
    lines = [f"Final {ylabel}: mean ± std over seeds (ddof=0), seeds in brackets.", ""]
    for model, dataset in panels(summary):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        densities = sorted(rows["density"].unique(), reverse=True)
        body = []
        for label in ordered_methods(rows["series"].unique()):
            own = rows[rows["series"] == label].set_index("density")
            cells = [
                f"{spread(own.loc[d], 'score', 4, False)} ({own.loc[d, 'n_seeds']})"
                if d in own.index
                else MISSING
                for d in densities
            ]
            body.append((label, *cells))
        lines += [f"### {panel_title(model, dataset)}", ""]
        lines += table(("method", *(sparsity_label(d) for d in densities)), body)
    section.lines = lines
    return section


# -- Fig. 6: active units per layer ------------------------------------------------------------
def lowest_density_rows(masks: pd.DataFrame) -> pd.DataFrame:
    """Mask rows at the lowest density of each (model, data set)."""
    lowest = masks.groupby(PANEL_KEYS)["density"].transform("min")
    return masks[masks["density"] == lowest]


def active_units_summary(masks: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of active and total units per layer, in the network's layer order."""
    records = []
    for row in masks.to_dict("records"):
        for position, (layer, active) in enumerate(row["active_units"].items()):
            records.append(
                {
                    "model": row["model"],
                    "dataset": row["dataset"],
                    "series": row["series"],
                    "density": row["density"],
                    "seed": row["seed"],
                    "position": position,
                    "layer": layer,
                    "active": active,
                    "total": row["total_units"].get(layer),
                }
            )
    frame = pd.DataFrame(records)
    return seed_stats(
        frame, ["active"], [*PANEL_KEYS, "series", "density", "position", "layer"], means=["total"]
    )


def plot_active_units(summary: pd.DataFrame, out: Output) -> None:
    """Active output units per layer, one line per method; the dense width dashed in grey."""
    keys = panels(summary)
    figure = Figure(figsize=(6.0 * len(keys), 4.2), layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    styles = series_styles(summary["series"].unique())
    for ax, (model, dataset) in zip(axes, keys, strict=True):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        layers = rows.drop_duplicates("position").sort_values("position")
        x = layers["position"].to_numpy()
        ax.plot(x, layers["total_mean"], color="grey", linestyle="--", label="dense")
        for label, style in styles.items():
            line = rows[rows["series"] == label].sort_values("position")
            if not line.empty:
                ax.plot(
                    line["position"], line["active_mean"], marker="o", ms=3, label=label, **style
                )
        ax.set_xticks(x, [short_layer(n) for n in layers["layer"]], rotation=90, fontsize="x-small")
        density = rows["density"].min()
        ax.set_title(f"{panel_title(model, dataset)} · sparsity {sparsity_label(density)}")
        ax.set_ylabel("active output units")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_png(figure, out)


def short_layer(name: str) -> str:
    return name.removesuffix(".weight")


def width_section(masks: pd.DataFrame) -> Section:
    section = Section(
        "Paper 2 Fig. 6 — active units per layer at the lowest density", "pai_active_units.png"
    )
    if masks.empty:
        return section.skip("no pai_masks table in the store")
    summary = active_units_summary(lowest_density_rows(with_series(masks)))
    section.draw = lambda out: plot_active_units(summary, out)
    lines = ["Active output units per layer, mean over seeds (dense width in brackets).", ""]
    for model, dataset in panels(summary):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        series = ordered_methods(rows["series"].unique())
        layers = rows.drop_duplicates("position").sort_values("position")
        body = []
        for layer, total in zip(layers["layer"], layers["total_mean"], strict=True):
            cells = []
            for label in series:
                hit = rows[(rows["series"] == label) & (rows["layer"] == layer)]
                cells.append(number(hit["active_mean"].iloc[0], 1) if len(hit) else MISSING)
            body.append((f"{layer} ({number(total, 0)})", *cells))
        density = rows["density"].min()
        lines += [f"### {panel_title(model, dataset)}, sparsity {sparsity_label(density)}", ""]
        lines += table(("layer", *series), body)
    section.lines = lines
    return section


# -- Table 2: accuracy and scoring time per method and T ---------------------------------------
def timing_section(epochs: pd.DataFrame, masks: pd.DataFrame) -> Section:
    section = Section("Paper 2 Table 2 — accuracy and scoring time by rounds T")
    if masks.empty:
        return section.skip("no pai_masks table in the store (no scoring times)")
    final = final_rows(epochs)
    lowest = lowest_density_rows(masks)
    by = [*PANEL_KEYS, "method", "branch", "rounds", "density"]
    times = seed_stats(lowest, ["scoring_time_s"], by)
    scores = seed_stats(final, ["score"], by) if not final.empty else None
    lines = [
        "At the lowest density: final accuracy mean ± std over seeds, then the scoring time "
        "(mean over seeds, seconds; paper 2 reports the 95th percentile of 100 timings).",
        "",
    ]
    for model, dataset in panels(times):
        rows = times[(times["model"] == model) & (times["dataset"] == dataset)]
        t_values = sorted(rows["rounds"].unique())
        body = []
        labels = rows.assign(
            label=[
                m + (f" ({b})" if b else "")
                for m, b in zip(rows["method"], rows["branch"], strict=True)
            ]
        )
        for label in ordered_methods(labels["label"].unique()):
            own = labels[labels["label"] == label]
            cells = []
            for t in t_values:
                hit = own[own["rounds"] == t]
                if hit.empty:
                    cells.append(MISSING)
                    continue
                hit = hit.iloc[0]
                accuracy = MISSING
                if scores is not None:
                    match = scores[
                        (scores["model"] == model)
                        & (scores["dataset"] == dataset)
                        & (scores["method"] == hit["method"])
                        & (scores["branch"] == hit["branch"])
                        & (scores["rounds"] == t)
                        & (scores["density"] == hit["density"])
                    ]
                    if len(match):
                        accuracy = spread(match.iloc[0], "score", 4, False)
                cells.append(f"{accuracy} · {hit['scoring_time_s_mean']:.4g} s")
            body.append((label, *cells))
        density = rows["density"].min()
        lines += [f"### {panel_title(model, dataset)}, sparsity {sparsity_label(density)}", ""]
        lines += table(("method", *(f"T = {t}" for t in t_values)), body)
    section.lines = lines
    return section


# -- collapsed masks and first-layer RF widths --------------------------------------------------
def collapsed_section(masks: pd.DataFrame) -> Section:
    section = Section("Collapsed masks")
    if masks.empty:
        return section.skip("no pai_masks table in the store")
    collapsed = masks[masks["collapsed"]]
    if collapsed.empty:
        section.lines = [
            f"None of the {len(masks)} masks collapsed (every layer keeps a unit).",
            "",
        ]
        return section
    body = []
    for row in collapsed.to_dict("records"):
        empty = [short_layer(k) for k, v in row["active_units"].items() if v == 0]
        body.append(
            (
                row["run_id"],
                row["method"],
                row["branch"] or "trunk",
                sparsity_label(row["density"]),
                row["rounds"],
                row["seed"],
                ", ".join(empty) or MISSING,
            )
        )
    header = ("run", "method", "branch", "sparsity", "T", "seed", "layers with no active unit")
    section.lines = [f"{len(collapsed)} of {len(masks)} masks collapsed.", "", *table(header, body)]
    return section


def rf_width_section(masks: pd.DataFrame) -> Section | None:
    """First-layer RF widths of PaI masks on an FCN (None when no mask has one)."""
    if masks.empty or masks["rf_width_median"].isna().all():
        return None
    section = Section("First-layer RF width of PaI masks")
    rows = with_series(masks[masks["rf_width_median"].notna()])
    summary = seed_stats(rows, ["rf_width_median"], [*PANEL_KEYS, "series", "density"])
    lines = ["Median RF width over first-layer units (px): mean ± std over seeds.", ""]
    for model, dataset in panels(summary):
        own = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        densities = sorted(own["density"].unique(), reverse=True)
        body = []
        for label in ordered_methods(own["series"].unique()):
            by_density = own[own["series"] == label].set_index("density")
            body.append(
                (
                    label,
                    *(
                        spread(by_density.loc[d], "rf_width_median", 2, False)
                        if d in by_density.index
                        else MISSING
                        for d in densities
                    ),
                )
            )
        lines += [f"### {panel_title(model, dataset)}", ""]
        lines += table(("method", *(sparsity_label(d) for d in densities)), body)
    section.lines = lines
    return section


def pai_sections(epochs: pd.DataFrame, masks: pd.DataFrame) -> list[Section]:
    sections = [
        accuracy_section(epochs),
        width_section(masks),
        timing_section(epochs, masks),
        collapsed_section(masks),
    ]
    rf = rf_width_section(masks)
    return sections + ([rf] if rf is not None else [])
