"""Paper 2 (PX, pruning at initialisation): accuracy over the sparsity grid (Figs. 2/3), layer
width at the lowest density (Fig. 6), the timing table (Table 2) and what a reader checks next
(collapsed masks, first-layer RF widths of FCN masks), from the ``pai_*`` tables alone."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from lotterylab.analysis.aggregate import seed_stats
from lotterylab.analysis.figures import Output, ordered_methods, save_png, series_styles
from lotterylab.analysis.markdown import MISSING, number, percent, spread, table
from lotterylab.analysis.sections import Section
from lotterylab.analysis.stats import comparison_sentence, pairwise_comparisons

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
X_AXES = {"density": "sparsity (log density)", "effective_density": "effective density (log)"}


def plot_accuracy_vs_density(
    summary: pd.DataFrame, ylabel: str, out: Output, x: str = "density"
) -> None:
    """Mean over seeds per method with its 95 % interval as a band, on a log density axis.

    ``x="effective_density"`` puts each point at the mean effective density of its masks (the
    ``effective_density_mean`` column; disconnected masks, at 0, are left out of the log axis).
    """
    if x not in X_AXES:
        raise ValueError(f"x {x!r} is not one of {list(X_AXES)}")
    keys = panels(summary)
    figure = Figure(figsize=(5.0 * len(keys), 4.0), layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    styles = series_styles(summary["series"].unique())
    column = "density" if x == "density" else "effective_density_mean"
    for ax, (model, dataset) in zip(axes, keys, strict=True):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        for label, style in styles.items():
            line = rows[(rows["series"] == label) & rows["score_mean"].notna()]
            line = line[pd.to_numeric(line[column]) > 0] if column in line else line.iloc[:0]
            if line.empty:
                continue
            line = line.sort_values("density", ascending=False)
            xs = pd.to_numeric(line[column])
            ax.plot(xs, line["score_mean"], marker="o", ms=3, label=label, **style)
            ax.fill_between(
                xs, line["score_ci_low"], line["score_ci_high"], color=style["color"], alpha=0.2
            )
        ax.set_xscale("log")
        if x == "density":
            densities = sorted(rows["density"].unique(), reverse=True)
            ax.set_xticks(densities, [sparsity_label(d) for d in densities], rotation=45)
            ax.minorticks_off()
            if len(densities) > 1:
                ax.set_xlim(max(densities) * 1.15, min(densities) / 1.15)  # sparser to the right
        else:
            ax.invert_xaxis()  # sparser to the right, as on the nominal axis
        ax.set_title(panel_title(model, dataset))
        ax.set_xlabel(X_AXES[x])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_ylabel(f"final {ylabel}")
    save_png(figure, out)


def with_effective_density(summary: pd.DataFrame, masks: pd.DataFrame) -> pd.DataFrame:
    """``effective_density_mean`` of each (panel, series, density) from the mask rows."""
    keys = [*PANEL_KEYS, "series", "density"]
    if masks.empty or "effective_density" not in masks:
        return summary.assign(effective_density_mean=float("nan"))
    effective = seed_stats(with_series(masks), ["effective_density"], keys)
    return summary.merge(effective[[*keys, "effective_density_mean"]], on=keys, how="left")


def accuracy_section(epochs: pd.DataFrame, masks: pd.DataFrame | None = None) -> Section:
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
    lines = [
        f"Final {ylabel}: mean ± std over seeds (ddof=0) [95 % t interval of the mean], seeds "
        "in brackets.",
        "",
    ]
    for model, dataset in panels(summary):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        densities = sorted(rows["density"].unique(), reverse=True)
        body = []
        for label in ordered_methods(rows["series"].unique()):
            own = rows[rows["series"] == label].set_index("density")
            cells = [
                f"{spread(own.loc[d], 'score', 4, False)} "
                f"[{number(own.loc[d, 'score_ci_low'], 4)}, "
                f"{number(own.loc[d, 'score_ci_high'], 4)}] ({own.loc[d, 'n_seeds']})"
                if d in own.index
                else MISSING
                for d in densities
            ]
            body.append((label, *cells))
        lines += [f"### {panel_title(model, dataset)}", ""]
        lines += table(("method", *(sparsity_label(d) for d in densities)), body)
    section.lines = lines + comparison_lines(final)
    return section


def comparison_lines(final: pd.DataFrame) -> list[str]:
    """Every pair of methods at each density: Welch difference, interval, Holm's p; in words."""
    trunk = final[final["branch"] == ""] if "branch" in final else final
    pairs = pairwise_comparisons(trunk, "score", [*PANEL_KEYS, "density"], "series")
    if pairs.empty:
        return []
    lines = [
        "#### Which differences the seeds support",
        "",
        "Difference of mean final scores a − b with its 95 % Welch interval; Welch's t-test, "
        "Holm's correction over the pairs at each density.",
        "",
    ]
    for (model, dataset, density), cell in pairs.groupby([*PANEL_KEYS, "density"], sort=False):
        where = f"{sparsity_label(density)} sparsity"
        lines += [f"**{panel_title(model, dataset)}, {where}.** "]
        cell = cell.sort_values("p_holm", na_position="last")
        separable = [
            comparison_sentence(r, where) for r in cell.to_dict("records") if r["separable"]
        ]
        rest = len(cell) - len(separable)
        lines[-1] += "; ".join(separable) + ("; " if separable else "")
        lines[-1] += f"{rest} of {len(cell)} pairs not separable with these seeds."
        lines.append("")
        body = [
            (
                r["a"],
                r["b"],
                number(r["difference"], 4),
                f"[{number(r['low'], 4)}, {number(r['high'], 4)}]",
                number(r["p"], 4),
                number(r["p_holm"], 4),
                "yes" if r["separable"] else "no",
            )
            for r in cell.to_dict("records")
        ]
        lines += table(("a", "b", "a − b", "95 % interval", "p", "p (Holm)", "separable"), body)
    return lines


def effective_accuracy_section(epochs: pd.DataFrame, masks: pd.DataFrame) -> Section | None:
    """Accuracy against the masks' effective density (None when no row has one)."""
    final = final_rows(epochs)
    if final.empty or masks.empty or "effective_density" not in masks:
        return None
    if masks["effective_density"].isna().all() or final["score"].isna().all():
        return None
    section = Section(
        "Final accuracy vs effective density", "pai_accuracy_vs_effective_density.png"
    )
    summary = with_effective_density(accuracy_summary(final), masks)
    ylabel = score_name(final)
    section.draw = lambda out: plot_accuracy_vs_density(summary, ylabel, out, "effective_density")
    section.lines = [
        "Each point sits at the mean effective density of its masks (kept weights on at least "
        "one input-to-output path); disconnected masks (effective density 0) are left out.",
        "",
    ]
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


# -- collapse: zero-width layers, bypassed or disconnecting; paths and MACs ----------------------
def structure_summary(masks: pd.DataFrame) -> pd.DataFrame:
    """Per panel, series and density: disconnected fraction, effective density, zero-width
    layers, log10 paths, MACs and scoring time over seeds."""
    rows = with_series(masks)
    rows = rows.assign(
        zero_width=[sum(1 for v in units.values() if v == 0) for units in rows["active_units"]],
        disconnected_fraction=pd.to_numeric(rows["disconnected"].astype("float64")),
        macs_fraction=pd.to_numeric(rows["macs"]) / pd.to_numeric(rows["dense_macs"]),
    )
    values = [
        "disconnected_fraction",
        "effective_density",
        "actual_density",
        "zero_width",
        "log10_paths",
        "macs",
        "macs_fraction",
        "scoring_time_s",
    ]
    return seed_stats(rows, values, [*PANEL_KEYS, "series", "density"])


def collapsed_section(masks: pd.DataFrame) -> Section:
    section = Section("Collapse: bypassed layers and disconnected networks")
    if masks.empty:
        return section.skip("no pai_masks table in the store")
    known = masks["disconnected"].notna() if "disconnected" in masks else masks["collapsed"] & False
    collapsed = masks[masks["collapsed"]]
    disconnected = masks[known & (masks["disconnected"] == True)]  # noqa: E712 (nullable)
    bypassed = collapsed[known[collapsed.index] & (collapsed["disconnected"] == False)]  # noqa: E712
    unknown = collapsed[~known[collapsed.index]]
    lines = [
        f"{len(collapsed)} of {len(masks)} masks have a layer with no active unit (`collapsed`): "
        f"{len(bypassed)} of them stay connected through skip connections (zero-width but "
        f"bypassed), {len(disconnected)} masks have no input-to-output path at all "
        f"(`disconnected`: a unit-weight pass of the mask outputs 0, the network is constant)"
        + (
            f", {len(unknown)} were stored before connectivity was recorded."
            if len(unknown)
            else "."
        )
        + " A disconnected mask trains to chance; a bypassed one can still learn.",
        "",
    ]
    if "disconnected" in masks and masks["disconnected"].notna().any():
        summary = structure_summary(masks[known])
        lines += [
            "Per method and sparsity (mean over seeds): fraction of seeds disconnected, effective "
            "and nominal density, zero-width layers, log10 of the path count (connected masks), "
            "MACs per sample (share of dense), scoring time.",
            "",
        ]
        body = []
        for model, dataset in panels(summary):
            own = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
            for label in ordered_methods(own["series"].unique()):
                for r in (
                    own[own["series"] == label]
                    .sort_values("density", ascending=False)
                    .to_dict("records")
                ):
                    body.append(
                        (
                            panel_title(model, dataset),
                            label,
                            sparsity_label(r["density"]),
                            number(r["disconnected_fraction_mean"], 2),
                            percent(r["effective_density_mean"], 3),
                            percent(r["actual_density_mean"], 3),
                            number(r["zero_width_mean"], 1),
                            number(r["log10_paths_mean"], 1),
                            f"{r['macs_mean'] / 1e6:.3g} M ({percent(r['macs_fraction_mean'], 2)})",
                            f"{r['scoring_time_s_mean']:.3g} s",
                        )
                    )
        header = (
            "panel",
            "method",
            "sparsity",
            "disconnected",
            "effective density",
            "density",
            "zero-width layers",
            "log10 paths",
            "MACs",
            "scoring time",
        )
        lines += table(header, body)
    body = []
    for row in collapsed.to_dict("records"):
        empty = [short_layer(k) for k, v in row["active_units"].items() if v == 0]
        state = row.get("disconnected")
        body.append(
            (
                row["run_id"],
                row["method"],
                row["branch"] or "trunk",
                sparsity_label(row["density"]),
                row["rounds"],
                row["seed"],
                MISSING
                if state is None or state != state
                else ("disconnected" if state else "bypassed"),
                ", ".join(empty) or MISSING,
            )
        )
    if body:
        header = (
            "run",
            "method",
            "branch",
            "sparsity",
            "T",
            "seed",
            "paths",
            "layers with no active unit",
        )
        lines += table(header, body)
    section.lines = lines
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
        accuracy_section(epochs, masks),
        effective_accuracy_section(epochs, masks),
        width_section(masks),
        timing_section(epochs, masks),
        collapsed_section(masks),
    ]
    rf = rf_width_section(masks)
    return [s for s in (*sections, rf) if s is not None]
