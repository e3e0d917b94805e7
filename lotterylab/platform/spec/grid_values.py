"""Grid values typed the way the platform prints them.

Run ids print a density as ``d{density:.4g}`` (``d0.01801``) and reports print sparsity in
percent (``98.20 %``), while the grid holds 0.0180143985. A typed value names the grid value
that, rounded to as many significant digits as were typed, reads the same; two such values
are ambiguous and refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation


class GridValueError(ValueError):
    """A typed value that names no grid value, or more than one."""


def _typed(text: str | float, what: str) -> Decimal:
    try:
        value = Decimal(str(text).strip().removesuffix("%").strip())
    except InvalidOperation:
        raise GridValueError(f"{what} {text!r} is not a number") from None
    if not value.is_finite():
        raise GridValueError(f"{what} {text!r} is not a finite number")
    return value


def _reads_as(value: float, typed: Decimal) -> bool:
    if typed == 0:
        return value == 0
    digits = len(typed.as_tuple().digits)
    return Decimal(f"{value:.{digits}g}") == typed


def match_grid_value(
    text: str | float, grid: Iterable[float], what: str = "density", percent: bool = False
) -> float:
    """The one value of ``grid`` that ``text`` names to the digits typed.

    With ``percent`` the text is a sparsity in percent, matched against 100 (1 - value).
    """
    typed = _typed(text, what)
    values = sorted(set(grid), reverse=True)
    shown = {v: 100 * (1 - v) if percent else v for v in values}
    hits = [v for v in values if math.isfinite(shown[v]) and _reads_as(shown[v], typed)]
    if len(hits) == 1:
        return hits[0]
    unit = " %" if percent else ""
    if hits:
        listed = ", ".join(f"{shown[v]:.10g}{unit}" for v in hits)
        raise GridValueError(f"{what} {text} is ambiguous: it reads as {listed}; type more digits")
    listed = ", ".join(f"{shown[v]:.4g}{unit}" for v in values)
    raise GridValueError(f"{what} {text} is not in the grid; the grid has {listed}")


def match_densities(
    densities: Sequence[str | float] | None,
    sparsities: Sequence[str | float] | None,
    grid: Iterable[float],
) -> set[float] | None:
    """The grid densities that typed densities and sparsities name (None: no filter)."""
    if not densities and not sparsities:
        return None
    grid = list(grid)
    chosen = {match_grid_value(d, grid) for d in densities or []}
    chosen |= {match_grid_value(s, grid, "sparsity", percent=True) for s in sparsities or []}
    return chosen
