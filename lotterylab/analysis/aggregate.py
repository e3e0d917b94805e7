"""Statistics over seeds: every figure and table shows a mean with its spread across seeds."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

DEFAULT_GROUPS = ("dataset", "method", "round")


def aggregate_over_seeds(
    rows: pd.DataFrame, values: Sequence[str], by: Sequence[str] = DEFAULT_GROUPS
) -> pd.DataFrame:
    """One row per group with ``<col>_mean/_min/_max/_std`` for each value column.

    Nulls are skipped (an all-null group gives NaN); std uses ddof=0 so one seed gives 0.
    ``sparsity_mean``, ``sparsity_first_layer_mean`` and ``n_seeds`` come with every group.
    """
    numeric = rows.assign(**{col: pd.to_numeric(rows[col]) for col in values})
    groups = numeric.groupby(list(by), sort=True)
    columns: dict[str, pd.Series] = {}
    for col in values:
        columns[f"{col}_mean"] = groups[col].mean()
        columns[f"{col}_min"] = groups[col].min()
        columns[f"{col}_max"] = groups[col].max()
        columns[f"{col}_std"] = groups[col].std(ddof=0)
    columns["sparsity_mean"] = groups["sparsity"].mean()
    columns["sparsity_first_layer_mean"] = groups["sparsity_first_layer"].mean()
    columns["n_seeds"] = groups["seed"].nunique()
    return pd.DataFrame(columns).reset_index()
