"""Markdown pieces of the report: every number behind a figure, as a table a reader can diff."""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "—"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def percent(fraction: float, digits: int = 1) -> str:
    if fraction is None or math.isnan(fraction):
        return MISSING
    return f"{100 * fraction:.{digits}f}%"


def number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def spread(row, column: str, digits: int, with_range: bool) -> str:
    """``mean ± std`` and optionally ``(min–max)``; a dash when no seed has a value."""
    mean = row[f"{column}_mean"]
    if mean is None or math.isnan(mean):
        return MISSING
    text = f"{mean:.{digits}f} ± {row[f'{column}_std']:.{digits}f}"
    if with_range:
        text += f" ({row[f'{column}_min']:.{digits}f}–{row[f'{column}_max']:.{digits}f})"
    return text


def mean_range(row, column: str, digits: int) -> str:
    """``mean (min–max)``: the statistic the paper-1 figures draw (line and band)."""
    mean = row[f"{column}_mean"]
    if mean is None or math.isnan(mean):
        return MISSING
    return (
        f"{mean:.{digits}f} ({row[f'{column}_min']:.{digits}f}–{row[f'{column}_max']:.{digits}f})"
    )


def interval(row, column: str, digits: int) -> str:
    """``mean [low, high]``: the mean and its confidence interval over seeds."""
    mean = row[f"{column}_mean"]
    if mean is None or math.isnan(mean):
        return MISSING
    low, high = row[f"{column}_ci_low"], row[f"{column}_ci_high"]
    if low is None or math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
