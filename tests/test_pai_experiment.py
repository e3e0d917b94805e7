"""PaI experiments end to end through real Ray Tune: the grid, rows, figures, branches."""

from lotterylab.cli import main
from lotterylab.cluster.launch import run_experiment
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore


def test_pai_grid_through_tune_then_a_branch_from_the_cli(pai_spec_dict, tmp_path):
    spec_dict = pai_spec_dict
    spec_dict["training"].update(epochs=1, lr_drops=[])
    spec_dict["pai"].update(methods=["magnitude", "snip"], densities=[0.3, 0.1])
    spec = parse_spec(spec_dict)
    outcome = run_experiment(spec, "name: tinypai\n", str(tmp_path / "results"))
    assert outcome.trials == 4 and outcome.errored_trials == []
    store = ExperimentStore(outcome.uri)
    masks = store.read_table("pai_masks").to_pylist()
    assert {(r["method"], r["density"]) for r in masks} == {
        (m, d) for m in ("magnitude", "snip") for d in (0.3, 0.1)
    }
    for row in masks:
        assert abs(row["actual_density"] - row["density"]) < 1e-3
        assert row["branch"] == "" and row["parent_id"] is None
    final = [r for r in store.read_table("pai_epochs").to_pylist() if r["final"]]
    assert len(final) == 4 and all(r["epoch"] == 1 for r in final)
    assert any(name.endswith(".png") for name in store.list("figures"))
    trial_dirs = [n for n in store.list("") if n.startswith("trial-pai-resnet20-")]
    assert len(trial_dirs) == 4

    code = main(["branch", outcome.uri, "--kind", "shuffle", "--method", "snip"])
    assert code == 0
    branches = [r for r in store.read_table("pai_masks").to_pylist() if r["branch"]]
    assert {(r["branch"], r["method"], r["density"]) for r in branches} == {
        ("shuffle", "snip", 0.3),
        ("shuffle", "snip", 0.1),
    }
    parents = {r["run_id"] for r in masks}
    assert {r["parent_id"] for r in branches} <= parents
    assert main(["branch", outcome.uri, "--kind", "sideways"]) == 2


def test_scoring_only_runs_write_mask_rows_and_train_nothing(pai_spec_dict, tmp_path):
    spec_dict = pai_spec_dict
    spec_dict["training"].update(epochs=0, lr_drops=[])
    spec_dict["pai"].update(methods=["synflow"], densities=[0.05], rounds=[1, 3])
    spec = parse_spec(spec_dict)
    assert spec.trial_iterations() == 1
    outcome = run_experiment(spec, "name: tinypai\n", str(tmp_path / "results"))
    assert outcome.trials == 2 and outcome.errored_trials == []
    store = ExperimentStore(outcome.uri)
    masks = store.read_table("pai_masks").to_pylist()
    assert sorted(r["rounds"] for r in masks) == [1, 3]
    assert all(0 < r["effective_density"] <= r["actual_density"] for r in masks)
    epochs = store.read_table("pai_epochs").to_pylist()
    assert [(r["epoch"], r["final"], r["train_loss"]) for r in epochs] == [(0, True, None)] * 2
