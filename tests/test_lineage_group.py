"""Lineages trained as one group: the same masks, rows and artifacts as one at a time."""

import pytest
import torch

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp.group import (
    LineageGroup,
    group_lineages,
    lineages_per_group,
)
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore

MEMBERS = [("nlgp", 0), ("nlgp", 1), ("nlgp_clone", 0)]


def lineages(spec, tmp_path, folder):
    store = ExperimentStore(str(tmp_path / folder))
    made = [
        IMPLineage(LineageConfig("exp", d, s, spec), build_dataset(spec.datasets, d), store)
        for d, s in MEMBERS
    ]
    return made, store


def rows_of(store):
    rows = store.read_table("rounds").to_pylist()
    return sorted(rows, key=lambda r: (r["lineage_id"], r["round"], r["method"]))


@pytest.fixture
def spec(tiny_spec_dict):
    tiny_spec_dict["training"].update(optimizer="nesterov", momentum=0.9, weight_decay=1e-3)
    tiny_spec_dict["imp"]["baselines"] = ["oneshot", "random", "cavity"]
    return parse_spec(tiny_spec_dict)


def test_a_group_trains_its_lineages_as_they_train_alone(spec, tmp_path):
    off = spec.model_copy(update={"run": spec.run.model_copy(update={"batch_lineages": "off"})})
    alone, alone_store = lineages(off, tmp_path, "alone")
    for lineage in alone:
        assert not lineage.stacks
        while not lineage.done:
            lineage.run_round()
    grouped, group_store = lineages(spec, tmp_path, "group")
    group = LineageGroup(grouped)
    rounds = 0
    while not group.done:
        rows = group.run_round()
        assert [len(own) for own in rows] == [4, 4, 4]  # imp + three baselines each
        rounds += 1
    assert rounds == spec.imp.rounds + 1
    for one, together in zip(alone, grouped, strict=True):
        assert one.id == together.id
        for method, tensors in one.removal_rounds.items():
            for name, removal in tensors.items():
                assert torch.equal(removal, together.removal_rounds[method][name]), (
                    one.id,
                    method,
                    name,
                )
    one_rows, group_rows = rows_of(alone_store), rows_of(group_store)
    assert len(one_rows) == len(group_rows) == 3 * 4 * (spec.imp.rounds + 1)
    for a, b in zip(one_rows, group_rows, strict=True):
        assert (a["lineage_id"], a["round"], a["method"]) == (
            b["lineage_id"],
            b["round"],
            b["method"],
        )
        assert a["sparsity"] == b["sparsity"]
        assert a["rf_width_median"] == b["rf_width_median"]
        if a["test_accuracy"] is not None:
            assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-2)
    # the stored rewind states, masks and cavity rows are each lineage's own
    for lineage in grouped:
        for path in (f"lineages/{lineage.id}/rewind.pt", f"lineages/{lineage.id}/masks/imp.pt"):
            a, b = alone_store.read_tensors(path), group_store.read_tensors(path)
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert len(group_store.read_table("cavity")) == len(alone_store.read_table("cavity"))


def test_a_group_resumes_from_its_checkpoint_exactly(spec, tmp_path):
    whole, whole_store = lineages(spec, tmp_path, "whole")
    group = LineageGroup(whole)
    while not group.done:
        group.run_round()
    first, _ = lineages(spec, tmp_path, "resumed")
    interrupted = LineageGroup(first)
    interrupted.run_round()
    interrupted.run_round()
    state = interrupted.state_dict()
    again, resumed_store = lineages(spec, tmp_path, "resumed")
    # a checkpoint holds the lineages by id: another order of the same group loads it
    resumed = LineageGroup(list(reversed(again)))
    resumed.load_state_dict(state)
    assert [lineage.next_round for lineage in resumed.lineages] == [2, 2, 2]
    while not resumed.done:
        resumed.run_round()
    for a, b in zip(whole, reversed(resumed.lineages), strict=True):
        for method, tensors in a.removal_rounds.items():
            for name, removal in tensors.items():
                assert torch.equal(removal, b.removal_rounds[method][name])
    keep = lambda rows: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # noqa: E731
    assert keep(rows_of(whole_store)) == keep(rows_of(resumed_store))


def test_a_group_refuses_a_checkpoint_of_other_lineages(spec, tmp_path):
    made, _ = lineages(spec, tmp_path, "x")
    with pytest.raises(ValueError, match="checkpoint holds lineages"):
        LineageGroup(made[:2]).load_state_dict(LineageGroup(made[1:]).state_dict())
    with pytest.raises(ValueError, match="each lineage once"):
        LineageGroup([made[0], made[0]])
    # a checkpoint of one lineage, as trials of one lineage wrote them, still loads
    LineageGroup(made[:1]).load_state_dict(made[0].state_dict())


def test_groups_share_a_shape_keep_the_grid_order_and_balance_their_sizes():
    members = [{"d": d, "s": s} for d in ("a", "b", "c") for s in range(3)]
    shape = {"a": 1, "b": 1, "c": 2}
    groups = group_lineages(members, lambda m: shape[m["d"]], 4)
    assert [len(g) for g in groups] == [3, 3, 3]  # six of shape 1 in two groups, three of 2
    assert [m for g in groups for m in g] == members
    assert {shape[m["d"]] for m in groups[2]} == {2}
    assert [len(g) for g in group_lineages(members[:5], lambda m: 0, 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="group size is 0"):
        group_lineages(members, lambda m: 0, 0)


@pytest.mark.parametrize(
    "setting, slots, stacked, expected",
    [
        ("auto", 2, True, 3),
        ("auto", 4, True, 2),
        ("auto", 12, True, 1),
        ("auto", 2, False, 1),
        ("off", 1, True, 1),
        (4, 2, False, 4),
    ],
)
def test_lineages_per_group_follows_the_spec_and_the_cluster(
    tiny_spec_dict, setting, slots, stacked, expected
):
    tiny_spec_dict["run"]["batch_lineages"] = setting
    assert lineages_per_group(parse_spec(tiny_spec_dict), 6, slots, stacked) == expected
