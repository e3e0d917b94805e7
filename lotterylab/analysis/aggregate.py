"""Statistics over seeds: every figure and table shows a mean with its spread across seeds."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lotterylab.analysis.stats import LEVEL, interval_columns

DEFAULT_GROUPS = ("dataset", "method", "round")


def seed_stats(
    rows: pd.DataFrame,
    values: Sequence[str],
    by: Sequence[str],
    means: Sequence[str] = (),
    interval: str = "t",
    level: float = LEVEL,
) -> pd.DataFrame:
    """One row per group with ``<col>_mean/_min/_max/_std/_ci_low/_ci_high`` per value column.

    Nulls are skipped (an all-null group gives NaN); std uses ddof=0 so one seed gives 0. The
    ``level`` interval of the mean is t-based (``interval="t"``) or a percentile bootstrap
    (``"bootstrap"``), NaN for fewer than two seeds (``lotterylab.analysis.stats``).
    Columns in ``means`` come with only their mean (the x of a curve, e.g. a sparsity);
    ``n_seeds`` counts the distinct seeds of each group.
    """
    numeric = rows.assign(**{col: pd.to_numeric(rows[col]) for col in (*values, *means)})
    groups = numeric.groupby(list(by), sort=True, dropna=False)
    columns: dict[str, pd.Series] = {}
    for col in values:
        columns[f"{col}_mean"] = groups[col].mean()
        columns[f"{col}_min"] = groups[col].min()
        columns[f"{col}_max"] = groups[col].max()
        columns[f"{col}_std"] = groups[col].std(ddof=0)
        low, high = interval_columns(groups, col, level, interval)
        columns[f"{col}_ci_low"], columns[f"{col}_ci_high"] = low, high
    for col in means:
        columns[f"{col}_mean"] = groups[col].mean()
    columns["n_seeds"] = groups["seed"].nunique()
    if rows.empty:
        return pd.DataFrame(columns=[*by, *columns])
    return pd.DataFrame(columns).reset_index()


def aggregate_over_seeds(
    rows: pd.DataFrame, values: Sequence[str], by: Sequence[str] = DEFAULT_GROUPS
) -> pd.DataFrame:
    """``seed_stats`` of IMP rows, with ``sparsity_mean`` and ``sparsity_first_layer_mean``."""
    return seed_stats(rows, values, by, means=("sparsity", "sparsity_first_layer"))
