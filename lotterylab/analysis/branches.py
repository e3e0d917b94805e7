"""The lottery-ticket controls of IMP: the ticket against its branches, by sparsity.

The IMP curve is the ticket at every round; each branch (``lotterylab branch --kind reinit |
random_prune | rewind``) is a point at the sparsity of the round it branched, mean over seeds
with its min-max range. A ticket above its ``reinit`` and ``random_prune`` branches is what the
lottery-ticket hypothesis claims; on the FCN, the RF width shows whether the localised mask, or
the initialisation it came with, carries the structure.
"""

from __future__ import annotations

import pandas as pd

from lotterylab.analysis.aggregate import aggregate_over_seeds
from lotterylab.analysis.figures import plot_metric_vs_sparsity
from lotterylab.analysis.markdown import percent, spread, table
from lotterylab.analysis.sections import Section

TICKET = "imp"
VALUES = ("test_accuracy", "rf_width_median")

__all__ = ["branch_label", "branch_sections", "ticket_and_branches"]


def branch_label(row: dict) -> str:
    """``reinit``, ``random_prune``, ``rewind@S``: one series per kind (and rewind step)."""
    if row["branch"] == "rewind":
        return f"rewind@{int(row['start_step'])}"
    return str(row["branch"])


def ticket_and_branches(rounds: pd.DataFrame, branches: pd.DataFrame) -> pd.DataFrame:
    """IMP's rows (of the lineages that were branched) and the branch rows, ``method`` a label."""
    parents = set(branches["parent_id"])
    ticket = rounds[(rounds["method"] == TICKET) & rounds["lineage_id"].isin(parents)]
    labelled = branches.assign(method=[branch_label(r) for r in branches.to_dict("records")])
    columns = ["dataset", "method", "round", "seed", "sparsity", "sparsity_first_layer", *VALUES]
    return pd.concat([ticket[columns], labelled[columns]], ignore_index=True)


def branch_sections(rounds: pd.DataFrame, branches: pd.DataFrame) -> list[Section]:
    """Accuracy (and RF width where measured) of the ticket and its branches vs sparsity."""
    if branches.empty:
        return []
    summary = aggregate_over_seeds(ticket_and_branches(rounds, branches), VALUES)
    accuracy = Section(
        "Lottery-ticket branches — test accuracy vs sparsity", "branches_accuracy.png"
    )
    accuracy.draw = lambda out: plot_metric_vs_sparsity(
        summary, "test_accuracy", "sparsity_mean", "sparsity (%)", "test accuracy", out
    )
    branched = summary[summary["round"].isin(set(branches["round"]))]
    rows = [
        (
            r["dataset"],
            r["method"],
            r["round"],
            percent(r["sparsity_mean"]),
            spread(r, "test_accuracy", 3, with_range=False),
            spread(r, "rf_width_median", 2, with_range=True),
            r["n_seeds"],
        )
        for r in branched.sort_values(["dataset", "round", "method"]).to_dict("records")
    ]
    header = (
        "data set",
        "ticket or branch",
        "round",
        "sparsity",
        "test accuracy",
        "RF width",
        "seeds",
    )
    accuracy.lines = [
        "The IMP ticket (`imp`) and its branches at the rounds they branched.",
        "",
        *table(header, rows),
    ]
    sections = [accuracy]
    if summary["rf_width_median_mean"].notna().any():
        rf = Section("Lottery-ticket branches — RF width vs sparsity", "branches_rf_width.png")
        rf.draw = lambda out: plot_metric_vs_sparsity(
            summary,
            "rf_width_median",
            "sparsity_first_layer_mean",
            "first-layer sparsity (%)",
            "RF width, median over units (px)",
            out,
        )
        sections.append(rf)
    return sections
