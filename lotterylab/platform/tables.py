"""Schemas of the result tables, shared by the writers (procedures) and the readers (analysis).

Each measurement is its own table under ``<experiment>/tables/<table>/``; rows are written as
Parquet part files, one per (lineage, round, method), so concurrent writers never collide and a
replayed round overwrites its own part with identical content.
"""

from __future__ import annotations

import pyarrow as pa

ROUNDS_TABLE = "rounds"

ROUNDS_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("lineage_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "imp" today, "pai" next
        pa.field("method", pa.string(), nullable=False),  # imp | oneshot | random
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("round", pa.int64(), nullable=False),
        # fraction of prunable weights removed, over all prunable tensors and in the first layer
        pa.field("sparsity", pa.float64(), nullable=False),
        pa.field("sparsity_first_layer", pa.float64(), nullable=False),
        pa.field("layer_sparsity", pa.map_(pa.string(), pa.float64()), nullable=False),
        # null when the network of this row was not trained (baselines with train: false)
        pa.field("train_accuracy", pa.float64()),
        pa.field("test_accuracy", pa.float64()),
        # RF width (sigma_x, sigma_y in pixels) of first-layer masks, over non-empty units
        pa.field("rf_width_median", pa.float64()),
        pa.field("rf_width_mean", pa.float64()),
        pa.field("rf_width_y_median", pa.float64()),
        pa.field("rf_width_y_mean", pa.float64()),
        pa.field("empty_units", pa.int64(), nullable=False),
        pa.field("wall_time_s", pa.float64(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {ROUNDS_TABLE: ROUNDS_SCHEMA}


def rows_to_table(table: str, rows: list[dict]) -> pa.Table:
    """Build a table from row dicts, failing on a missing or unknown column."""
    schema = SCHEMAS[table]
    names = set(schema.names)
    for row in rows:
        missing, extra = names - row.keys(), row.keys() - names
        if missing or extra:
            raise ValueError(
                f"row for table {table!r} has missing columns {sorted(missing)} "
                f"and unknown columns {sorted(extra)}"
            )
    columns = {name: [row[name] for row in rows] for name in schema.names}
    # Arrow map columns take (key, value) pairs
    columns["layer_sparsity"] = [list(v.items()) for v in columns["layer_sparsity"]]
    return pa.Table.from_pydict(columns, schema=schema)
