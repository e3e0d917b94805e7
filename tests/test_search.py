"""Searches: spec validation of ``search``, ids per configuration, the Optuna grid repeater, and
a random search with ASHA through real Ray Tune, killed and resumed from the command line."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from lotterylab.analysis.experiment import open_experiment
from lotterylab.analysis.searches import search_table
from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.pai.run import pai_grid
from lotterylab.platform.spec import SpecError, parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.trainables.pai_run import pai_config
from lotterylab.trainables.search import (
    GridRepeater,
    grid_points,
    param_space,
    search_options,
    trial_dirname_for,
    trial_spec,
)

BAD_LR = 1e-6  # no learning in 60 steps: chance accuracy, far below every other rate


def with_search(spec: dict, **search) -> dict:
    return {**spec, "search": search}


# -- validation ------------------------------------------------------------------------------
LR = {"training.lr": {"loguniform": [0.01, 1.0]}}


@pytest.mark.parametrize(
    "search, path, fragment",
    [
        (
            {"space": {"training.learning_rate": {"uniform": [0.1, 1]}}},
            "search.space.training.learning_rate",
            "allowed: ['imp.fraction'",
        ),
        ({"space": {"seeds": {"choice": [1, 2]}}}, "search.space.seeds", "allowed:"),
        (
            {"space": {"datasets.0.gain": {"uniform": [1, 2]}}},
            "search.space.datasets.0.gain",
            "allowed:",
        ),
        (
            {"space": {"training.lr": {"uniform": [-1.0, 1.0]}}},
            "search.space.training.lr",
            "Input should be greater than 0",
        ),
        (
            {"space": {"training.lr": {"loguniform": [0.0, 1.0]}}},
            "search.space.training.lr.loguniform.0",
            "greater than 0",
        ),
        (
            {"space": {"training.lr": {"uniform": [0.1, float("inf")]}}},
            "search.space.training.lr.uniform.1",
            "finite number",
        ),
        (
            {"space": {"training.lr": {"uniform": [1.0, 0.1]}}},
            "search.space.training.lr",
            "low must be smaller than high",
        ),
        (
            {"space": {"training.lr": {"uniform": [0.1, 1], "choice": [0.1]}}},
            "search.space.training.lr",
            "exactly one of",
        ),
        (
            {"space": {"training.lr": {"normal": [0, 1]}}},
            "search.space.training.lr.normal",
            "unknown key",
        ),
        (
            {"space": {"training.batch_size": {"loguniform": [10, 100]}}},
            "search.space.training.batch_size",
            "allowed: randint, choice, grid",
        ),
        (
            {"space": {"training.batch_size": {"randint": [10, 402]}}},
            "search.space.training.batch_size",
            "exceeds the n_train (400)",
        ),
        (
            {"space": {"training.rewind_step": {"choice": [0, 20, 200]}}},
            "search.space.training.rewind_step",
            "rewind_step (200) must be smaller than steps",
        ),
        (
            {
                "space": {
                    "training.steps": {"choice": [10, 100]},
                    "training.rewind_step": {"choice": [5, 50]},
                },
                "num_samples": 2,
            },
            "search.space",
            "training.steps=10, training.rewind_step=50",
        ),
        (
            {"space": {"imp.scope": {"uniform": [0, 1]}}},
            "search.space.imp.scope",
            "allowed: choice, grid",
        ),
        (
            {"space": {"imp.scope": {"choice": ["layer", "global"]}}, "num_samples": 3},
            "search.num_samples",
            "exceeds the 2 distinct configurations",
        ),
        (
            {"space": {"training.lr": {"choice": [0.1, 0.1]}}},
            "search.space.training.lr",
            "must not repeat",
        ),
        (
            {"space": {"training.lr": {"choice": [0.1, 0.2]}}, "algorithm": "grid"},
            "search.space.training.lr",
            "algorithm grid takes grid values only",
        ),
        (
            {"space": {"training.lr": {"grid": [0.1, 0.2]}}, "algorithm": "optuna"},
            "search.space.training.lr",
            "grid values need algorithm: grid",
        ),
        (
            {"space": {"training.lr": {"grid": [0.1, 0.2]}}, "algorithm": "grid", "num_samples": 4},
            "search.num_samples",
            "every combination once",
        ),
        ({"space": LR, "algorithm": "bayes"}, "search.algorithm", "'bayes'"),
        ({"space": LR, "metric": "loss"}, "search.metric", "allowed: ['test_accuracy'"),
        ({"space": LR, "metric": "test_accuracy", "mode": "best"}, "search.mode", "'best'"),
        (
            {"space": LR, "scheduler": {"asha": {"metric": "train_loss"}}},
            "search.scheduler.asha.metric",
            "not reported by kind imp",
        ),
        (
            {"space": LR, "scheduler": {"asha": {"grace_period": 4}}},
            "search.scheduler.asha.grace_period",
            "make it at most 3",
        ),
        (
            {"space": LR, "scheduler": {"asha": {"reduction_factor": 1}}},
            "search.scheduler.asha.reduction_factor",
            "greater than 1",
        ),
        (
            {"space": LR, "scheduler": {"hyperband": {}}},
            "search.scheduler.hyperband",
            "unknown key",
        ),
        ({"space": LR, "seed": -1}, "search.seed", "greater than or equal to 0"),
        ({"space": {}}, "search.space", "at least 1 item"),
        (
            {"space": {"training.lr": {"uniform": [True, 1.0]}}},
            "search.space.training.lr.uniform.0",
            "not a boolean",
        ),
    ],
)
def test_bad_search_names_the_key_path(tiny_spec_dict, search, path, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(with_search(tiny_spec_dict, **search), "s.yaml")
    message = str(info.value)
    assert f"  {path}" in message, message
    assert fragment in message, message


def test_pai_search_checks_its_own_fields(pai_spec_dict):
    bad = [
        ({"space": {"training.steps": {"choice": [10, 20]}}}, "search.space.training.steps"),
        ({"space": {"pai.hparams.snip.batch_norm": {"choice": ["eval"]}}}, "pai.methods: [snip]"),
        ({"space": {"training.epochs": {"choice": [1, 2]}}}, "never take effect"),
        (
            {"space": {"training.lr": {"uniform": [0.01, 0.1]}}, "metric": "train_loss"},
            "search.mode: train_loss is minimised",
        ),
    ]
    for search, fragment in bad:
        with pytest.raises(SpecError, match=r"(?s)" + fragment.replace("[", r"\[")):
            parse_spec(with_search(pai_spec_dict, **search))


def test_searched_values_give_every_configuration_its_own_ids(tiny_spec_dict, pai_spec_dict):
    spec = parse_spec(
        with_search(
            tiny_spec_dict,
            space={
                "training.lr": {"loguniform": [0.01, 1.0]},
                "imp.scope": {"choice": ["layer", "global"]},
            },
            num_samples=5,
            seed=7,
        )
    )
    configurations = spec.search.configurations()
    assert configurations == parse_spec(spec.model_dump(mode="json")).search.configurations()
    assert len(configurations) == 5
    assert all(0.01 <= c["training.lr"] < 1.0 for c in configurations)
    ids = set()
    for values in configurations:
        run_spec = spec.with_values(values)
        assert run_spec.search is None
        assert run_spec.training.lr == values["training.lr"]
        assert run_spec.imp.scope == values["imp.scope"]
        ids |= {LineageConfig("x", "nlgp", s, run_spec).lineage_id for s in spec.seeds}
    assert len(ids) == 5 * len(spec.seeds)
    # the base spec's own values give the base spec's ids: the hash covers the computation only
    plain = parse_spec(tiny_spec_dict)
    same = spec.with_values({"training.lr": 0.1, "imp.scope": "layer"})
    assert (
        LineageConfig("x", "nlgp", 0, same).lineage_id
        == LineageConfig("x", "nlgp", 0, plain).lineage_id
    )
    # a grid search crosses every value; every PaI run of every configuration has its own id
    pai = parse_spec(
        with_search(
            pai_spec_dict,
            space={
                "training.lr": {"grid": [0.05, 0.1]},
                "pai.schedule": {"grid": ["exponential", "linear"]},
            },
            algorithm="grid",
        )
    )
    assert len(pai.search.configurations()) == 4
    space = param_space(pai)
    assert set(space) == {"run", "search"}
    assert space["search"]["pai.schedule"] == {"grid_search": ["exponential", "linear"]}
    run_ids = {
        pai_config(pai.with_values(values), pai.name, run).run_id
        for values in pai.search.configurations()
        for run in pai_grid(pai)
    }
    assert len(run_ids) == 4 * len(pai_grid(pai))


def test_random_search_crosses_its_configurations_with_the_grid(tiny_spec_dict):
    spec = parse_spec(
        with_search(tiny_spec_dict, space={"training.lr": {"uniform": [0.05, 0.5]}}, num_samples=3)
    )
    space = param_space(spec)
    members = [{"dataset": d, "seed": s} for d in ("nlgp", "nlgp_clone") for s in (0, 1)]
    assert space["lineages"] == {"grid_search": [[m] for m in members]}
    assert space["search"] == {"grid_search": spec.search.configurations()}
    config = {"lineages": [members[3]], "search": spec.search.configurations()[2]}
    trial = Trial("IMPLineageTrainable", config=config, stub=True)
    run_spec = trial_spec(spec, trial.config)
    expected = LineageConfig(spec.name, "nlgp_clone", 1, run_spec).lineage_id
    assert trial_dirname_for(spec)(trial) == f"trial-{expected}"
    # grouped lineages: each group is one point of the grid, crossed with the configurations
    groups = [members[:2], members[2:]]
    assert param_space(spec, groups=groups)["lineages"] == {"grid_search": groups}
    trial = Trial("IMPLineageTrainable", config={**config, "lineages": groups[1]}, stub=True)
    first = LineageConfig(spec.name, "nlgp_clone", 0, run_spec).lineage_id
    assert trial_dirname_for(spec)(trial) == f"trial-{first}-group-of-2"


def test_auto_groups_give_each_trial_slot_of_the_cluster_one_group(tiny_spec_dict):
    import ray

    from lotterylab.platform.data.registry import build_datasets
    from lotterylab.trainables.search import lineage_groups, trial_slots

    datasets = build_datasets(parse_spec(tiny_spec_dict).datasets)
    members = [{"dataset": d, "seed": s} for d in ("nlgp", "nlgp_clone") for s in (0, 1)]

    def groups(cpu=1, gpu=0, concurrent=0, setting="auto", model=None):
        tiny_spec_dict["resources"].update(cpu=cpu, gpu=gpu)
        tiny_spec_dict["run"].update(max_concurrent_trials=concurrent, batch_lineages=setting)
        if model is not None:
            tiny_spec_dict["model"] = model
        spec = parse_spec(tiny_spec_dict)
        return trial_slots(spec), lineage_groups(spec, datasets, trial_slots(spec))

    ray.init(num_cpus=3, address="local", include_dashboard=False)
    try:
        # three CPUs, four lineages of one shape: two per trial (a third trial of one would
        # not end sooner than the trials of two)
        assert groups() == (3, [members[:2], members[2:]])
        assert groups(cpu=0.5) == (6, [[m] for m in members])
        assert groups(concurrent=1) == (1, [members])
        assert groups(cpu=2) == (1, [members])
        assert groups(setting="off") == (3, [[m] for m in members])
        assert groups(setting=3) == (3, [members[:2], members[2:]])
        # no GPU in this cluster: a trial asking for one still gets one group of all
        assert groups(gpu=1) == (1, [members])
        # convolutional lineages do not stack: one per trial
        resnet = {"name": "resnet20"}
        assert groups(model=resnet) == (3, [[m] for m in members])
    finally:
        ray.shutdown()


def test_grid_repeater_runs_each_suggestion_on_the_grid_and_survives_a_restore(
    tiny_spec_dict, tmp_path
):
    spec = parse_spec(
        with_search(
            tiny_spec_dict,
            space={"training.lr": {"choice": [0.1, 0.2]}},
            algorithm="optuna",
            num_samples=2,
            scheduler={"asha": {"grace_period": 1}},
        )
    )
    options = search_options(spec)
    assert options["num_samples"] == 2 * 4 and options["max_concurrent_trials"] is None
    assert isinstance(options["scheduler"], tune.schedulers.ASHAScheduler)
    repeater = options["search_alg"].searcher
    assert isinstance(repeater, GridRepeater) and repeater.grid == grid_points(spec)
    grid = [{"dataset": "nlgp", "seed": 0}, {"dataset": "nlgp", "seed": 1}]

    def fresh() -> SearchGenerator:
        space = {"search": {"training.lr": tune.choice([0.1, 0.2])}}
        optuna = OptunaSearch(
            space=OptunaSearch.convert_search_space(space), metric="acc", mode="max", seed=3
        )
        return SearchGenerator(GridRepeater(optuna, grid))

    search = fresh()
    repeater = search.searcher
    first, second = repeater.suggest("a"), repeater.suggest("b")
    assert [first["seed"], second["seed"]] == [0, 1]
    assert first["search"] == second["search"]
    third = repeater.suggest("c")  # a new group: the repeated suggestion is asked again
    assert third["search"] != first["search"] and third["seed"] == 0
    repeater.on_trial_complete("a", {"acc": 0.6})
    repeater.on_trial_complete("b", {"acc": 0.8})
    study = repeater.searcher._ot_study
    assert [t.value for t in study.trials if t.state.name == "COMPLETE"] == [pytest.approx(0.7)]
    search.save_to_dir(str(tmp_path), session_str="s")

    restored = fresh()
    restored.restore_from_dir(str(tmp_path))
    again = restored.searcher
    fourth = again.suggest("d")
    assert fourth["search"] == third["search"] and fourth["seed"] == 1
    assert again.suggest("e") == Searcher.FINISHED  # both values of the space have run
    again.on_trial_complete("c", {"acc": 0.5})
    again.on_trial_complete("d", None)  # a trial without the metric counts as missing
    # repeats of a configuration that finished are told its mean, the others failed
    done = {
        (t.params["search/training.lr"], round(t.value, 9))
        for t in again.searcher._ot_study.trials
        if t.state.name == "COMPLETE"
    }
    assert done == {(first["search"]["training.lr"], 0.7), (third["search"]["training.lr"], 0.5)}


# -- end to end on Ray Tune ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lotterylab.cli", *args]


def optuna_order(spec) -> list:
    """The configurations Optuna suggests, in order, replayed outside Tune: with fewer finished
    trials than its startup count, TPE samples at random from its seed, whatever the results."""
    search = spec.search
    space = {"search": {p: tune.choice(d.choice) for p, d in search.space.items()}}
    optuna = OptunaSearch(
        space=OptunaSearch.convert_search_space(space),
        metric=search.metric,
        mode=search.mode,
        seed=search.seed,
    )
    repeater = GridRepeater(optuna, grid_points(spec))
    trials = [repeater.suggest(f"t{i}") for i in range(search.num_samples * len(spec.seeds))]
    assert len(optuna._ot_study.trials) < optuna._ot_study.sampler._n_startup_trials
    return [t["search"] for t in trials[:: len(spec.seeds)]]


def asha_search(tiny_spec_dict, name):
    """4 Optuna samples × 2 seeds of a one-round search, the bad rate suggested last."""
    tiny_spec_dict.update(name=name, datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["imp"].update(rounds=1, baselines=["oneshot"], measure_cavity=False)
    tiny_spec_dict["resources"]["cpu"] = 0.5  # four lineages at a time on two CPUs
    tiny_spec_dict["search"] = {
        "space": {"training.lr": {"choice": [0.1, 0.2, 0.3, BAD_LR]}},
        "algorithm": "optuna",
        "num_samples": 4,
        "seed": 8,
        "scheduler": {"asha": {"metric": "test_accuracy", "mode": "max", "grace_period": 1}},
    }
    spec = parse_spec(tiny_spec_dict)
    configurations = optuna_order(spec)
    # each configuration runs on seed 0 then seed 1, the bad rate last: its lineages reach
    # ASHA's rung after others reported there, and ASHA stops them
    assert [c["training.lr"] for c in configurations][-1] == BAD_LR
    assert len({c["training.lr"] for c in configurations}) == 4
    return spec, configurations


def searched_rows(store, spec, configurations):
    """The IMP rows of a finished search, checked to cover every configuration × seed once."""
    experiment = open_experiment(store.uri)
    rows = experiment.rounds()
    rows = rows[rows["method"] == "imp"]
    values = experiment.search_values()
    # every configuration ran on both seeds, each lineage under its own id and trial folder
    pairs = zip(rows["lineage_id"], rows["seed"], strict=True)
    ran = {(values[i]["training.lr"], s) for i, s in pairs}
    assert ran == {(c["training.lr"], s) for c in configurations for s in spec.seeds}
    assert rows["lineage_id"].nunique() == 8
    assert sorted(n for n in store.list("") if n.startswith("trial-")) == sorted(
        f"trial-{i}" for i in rows["lineage_id"].unique()
    )
    assert (rows["training.lr"] == rows["search.training.lr"]).all()
    return experiment, rows, values


def check_ranking(store, experiment, rows):
    """The report ranks the configurations that finished by their final accuracy over seeds."""
    ranked = search_table(experiment)
    assert set(ranked["n_seeds"]) == {2}
    best = ranked[ranked["rank"] == 1].iloc[0]
    assert best["n_finished"] >= 1
    final = rows[rows["lineage_id"].isin(best["ids"]) & (rows["round"] == 1)]["test_accuracy"]
    assert len(final) == best["n_finished"]
    assert best["test_accuracy_mean"] == pytest.approx(final.mean())
    assert best["test_accuracy_std"] == pytest.approx(final.std(ddof=0))
    scored = ranked[ranked["n_finished"] > 0]
    assert best["test_accuracy_mean"] == scored["test_accuracy_mean"].max()
    report = store.read_bytes("figures/report.md").decode()
    assert "## Search: best configurations" in report
    lr = best["search.training.lr"]
    line = f"| 1 | {lr:.4g} | {final.mean():.4f} ± {final.std(ddof=0):.4f} |"
    assert line in report, report[:2000]
    return ranked, scored, report


@pytest.mark.slow
def test_asha_stops_the_lineages_of_a_bad_configuration(
    cluster, tiny_spec_dict, tmp_path, write_spec
):
    # one trial at a time: every lineage reports its round 0 before the next starts, so ASHA
    # decides on the same results in the same order however busy the machine is
    tiny_spec_dict["run"].update(max_concurrent_trials=1, batch_lineages="off")
    spec, configurations = asha_search(tiny_spec_dict, "searchasha")
    root = tmp_path / "results"
    store = ExperimentStore(str(root / "searchasha"))
    done = subprocess.run(
        cli(
            "run", write_spec(tiny_spec_dict), "--storage", str(root), "--address", cluster.address
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    experiment, rows, values = searched_rows(store, spec, configurations)
    # ASHA stopped the bad rate's lineages after round 0; the others kept their rows
    reached = rows.groupby("lineage_id")["round"].max()
    bad = {i for i, v in values.items() if v["training.lr"] == BAD_LR}
    assert len(bad) == 2 and all(reached[i] == 0 for i in bad)
    assert len(reached[reached == 1].index) >= 2
    ranked, scored, report = check_ranking(store, experiment, rows)
    assert ranked[ranked["search.training.lr"] == BAD_LR]["rank"].item() > len(scored)
    assert f"| {BAD_LR:.4g} |" in report and "0/2 | 0 (stopped early)" in report


@pytest.mark.slow
def test_optuna_search_with_asha_survives_a_killed_driver(
    cluster, tiny_spec_dict, tmp_path, write_spec
):
    # ASHA's stops before the kill are kept, but its rungs are not, so which lineages it stops
    # afterwards depends on when the driver died; this test checks the search survives the kill
    spec, configurations = asha_search(tiny_spec_dict, "searchkill")
    root = tmp_path / "results"
    store = ExperimentStore(str(root / "searchkill"))
    driver = subprocess.Popen(
        cli(
            "run", write_spec(tiny_spec_dict), "--storage", str(root), "--address", cluster.address
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    give_up = time.monotonic() + 900  # a safety net for a hung driver, not a deadline
    while not glob.glob(store.path("lineages", "*", "states", "step-*.pt.sha256")):
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        assert time.monotonic() < give_up, "the driver made no progress at all"
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    lineages_at_kill = set(store.list("lineages"))
    assert len(lineages_at_kill) < 8, "killed too late"

    resumed = subprocess.run(
        cli("resume", store.uri, "--address", cluster.address),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    experiment, rows, _ = searched_rows(store, spec, configurations)
    assert lineages_at_kill <= set(rows["lineage_id"])
    check_ranking(store, experiment, rows)
