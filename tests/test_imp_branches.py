"""Lottery-ticket branches of IMP lineages, without Ray: masks, start weights, rows, resume."""

import copy

import pytest
import torch
from conftest import TINY_SPEC

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.branches import IMPBranch, IMPBranchConfig
from lotterylab.platform.imp.lineage import IMP, IMPLineage, LineageConfig, trained_path
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.tables import IMP_BRANCHES_TABLE, ROUNDS_SCHEMA


def tiny(spec_dict):
    spec_dict["imp"].update(rounds=2, baselines=[])
    spec_dict["seeds"] = [0]
    spec_dict["run"]["batch_lineages"] = "off"
    return parse_spec(spec_dict)


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    """One finished lineage of two rounds, shared: branches write only under their own ids."""
    spec = tiny(copy.deepcopy(TINY_SPEC))
    store = ExperimentStore(str(tmp_path_factory.mktemp("branches") / "exp"))
    data = build_dataset(spec.datasets, "nlgp")
    lineage = IMPLineage(LineageConfig(store.name, "nlgp", 0, spec), data, store)
    while not lineage.done:
        lineage.run_round()
    return spec, store, data, lineage


def run_branch(spec, store, data, kind, n, step=None):
    config = IMPBranchConfig(LineageConfig(store.name, "nlgp", 0, spec), kind, n, step)
    branch = IMPBranch(config, data, store)
    assert branch.step() is None  # prepare
    return branch, branch.step()


def ticket_row(store, lineage_id, n):
    rows = store.read_table("rounds").to_pylist()
    return next(r for r in rows if r["lineage_id"] == lineage_id and r["round"] == n)


def test_rewind_at_the_lineages_own_step_is_the_ticket_bit_for_bit(trunk):
    spec, store, data, lineage = trunk
    branch, row = run_branch(spec, store, data, "rewind", 2, spec.training.rewind_step)
    assert branch.id == f"{lineage.id}-rewind-r2-t{spec.training.rewind_step}"
    ticket = ticket_row(store, lineage.id, 2)
    assert row["test_accuracy"] == ticket["test_accuracy"]
    assert row["sparsity"] == ticket["sparsity"] and row["rf_width_median"] is not None
    trained = store.read_tensors(trained_path(branch.id, IMP, 2))
    theirs = store.read_tensors(trained_path(lineage.id, IMP, 2))
    assert all(torch.equal(trained[k], theirs[k]) for k in theirs)


def test_rewind_replays_the_dense_run_to_an_unstored_step(trunk, tiny_spec_dict):
    spec, store, data, lineage = trunk
    rewind = store.read_tensors(f"lineages/{lineage.id}/rewind.pt")  # θ(5)
    # a lineage whose t_rewind is 3 stores θ(3): its branch at step 5 replays the dense run,
    # which is the same dense run as this lineage's, so it reaches this lineage's θ(5)
    other = dict(tiny_spec_dict, training={**tiny_spec_dict["training"], "rewind_step": 3})
    config = IMPBranchConfig(
        LineageConfig(store.name, "nlgp", 0, parse_spec(other)), "rewind", 1, 5
    )
    replayed = IMPBranch(config, data, store)._start_state()
    assert all(torch.equal(replayed[k], rewind[k]) for k in rewind)
    zero, row = run_branch(spec, store, data, "rewind", 1, 0)
    assert zero.id == f"{lineage.id}-rewind-r1-t0" and row["start_step"] == 0
    assert not torch.equal(zero.rewind_state["layers.0.weight"], rewind["layers.0.weight"])
    assert row["sparsity"] == ticket_row(store, lineage.id, 1)["sparsity"]


def test_reinit_and_random_prune_keep_the_counts_and_change_what_they_should(trunk):
    spec, store, data, lineage = trunk
    rr = store.read_tensors(f"lineages/{lineage.id}/masks/imp.pt")
    ticket = mk.masks_after_round(rr, 1)
    rewind = store.read_tensors(f"lineages/{lineage.id}/rewind.pt")
    reinit, reinit_row = run_branch(spec, store, data, "reinit", 2)
    assert all(torch.equal(reinit.removal_rounds[IMP][k] == -1, ticket[k]) for k in ticket)
    assert not torch.equal(reinit.rewind_state["layers.0.weight"], rewind["layers.0.weight"])
    rand, rand_row = run_branch(spec, store, data, "random_prune", 2)
    random_masks = mk.masks_after_round(rand.removal_rounds[IMP], 1)
    for name, mask in ticket.items():
        assert int(random_masks[name].sum()) == int(mask.sum())
        assert not torch.equal(random_masks[name], mask)
    assert torch.equal(rand.rewind_state["layers.0.weight"], rewind["layers.0.weight"])
    rows = {r["branch"]: r for r in store.read_table(IMP_BRANCHES_TABLE).to_pylist()}
    rows = {k: rows[k] for k in ("reinit", "random_prune")}
    for row in rows.values():
        assert row["parent_id"] == lineage.id and row["round"] == 2
        assert set(ROUNDS_SCHEMA.names) <= set(row)
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["kurtosis_mean"] is not None and row["start_step"] == 5
    assert rows["reinit"]["rf_width_median"] == ticket_row(store, lineage.id, 2)["rf_width_median"]
    assert rows["random_prune"]["sparsity"] == pytest.approx(reinit_row["sparsity"])
    assert rand_row["lineage_id"] == f"{lineage.id}-random_prune-r2"


def test_a_branch_resumes_from_its_state_exactly(trunk):
    spec, store, data, _ = trunk
    config = IMPBranchConfig(LineageConfig(store.name, "nlgp", 0, spec), "random_prune", 1)
    first = IMPBranch(config, data, store)
    first.step()
    state = first.state_dict()
    resumed = IMPBranch(config, data, store)
    resumed.load_state_dict(state)
    assert resumed.prepared and not resumed.done
    assert resumed.step()["test_accuracy"] == first.step()["test_accuracy"]
    other = IMPBranch(IMPBranchConfig(config.lineage, "reinit", 1), data, store)
    with pytest.raises(ValueError, match="belongs to branch"):
        other.load_state_dict(state)


def test_bad_branches_are_refused_with_the_allowed_values(trunk, tmp_path):
    spec, store, data, _ = trunk
    lineage = LineageConfig(store.name, "nlgp", 0, spec)
    with pytest.raises(ValueError, match="not one of"):
        IMPBranchConfig(lineage, "shuffle", 1)
    with pytest.raises(ValueError, match=r"outside 1\.\.2"):
        IMPBranchConfig(lineage, "reinit", 3)
    with pytest.raises(ValueError, match="needs --rewind-step"):
        IMPBranchConfig(lineage, "rewind", 1)
    with pytest.raises(ValueError, match="applies to rewind branches"):
        IMPBranchConfig(lineage, "reinit", 1, 0)
    empty = ExperimentStore(str(tmp_path / "empty"))
    with pytest.raises(StoreError, match="before branching"):
        IMPBranch(IMPBranchConfig(lineage, "reinit", 1), data, empty).step()
