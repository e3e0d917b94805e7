"""Per-round kurtosis, cavity analysis by removal round and cavity-guided pruning in a lineage."""

import pytest
import torch

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.metrics import cavity_scores, preactivation_kurtosis
from lotterylab.platform.spec import SpecError, parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore


def run_lineage(spec_dict, tmp_path, dataset="nlgp", seed=0):
    spec = parse_spec(spec_dict)
    store = ExperimentStore(str(tmp_path / "exp"))
    lineage = IMPLineage(
        LineageConfig(store.name, dataset, seed, spec),
        build_dataset(spec.datasets, dataset),
        store,
    )
    while not lineage.done:
        lineage.run_round()
    return lineage, store


@pytest.fixture
def cavity_spec(tiny_spec_dict):
    tiny_spec_dict["imp"]["baselines"] = ["oneshot", "random", "cavity"]
    return tiny_spec_dict


def test_kurtosis_is_measured_at_the_rewind_point_of_every_round(cavity_spec, tmp_path):
    lineage, store = run_lineage(cavity_spec, tmp_path)
    rows = store.read_table("kurtosis").to_pylist()
    assert {(r["round"], r["method"]) for r in rows} == {
        (n, m) for n in range(4) for m in ("imp", "oneshot", "random", "cavity")
    }
    # the stored value is the kurtosis of θ(t_rewind) ⊙ the mask that round trains
    rr = lineage.removal_rounds["imp"]["layers.0.weight"]
    mask = mk.mask_after_round(rr, 1)
    weight = lineage.rewind_state["layers.0.weight"] * mask
    inputs = lineage._first_layer_inputs()
    expected = preactivation_kurtosis(
        weight, inputs, labels=lineage.data.train_y[: len(inputs)], num_classes=2
    )
    row = next(r for r in rows if r["round"] == 2 and r["method"] == "imp")
    assert row["kurtosis_mean"] == pytest.approx(float(expected.mean), rel=1e-9)
    assert row["sparsity_first_layer"] == pytest.approx(1 - float(mask.float().mean()))
    per_unit = store.read_tensors(f"lineages/{lineage.id}/kurtosis/imp-round-0002.pt")
    assert torch.allclose(per_unit["overall"], expected.overall, equal_nan=True)
    # round 0 is the dense net for every method
    first = {r["kurtosis_mean"] for r in rows if r["round"] == 0}
    assert len(first) == 1


def test_cavity_table_groups_scores_by_removal_round(cavity_spec, tmp_path):
    lineage, store = run_lineage(cavity_spec, tmp_path)
    rows = [r for r in store.read_table("cavity").to_pylist() if r["method"] == "imp"]
    fate = lineage.removal_rounds["imp"]["layers.0.weight"]
    assert {r["evaluated_at_round"] for r in rows} == {0, 1, 2, 3}
    at_zero = {r["removed_at_round"]: r for r in rows if r["evaluated_at_round"] == 0}
    assert set(at_zero) == {-1, 0, 1, 2}
    assert sum(r["count"] for r in at_zero.values()) == fate.numel()
    scores = cavity_scores(lineage.rewind_state["layers.0.weight"], lineage._first_layer_inputs())
    n_alive = fate.numel()
    for removed, row in at_zero.items():
        group = scores[fate == removed]
        assert row["count"] == group.numel() and row["n_alive"] == n_alive
        assert row["mean"] == pytest.approx(float(n_alive * group.nanmean()), rel=1e-6)
    # later rounds only see the weights still alive then
    at_two = [r for r in rows if r["evaluated_at_round"] == 2]
    assert {r["removed_at_round"] for r in at_two} == {-1, 2}


def test_cavity_guided_pruning_removes_the_highest_cavity_scores(cavity_spec, tmp_path):
    lineage, store = run_lineage(cavity_spec, tmp_path)
    rrs = lineage.removal_rounds
    for n in range(4):
        assert mk.alive_counts(mk.masks_after_round(rrs["cavity"], n - 1)) == mk.alive_counts(
            mk.masks_after_round(rrs["imp"], n - 1)
        )
    # round 0's pruning: first-layer removals are the highest cavity scores of the dense rewind
    scores = cavity_scores(lineage.rewind_state["layers.0.weight"], lineage._first_layer_inputs())
    removed = rrs["cavity"]["layers.0.weight"] == 0
    assert scores[removed].min() >= scores[~removed].max()
    rows = store.read_table("rounds").to_pylist()
    cavity_rows = [r for r in rows if r["method"] == "cavity"]
    assert len(cavity_rows) == 4 and all(r["test_accuracy"] is not None for r in cavity_rows)


def test_cavity_sibling_needs_the_fcn(cavity_spec):
    cavity_spec["model"] = {"name": "resnet20"}
    with pytest.raises(SpecError, match=r"imp.baselines.\d+: 'cavity'.*'fcn'"):
        parse_spec(cavity_spec, "s.yaml")
