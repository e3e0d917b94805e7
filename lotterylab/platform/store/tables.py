"""Schemas of the result tables, shared by the writers (procedures) and the readers (analysis).

Each measurement is its own table under ``<experiment>/tables/<table>/``; rows are written as
Parquet part files, one per (lineage or run, round or epoch, method), so concurrent writers never
collide and a replayed round overwrites its own part with identical content.
"""

from __future__ import annotations

import pyarrow as pa

ROUNDS_TABLE = "rounds"
KURTOSIS_TABLE = "kurtosis"
CAVITY_TABLE = "cavity"
PAI_EPOCHS_TABLE = "pai_epochs"
PAI_MASKS_TABLE = "pai_masks"

# What a mask leaves of the network (platform/metrics/structure.py); null in parts written
# before these columns existed
_STRUCTURE_FIELDS = [
    pa.field("effective_density", pa.float64()),  # kept weights on an input-output path
    pa.field("effective_units", pa.map_(pa.string(), pa.int64())),  # per layer
    pa.field("disconnected", pa.bool_()),  # no input-to-output path at all
    pa.field("log10_paths", pa.float64()),  # null when disconnected
    pa.field("macs", pa.int64()),  # multiply-accumulates per sample with the mask
    pa.field("dense_macs", pa.int64()),  # the same, every weight kept
]

OPTIONAL_COLUMNS = frozenset(f.name for f in _STRUCTURE_FIELDS)

# RF width (sigma_x, sigma_y in pixels) of first-layer masks, over non-empty units, and the
# same from the cross-channel autocorrelation (pairs across any two channels)
_RF_WIDTH_FIELDS = [
    pa.field("rf_width_median", pa.float64()),
    pa.field("rf_width_mean", pa.float64()),
    pa.field("rf_width_y_median", pa.float64()),
    pa.field("rf_width_y_mean", pa.float64()),
    pa.field("rf_width_cross_median", pa.float64()),
    pa.field("rf_width_cross_mean", pa.float64()),
]

_LINEAGE_FIELDS = [
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("lineage_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # imp | pai
    pa.field("method", pa.string(), nullable=False),  # imp | oneshot | random | cavity | PaI name
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
]

ROUNDS_SCHEMA = pa.schema(
    [
        *_LINEAGE_FIELDS,
        pa.field("round", pa.int64(), nullable=False),
        # fraction of prunable weights removed, over all prunable tensors and in the first layer
        pa.field("sparsity", pa.float64(), nullable=False),
        pa.field("sparsity_first_layer", pa.float64(), nullable=False),
        pa.field("layer_sparsity", pa.map_(pa.string(), pa.float64()), nullable=False),
        # null when the network of this row was not trained (baselines with train: false)
        pa.field("train_accuracy", pa.float64()),
        pa.field("test_accuracy", pa.float64()),
        # null for models whose first layer is not a dense layer on image pixels
        *_RF_WIDTH_FIELDS,
        pa.field("empty_units", pa.int64()),
        pa.field("wall_time_s", pa.float64(), nullable=False),
        *_STRUCTURE_FIELDS,
    ]
)

# Lottery-ticket branches of an IMP lineage (``imp_branches.py``): one row per branch, the
# round-N columns of ``rounds`` (lineage_id is the branch's id) and what defines the branch
IMP_BRANCHES_TABLE = "imp_branches"
IMP_BRANCHES_SCHEMA = pa.schema(
    [
        *ROUNDS_SCHEMA,
        pa.field("branch", pa.string(), nullable=False),  # reinit | random_prune | rewind
        pa.field("parent_id", pa.string(), nullable=False),  # the IMP lineage's id
        pa.field("start_step", pa.int64(), nullable=False),  # the step training resumes from
        # first-layer kurtosis at the branch's start weights ⊙ its mask (FCN), else null
        pa.field("kurtosis_mean", pa.float64()),
        pa.field("kurtosis_all_mean", pa.float64()),
        pa.field("kurtosis_median", pa.float64()),
    ]
)

# Pre-activation kurtosis of the first hidden layer at the start of a round, for
# θ(t_rewind) ⊙ the mask that round trains (eq. 4, not excess; 3 for a Gaussian).
KURTOSIS_SCHEMA = pa.schema(
    [
        *_LINEAGE_FIELDS,
        pa.field("round", pa.int64(), nullable=False),
        pa.field("sparsity_first_layer", pa.float64(), nullable=False),
        pa.field("kurtosis_mean", pa.float64()),  # mean over units and classes (Fig. 4B)
        pa.field("kurtosis_all_mean", pa.float64()),  # mean over units, all inputs pooled
        pa.field("kurtosis_median", pa.float64()),  # median over units, all inputs pooled
    ]
)

# N_W(n) · cavity score of the remaining first-layer weights at θ(t_rewind) ⊙ m(n-1), averaged
# within groups of weights by the round in which the method eventually removes them
# (-1: never removed). Fig. 5B is evaluated_at_round 0, Fig. 5C every round.
CAVITY_SCHEMA = pa.schema(
    [
        *_LINEAGE_FIELDS,
        pa.field("evaluated_at_round", pa.int64(), nullable=False),
        pa.field("removed_at_round", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("n_alive", pa.int64(), nullable=False),  # N_W: alive first-layer weights
    ]
)

_PAI_FIELDS = [
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("density", pa.float64(), nullable=False),  # target fraction of prunable weights kept
    pa.field("rounds", pa.int64(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    # sanity-check branch of a parent run ("" for a trunk run) and the parent's run id
    pa.field("branch", pa.string(), nullable=False),
    pa.field("parent_id", pa.string()),
]

PAI_EPOCHS_SCHEMA = pa.schema(
    [
        *_PAI_FIELDS,
        pa.field("epoch", pa.int64(), nullable=False),  # 0 = at initialisation, after pruning
        pa.field("train_loss", pa.float64()),
        pa.field("test_accuracy", pa.float64()),  # classification; null for segmentation
        pa.field("test_miou", pa.float64()),  # segmentation; null for classification
        pa.field("final", pa.bool_(), nullable=False),
        pa.field("wall_time_s", pa.float64(), nullable=False),
    ]
)

PAI_MASKS_SCHEMA = pa.schema(
    [
        *_PAI_FIELDS,
        pa.field("actual_density", pa.float64(), nullable=False),
        pa.field("layer_density", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("active_units", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("total_units", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("collapsed", pa.bool_(), nullable=False),
        pa.field("scoring_time_s", pa.float64(), nullable=False),
        # first-layer RF width for dense first layers on images (FCN), else null
        pa.field("rf_width_median", pa.float64()),
        pa.field("rf_width_mean", pa.float64()),
        *_STRUCTURE_FIELDS,
    ]
)

# tables of `lotterylab analyze`: one row per analysis unit, named analysis_<what>
CAVITY, NTK, WIDTH, KURTOSIS = "cavity", "ntk", "width", "kurtosis"
_ANALYSIS_FIELDS = [
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),  # lineage, run or dense reference id
    pa.field("source", pa.string(), nullable=False),  # lineage | run | dense
    pa.field("kind", pa.string(), nullable=False),  # imp | pai
    pa.field("method", pa.string(), nullable=False),  # "dense" for the unpruned reference
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("round", pa.int64()),  # IMP round (its mask is the one that round trains)
    pa.field("density", pa.float64()),  # PaI target density; 1.0 for the dense reference
    pa.field("rounds", pa.int64()),  # PaI scoring rounds T
    pa.field("branch", pa.string(), nullable=False),  # PaI sanity-check branch, "" for a trunk
    pa.field("artifact", pa.string(), nullable=False),  # the unit's output in the store
]
ANALYSIS_SCHEMAS: dict[str, pa.Schema] = {
    f"analysis_{CAVITY}": pa.schema(
        [
            *_ANALYSIS_FIELDS,
            pa.field("n_alive", pa.int64(), nullable=False),  # N_W, alive first-layer weights
            pa.field("n_scored", pa.int64(), nullable=False),  # alive weights with a score
            pa.field("cavity_mean", pa.float64()),  # mean of N_W · score over scored weights
            pa.field("positive_fraction", pa.float64()),  # scored weights whose removal
            # makes λ less Gaussian
        ]
    ),
    f"analysis_{NTK}": pa.schema(
        [
            *_ANALYSIS_FIELDS,
            pa.field("init", pa.string(), nullable=False),  # seed purpose of the weights
            pa.field("samples", pa.int64(), nullable=False),  # N inputs actually used
            pa.field("outputs", pa.int64(), nullable=False),  # K logits per input
            pa.field("eig_max", pa.float64(), nullable=False),
            pa.field("eig_median", pa.float64(), nullable=False),
            pa.field("eig_min", pa.float64(), nullable=False),
            pa.field("trace", pa.float64(), nullable=False),
            pa.field("rank", pa.int64(), nullable=False),  # eigenvalues above rounding
            pa.field("actual_density", pa.float64(), nullable=False),
        ]
    ),
    f"analysis_{WIDTH}": pa.schema(
        [
            *_ANALYSIS_FIELDS,
            pa.field("actual_density", pa.float64(), nullable=False),
            pa.field("layer_density", pa.map_(pa.string(), pa.float64()), nullable=False),
            pa.field("active_units", pa.map_(pa.string(), pa.int64()), nullable=False),
            pa.field("total_units", pa.map_(pa.string(), pa.int64()), nullable=False),
            pa.field("collapsed", pa.bool_(), nullable=False),
        ]
    ),
    f"analysis_{KURTOSIS}": pa.schema(
        [
            *_ANALYSIS_FIELDS,
            pa.field("sparsity_first_layer", pa.float64(), nullable=False),
            pa.field("kurtosis_mean", pa.float64()),  # over units and classes
            pa.field("kurtosis_all_mean", pa.float64()),  # over units, all inputs pooled
            pa.field("kurtosis_median", pa.float64()),
            *_RF_WIDTH_FIELDS,
            pa.field("empty_units", pa.int64(), nullable=False),
        ]
    ),
}

SCHEMAS: dict[str, pa.Schema] = {
    **ANALYSIS_SCHEMAS,
    ROUNDS_TABLE: ROUNDS_SCHEMA,
    IMP_BRANCHES_TABLE: IMP_BRANCHES_SCHEMA,
    KURTOSIS_TABLE: KURTOSIS_SCHEMA,
    CAVITY_TABLE: CAVITY_SCHEMA,
    PAI_EPOCHS_TABLE: PAI_EPOCHS_SCHEMA,
    PAI_MASKS_TABLE: PAI_MASKS_SCHEMA,
}


def rows_to_table(table: str, rows: list[dict]) -> pa.Table:
    """Build a table from row dicts, failing on a missing or unknown column.

    The mask-structure columns, added after tables were first stored, may be left out: they
    are then null, as in parts written before they existed.
    """
    schema = SCHEMAS[table]
    names = set(schema.names)
    rows = [{**dict.fromkeys(OPTIONAL_COLUMNS & names), **row} for row in rows]
    for row in rows:
        missing, extra = names - row.keys(), row.keys() - names
        if missing or extra:
            raise ValueError(
                f"row for table {table!r} has missing columns {sorted(missing)} "
                f"and unknown columns {sorted(extra)}"
            )
    columns = {name: [row[name] for row in rows] for name in schema.names}
    for field in schema:
        if pa.types.is_map(field.type):  # Arrow map columns take (key, value) pairs
            columns[field.name] = [
                None if v is None else list(v.items()) for v in columns[field.name]
            ]
    return pa.Table.from_pydict(columns, schema=schema)
