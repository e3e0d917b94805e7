"""Connectivity and MACs in the mask rows of PaI runs and IMP rounds; old parts read as null."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.metrics import STRUCTURE_COLUMNS, connectivity, count_macs
from lotterylab.platform.pai.run import PaIConfig, PaIRun
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.tables import (
    PAI_MASKS_SCHEMA,
    PAI_MASKS_TABLE,
    ROUNDS_TABLE,
)


def test_pai_mask_row_holds_connectivity_and_macs(pai_spec_dict, tmp_path):
    spec = parse_spec(pai_spec_dict)
    store = ExperimentStore(str(tmp_path / "exp"))
    data = build_dataset(spec.datasets, "nlgp3")
    run = PaIRun(PaIConfig(store.name, "nlgp3", 0, "snip", 0.05, 1, spec), data, store)
    run.prune()
    (row,) = store.read_table(PAI_MASKS_TABLE).to_pylist()
    shape = data.image_shape
    c = connectivity(run.model, run.masks, shape)
    macs = count_macs(run.model, run.masks, shape)
    assert row["effective_density"] == pytest.approx(c.effective_density)
    assert row["effective_density"] <= row["actual_density"]
    assert dict(row["effective_units"]) == c.effective_units
    assert row["disconnected"] is c.disconnected
    assert row["log10_paths"] == pytest.approx(c.log10_paths)
    assert (row["macs"], row["dense_macs"]) == (macs.masked_total, macs.dense_total)
    assert 0 < row["macs"] < row["dense_macs"]


def test_imp_rows_of_every_method_hold_connectivity_and_macs(tiny_spec_dict, tmp_path):
    spec = parse_spec(tiny_spec_dict)
    store = ExperimentStore(str(tmp_path / "exp"))
    data = build_dataset(spec.datasets, "nlgp")
    lineage = IMPLineage(LineageConfig(store.name, "nlgp", 0, spec), data, store)
    lineage.run_round()
    lineage.run_round()
    rows = store.read_table(ROUNDS_TABLE).to_pylist()
    assert {(r["round"], r["method"]) for r in rows} == {
        (n, m) for n in (0, 1) for m in lineage.methods
    }
    for r in rows:
        masks = mk.masks_after_round(lineage.removal_rounds[r["method"]], r["round"] - 1)
        c = connectivity(lineage.shape_model, masks, data.image_shape)
        macs = count_macs(lineage.shape_model, masks, data.image_shape)
        assert r["effective_density"] == pytest.approx(c.effective_density)
        assert r["macs"] == macs.masked_total and r["dense_macs"] == macs.dense_total
        assert r["effective_density"] == (1.0 if r["round"] == 0 else r["effective_density"])
        assert r["round"] == 0 or r["macs"] < r["dense_macs"]


def test_parts_written_before_the_columns_read_as_null(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    old_schema = pa.schema([f for f in PAI_MASKS_SCHEMA if f.name not in STRUCTURE_COLUMNS])
    row = {
        "experiment": "exp",
        "run_id": "r",
        "kind": "pai",
        "method": "snip",
        "density": 0.1,
        "rounds": 1,
        "dataset": "d",
        "model": "resnet20",
        "seed": 0,
        "branch": "",
        "parent_id": None,
        "actual_density": 0.1,
        "layer_density": [("a", 0.1)],
        "active_units": [("a", 1)],
        "total_units": [("a", 2)],
        "collapsed": False,
        "scoring_time_s": 1.0,
        "rf_width_median": None,
        "rf_width_mean": None,
    }
    folder = tmp_path / "exp" / "tables" / PAI_MASKS_TABLE / "r"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), folder / "masks.parquet")
    (read,) = store.read_table(PAI_MASKS_TABLE).to_pylist()
    assert read["actual_density"] == 0.1
    assert all(read[c] is None for c in STRUCTURE_COLUMNS)
