"""Resume from the platform's own store: nothing Tune pickled is ever read back.

Anyone who can write the bucket can put files in an experiment's folder; the platform's own
states are torch files loaded with ``weights_only``, and Tune's pickles (``tuner.pkl``,
``params.pkl``, trial and searcher state) are never opened by ``resume``, ``figures``,
``analyze`` or ``branch``.
"""

from __future__ import annotations

import builtins
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lotterylab.cluster.launch import load_stored_spec, run_experiment
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.trial_states import (
    KEEP,
    adopt_legacy_checkpoints,
    lineage_folder,
    read_state,
    write_state,
)
from lotterylab.trainables.search import SEARCH_KEY, sampled_values, search_options

FIXTURES = Path(__file__).parent / "fixtures"


class Payload:
    """Unpickling this creates ``marker``: proof that code found in the store ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _plant(folder: Path, marker: Path) -> list[Path]:
    """Pickles carrying the payload wherever Tune keeps its own state."""
    payload = pickle.dumps(Payload(marker))
    planted = [folder / "tuner.pkl", folder / "searcher-state-2099-01-01_00-00-00.pkl"]
    planted += [trial / "params.pkl" for trial in folder.glob("trial-*")]
    for path in planted:
        path.write_bytes(payload)
    state = folder / "experiment_state-2099-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": [[payload.hex(), payload.hex()]]}))
    return [*planted, state]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", *args], capture_output=True, text=True
    )


def test_resume_figures_analyze_and_branch_never_unpickle_tunes_state(tiny_spec_dict, tmp_path):
    tiny_spec_dict.update(name="hostile", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["imp"].update(rounds=2, baselines=["oneshot"])
    spec = parse_spec(tiny_spec_dict)
    outcome = run_experiment(spec, "name: hostile\n", str(tmp_path / "results"))
    assert outcome.errored_trials == []
    store = ExperimentStore(outcome.uri)
    folder = Path(store.path(""))
    before = store.read_table("rounds").to_pylist()
    [lineage] = {r["lineage_id"] for r in before}
    # the unfinished last round: its state and rows go, as if the driver died inside it
    for name in store.list(f"{lineage_folder(lineage)}/states"):
        if name.startswith("step-000003"):
            (folder / lineage_folder(lineage) / "states" / name).unlink()
    for part in folder.glob("tables/rounds/*/round-0002-*.parquet"):
        part.unlink()

    marker = tmp_path / "payload-ran"
    planted = _plant(folder, marker)
    assert len(planted) == 4  # tuner.pkl, searcher state, one trial's params.pkl, trial state

    resumed = _cli("resume", store.uri)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    after = store.read_table("rounds").to_pylist()
    # round 2 computed again from the stored state of round 1, equal to the first time
    key = lambda r: (r["method"], r["round"])  # noqa: E731
    columns = ("method", "round", "test_accuracy", "sparsity", "rf_width_median")
    assert sorted(({c: r[c] for c in columns} for r in after), key=key) == sorted(
        ({c: r[c] for c in columns} for r in before), key=key
    )
    for command in (
        ("figures", store.uri),
        ("analyze", store.uri),
        ("branch", store.uri, "--kind", "reinit", "--round", "1"),
    ):
        done = _cli(*command)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    _plant(folder, marker)  # the branch experiment's folder too, and resume it again
    for branch in folder.glob("branch-*"):
        _plant(branch, marker)
    again = _cli("branch", store.uri, "--kind", "reinit", "--round", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not marker.exists()


def test_a_crafted_checkpoint_of_an_earlier_version_is_refused(tmp_path):
    """Experiments written before states lived in the store resume from Tune's checkpoint
    folders, read as the platform's own torch files: a pickle there is refused, not run."""
    shutil.copytree(FIXTURES / "stored" / "stored_imp", tmp_path / "stored_imp")
    newest = sorted((tmp_path / "stored_imp").glob("trial-*/checkpoint_*/lineage.pt"))[-1]
    marker = tmp_path / "payload-ran"
    newest.write_bytes(pickle.dumps(Payload(marker)))
    done = _cli("resume", str(tmp_path / "stored_imp"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert str(newest) in done.stderr and "weights_only" in done.stderr
    assert not marker.exists()


def test_states_of_an_earlier_version_are_adopted_once(tmp_path):
    shutil.copytree(FIXTURES / "stored" / "stored_imp", tmp_path / "stored_imp")
    store = ExperimentStore(str(tmp_path / "stored_imp"))
    adopted = adopt_legacy_checkpoints(store)
    assert sorted(adopted) == sorted(f"lineages/{i}" for i in store.list("lineages"))
    for folder in adopted:
        state = read_state(store, folder)
        assert state.result is None and state.state["next_round"] == 3  # rounds 0..2 done
    # from now on the experiment keeps its own states: Tune's folders are not read again
    for path in (tmp_path / "stored_imp").glob("trial-*/checkpoint_*/lineage.pt"):
        path.write_bytes(b"not a torch file")
    assert adopt_legacy_checkpoints(store) == []


def test_the_newest_complete_state_is_read_and_two_are_kept(tmp_path):
    store = ExperimentStore(str(tmp_path / "exp"))
    folder = lineage_folder("lin")
    for step in range(4):
        write_state(store, folder, step, {"lineage_id": "lin", "w": torch.full((3,), step)})
    kept = sorted(n for n in store.list(f"{folder}/states") if n.endswith(".pt"))
    assert len(kept) == KEEP and kept == ["step-000002.pt", "step-000003.pt"]
    assert torch.equal(read_state(store, folder).state["w"], torch.full((3,), 3))
    # a writer that died between the state and its checksum leaves the previous state
    (Path(store.path(folder, "states", "step-000003.pt.sha256"))).unlink()
    assert torch.equal(read_state(store, folder).state["w"], torch.full((3,), 2))
    # a state that is not a torch file is an error naming it
    store.write_artifact(f"{folder}/states/step-000004.pt", pickle.dumps({"x": 1}))
    with pytest.raises(StoreError, match="step-000004.pt.*weights_only"):
        read_state(store, folder)


def test_a_resumed_optuna_search_suggests_what_it_had_sampled_first(tiny_spec_dict, tmp_path):
    tiny_spec_dict["search"] = {
        "space": {"training.lr": {"choice": [0.1, 0.2, 0.3]}},
        "algorithm": "optuna",
        "num_samples": 3,
        "seed": 5,
    }
    spec = parse_spec(tiny_spec_dict)
    store = ExperimentStore(str(tmp_path / "search"))
    for lineage, lr in (("a", 0.3), ("b", 0.3), ("c", 0.1)):
        store.write_json(f"lineages/{lineage}/{SEARCH_KEY}.json", {"training.lr": lr})
    assert sampled_values(spec, store.uri) == [{"training.lr": 0.1}, {"training.lr": 0.3}]
    optuna = search_options(spec, store_uri=store.uri)["search_alg"].searcher.searcher
    suggested = [optuna.suggest(f"t{i}")[SEARCH_KEY]["training.lr"] for i in range(2)]
    assert suggested == [0.1, 0.3]
    # values that are not of the search space are refused, naming the file
    store.write_json("lineages/d/search.json", {"model.hidden": [4]})
    with pytest.raises(StoreError, match="lineages/d/search.json"):
        search_options(spec, store_uri=store.uri)


def test_the_stored_spec_reads_back_equal_to_the_run_spec(tiny_spec_dict, tmp_path):
    """A number such as 1e-06 stays a number (YAML 1.1 would read the JSON text as a string)."""
    tiny_spec_dict["training"]["weight_decay"] = 1e-06
    tiny_spec_dict["search"] = {"space": {"training.lr": {"choice": [0.1, 1e-06]}}}
    spec = parse_spec(tiny_spec_dict)
    store = ExperimentStore(str(tmp_path / "exp"))
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))
    assert load_stored_spec(store) == spec
    assert load_stored_spec(store).search.space["training.lr"].choice == [0.1, 1e-06]
