"""What the seeds can support: confidence intervals of means and corrected pairwise tests.

A mean over three seeds says little by itself. Every aggregate gets a 95 % interval (Student's t
on the seeds' sample standard deviation, or a percentile bootstrap when asked), and the report
compares methods pairwise within a cell (a PaI density, an IMP round): the difference of means
with its Welch interval, Welch's t-test, and Holm's step-down correction over the pairs of that
cell, so that "separable" means p < alpha after correction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
INTERVALS = ("t", "bootstrap")


def mean_interval(
    values: Sequence[float],
    level: float = LEVEL,
    method: str = "t",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) of a ``level`` interval of the mean; NaN with fewer than two values.

    ``t``: mean ± t_{(1+level)/2, n-1} · s / sqrt(n), s with ddof=1. ``bootstrap``: percentiles
    of the means of ``resamples`` resamples with replacement (a fixed ``seed``: reproducible).
    """
    if method not in INTERVALS:
        raise ValueError(f"interval {method!r} is not one of {INTERVALS}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = x.size
    if n < 2:
        return math.nan, math.nan
    mean = float(x.mean())
    if method == "t":
        half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
        return mean - half, mean + half
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(resamples, n))].mean(1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def interval_columns(
    groups, column: str, level: float = LEVEL, method: str = "t"
) -> tuple[pd.Series, pd.Series]:
    """``<column>_ci_low`` and ``_ci_high`` of every group of a pandas GroupBy."""
    bounds = groups[column].apply(lambda s: mean_interval(s.tolist(), level, method))
    low = bounds.map(lambda b: b[0]).astype(float)
    high = bounds.map(lambda b: b[1]).astype(float)
    return low, high


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and counts as no test)."""
    p = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(p.shape, np.nan)
    m = valid.size
    if m == 0:
        return adjusted.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """Difference of means a − b, its Welch interval and Welch's two-sided p-value."""
    x = np.asarray([v for v in a if v is not None and not math.isnan(v)], dtype=float)
    y = np.asarray([v for v in b if v is not None and not math.isnan(v)], dtype=float)
    out = {"n_a": int(x.size), "n_b": int(y.size), "difference": math.nan}
    out.update(low=math.nan, high=math.nan, p=math.nan)
    if x.size == 0 or y.size == 0:
        return out
    out["difference"] = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return out
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0.0:  # no spread at all: no test, and the interval is the difference itself
        out.update(low=out["difference"], high=out["difference"])
        return out
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    out.update(low=out["difference"] - half, high=out["difference"] + half)
    out["p"] = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return out


def pairwise_comparisons(
    rows: pd.DataFrame,
    value: str,
    cell: Sequence[str],
    between: str,
    pairs: Callable[[list[str]], list[tuple[str, str]]] | None = None,
    level: float = LEVEL,
) -> pd.DataFrame:
    """One row per cell and pair (a, b) of ``between`` labels: Welch difference a − b, its
    interval, p and Holm's p over the pairs of the cell, and ``separable`` (Holm p < 1 − level).

    ``pairs`` picks the pairs from the cell's sorted labels (all pairs by default).
    """
    columns = [*cell, "a", "b", "n_a", "n_b", "difference", "low", "high", "p", "p_holm"]
    records = []
    if rows.empty:
        return pd.DataFrame(columns=[*columns, "separable"])
    for key, group in rows.groupby(list(cell), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        labels = sorted(group[between].unique())
        chosen = pairs(labels) if pairs else list(itertools.combinations(labels, 2))
        values = {label: group.loc[group[between] == label, value].tolist() for label in labels}
        tests = [welch(values[a], values[b], level) for a, b in chosen]
        adjusted = holm([t["p"] for t in tests])
        for (a, b), test, p_holm in zip(chosen, tests, adjusted, strict=True):
            records.append(
                {**dict(zip(cell, key, strict=True)), "a": a, "b": b, **test, "p_holm": p_holm}
            )
    frame = pd.DataFrame(records, columns=columns)
    return frame.assign(separable=frame["p_holm"] < 1 - level)


def comparison_sentence(row: dict, where: str) -> str:
    """``px > random at <where> (p = 0.003, Holm)`` or ``px vs snip not separable with 3 seeds``."""
    a, b = row["a"], row["b"]
    if row["separable"]:
        first, second = (a, b) if row["difference"] > 0 else (b, a)
        return f"{first} > {second} at {where} (p = {row['p_holm']:.2g}, Holm)"
    seeds = min(row["n_a"], row["n_b"])
    return f"{a} vs {b} not separable at {where} with {seeds} seeds"
