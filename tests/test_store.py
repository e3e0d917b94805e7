"""The experiment store on local disk and on a real S3-compatible server (moto, 127.0.0.1)."""

import os

import pytest
import torch

from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError

ROW = {
    "experiment": "e",
    "lineage_id": "imp-fcn-d-0000-s0",
    "kind": "imp",
    "method": "imp",
    "dataset": "d",
    "model": "fcn",
    "seed": 0,
    "round": 2,
    "sparsity": 0.5,
    "sparsity_first_layer": 0.51,
    "layer_sparsity": {"layers.0.weight": 0.51, "layers.1.weight": 0.49},
    "train_accuracy": 0.9,
    "test_accuracy": None,
    "rf_width_median": 1.5,
    "rf_width_mean": 1.6,
    "rf_width_y_median": 1.4,
    "rf_width_y_mean": 1.7,
    "rf_width_cross_median": None,
    "rf_width_cross_mean": None,
    "empty_units": 3,
    "wall_time_s": 0.25,
}


def roundtrip(store: ExperimentStore):
    tensors = {"a": torch.arange(6).reshape(2, 3), "b": torch.full((4,), -1)}
    store.write_tensors("lineages/x/masks/imp.pt", tensors)
    back = store.read_tensors("lineages/x/masks/imp.pt")
    assert set(back) == {"a", "b"} and torch.equal(back["a"], tensors["a"])
    store.write_json("lineages/x/lineage.json", {"last_round": 3})
    assert store.read_json("lineages/x/lineage.json") == {"last_round": 3}
    store.write_rows("rounds", "lin-a", "round-0002-imp", [ROW])
    store.write_rows("rounds", "lin-b", "round-0002-imp", [ROW | {"seed": 1}])
    store.write_rows("rounds", "lin-a", "round-0002-imp", [ROW | {"round": 2}])  # idempotent
    rows = store.read_table("rounds").to_pylist()
    assert len(rows) == 2
    assert sorted(r["seed"] for r in rows) == [0, 1]
    assert rows[0]["test_accuracy"] is None
    assert dict(rows[0]["layer_sparsity"]) == ROW["layer_sparsity"]
    assert store.list("lineages/x") == ["lineage.json", "lineage.json.sha256", "masks"]


def test_local_roundtrip(tmp_path):
    roundtrip(ExperimentStore(str(tmp_path / "exp")))


def test_s3_roundtrip(s3_bucket):
    store = ExperimentStore(f"s3://{s3_bucket}/prefix/exp")
    roundtrip(store)
    assert store.url("tables") == f"s3://{s3_bucket}/prefix/exp/tables"


def test_unfinished_and_corrupt_artifacts_are_refused(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    store.write_tensors("w.pt", {"w": torch.ones(3)})
    # a writer that died after the data but before the checksum: not complete
    os.remove(store.path("w.pt.sha256"))
    with pytest.raises(StoreError, match="never finished"):
        store.read_tensors("w.pt")
    store.write_tensors("w.pt", {"w": torch.ones(3)})
    with open(store.path("w.pt"), "r+b") as handle:
        handle.seek(-3, 2)
        handle.write(b"xyz")
    with pytest.raises(StoreError, match="corrupt: sha256"):
        store.read_tensors("w.pt")
    with pytest.raises(StoreError, match="missing file"):
        store.read_bytes("nothing-here")


def test_temp_files_of_a_dead_writer_are_not_read_as_rows(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    store.write_rows("rounds", "lin", "round-0000-imp", [ROW])
    folder = store.path("tables", "rounds", "lin")
    with open(os.path.join(folder, ".round-0001-imp.parquet.abc.tmp"), "wb") as handle:
        handle.write(b"PAR1 half a file")
    assert len(store.read_table("rounds")) == 1
    assert [f for f in os.listdir(folder) if not f.startswith(".")] == ["round-0000-imp.parquet"]


def test_rows_with_wrong_columns_are_refused(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    bad = dict(ROW)
    del bad["seed"]
    bad["colour"] = "red"
    with pytest.raises(
        ValueError, match=r"missing columns \['seed'\].*unknown columns \['colour'\]"
    ):
        store.write_rows("rounds", "lin", "p", [bad])
