"""From the platform's result rows to tracker steps: which run, which step, which numbers.

A tracker run is an IMP lineage × method (steps are rounds) or a PaI run (steps are epochs;
its mask row is step 0). Its key is unique inside the experiment and its external id derives
from the experiment URI and the key, so a resumed trial finds the run it logged to before.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from lotterylab.platform.store.tables import (
    KURTOSIS_TABLE,
    PAI_EPOCHS_TABLE,
    PAI_MASKS_TABLE,
    ROUNDS_TABLE,
)

# table -> (owner column, step column or None for step 0), in the order the procedures write
# them within a step (a round's kurtosis before its rounds rows, a run's masks before epoch 0)
TRACKED_TABLES = {
    KURTOSIS_TABLE: ("lineage_id", "round"),
    ROUNDS_TABLE: ("lineage_id", "round"),
    PAI_MASKS_TABLE: ("run_id", None),
    PAI_EPOCHS_TABLE: ("run_id", "epoch"),
}
# columns that say which run a row belongs to: parameters, never metrics
IDENTITY_COLUMNS = (
    "experiment",
    "lineage_id",
    "run_id",
    "kind",
    "method",
    "dataset",
    "model",
    "seed",
    "density",
    "rounds",
    "branch",
    "parent_id",
)
NOT_METRICS = {*IDENTITY_COLUMNS, "round", "epoch", "final"}
SUMMARY_KEY = "summary"


@dataclass(frozen=True)
class TrackedStep:
    """What one row gives a tracker run: its key, parameters, one step's metrics."""

    key: str
    params: dict[str, str]
    step: int
    metrics: dict[str, float]
    final: bool


def run_key(row: Mapping) -> str:
    """``<lineage id>/<method>`` for IMP rows, the run id for PaI rows."""
    if "run_id" in row:
        return str(row["run_id"])
    return f"{row['lineage_id']}/{row['method']}"


def external_id(experiment_uri: str, key: str) -> str:
    """A stable id for a tracker run: the same experiment and key give the same id."""
    digest = hashlib.sha256(f"{experiment_uri}\n{key}".encode()).hexdigest()[:24]
    return f"lotterylab-{digest}"


def flatten(value, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as dotted keys with string values (``datasets.0.type``)."""
    if isinstance(value, Mapping):
        if not value and prefix:
            return {prefix: "{}"}
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list | tuple):
        if not value:
            return {prefix: "[]"}
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: "" if value is None else str(value)}


def row_metrics(row: Mapping) -> dict[str, float]:
    """The finite numbers of a row (maps as ``column/key``), identity columns left out."""
    metrics = {}
    for column, value in row.items():
        if column in NOT_METRICS or column.startswith("search."):
            continue
        if isinstance(value, Mapping):
            for k, v in value.items():
                _put(metrics, f"{column}/{k}", v)
        elif isinstance(value, list):  # a Parquet map read back as (key, value) pairs
            for k, v in value:
                _put(metrics, f"{column}/{k}", v)
        else:
            _put(metrics, column, value)
    return metrics


def _put(metrics: dict[str, float], key: str, value) -> None:
    if isinstance(value, bool):
        metrics[key] = float(value)
    elif isinstance(value, int | float) and math.isfinite(value):
        metrics[key] = float(value)


def tracked_steps(
    table: str, rows: list[Mapping], spec_params: Mapping[str, str], last_round: int | None
) -> list[TrackedStep]:
    """The tracker steps of rows just written to ``table`` (none for untracked tables)."""
    if table not in TRACKED_TABLES:
        return []
    _, step_column = TRACKED_TABLES[table]
    steps = []
    for row in rows:
        params = dict(spec_params)
        params.update(
            {c: "" if row[c] is None else str(row[c]) for c in IDENTITY_COLUMNS if c in row}
        )
        step = int(row[step_column]) if step_column else 0
        if table == PAI_EPOCHS_TABLE:
            final = bool(row["final"])
        else:
            final = table == ROUNDS_TABLE and last_round is not None and step == last_round
        steps.append(TrackedStep(run_key(row), params, step, row_metrics(row), final))
    return steps
