"""The analysis notebook runs top to bottom on small stored IMP and PaI experiments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp.group import LineageGroup
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.pai.run import PaIConfig, PaIRun
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "analysis.ipynb"


def _stored(spec, store: ExperimentStore) -> None:
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))


def _imp_experiment(spec_dict: dict, root: Path) -> str:
    spec_dict.update(datasets=spec_dict["datasets"][:1])
    spec_dict["imp"].update(rounds=2, measure_cavity=False)
    spec = parse_spec(spec_dict)
    store = ExperimentStore(str(root / "tiny"))
    _stored(spec, store)
    data = build_dataset(spec.datasets, "nlgp")
    group = LineageGroup(
        [IMPLineage(LineageConfig(store.name, "nlgp", s, spec), data, store) for s in spec.seeds]
    )
    while not group.done:
        group.run_round()
    return store.uri


def _pai_experiment(spec_dict: dict, root: Path) -> str:
    spec_dict.update(seeds=[0, 1])
    spec_dict["model"] = {"name": "fcn", "hidden": [16]}
    spec_dict["training"].update(epochs=1, lr_drops=[], augment="none")
    spec_dict["pai"].update(methods=["random", "magnitude"], densities=[0.1, 0.4])
    spec = parse_spec(spec_dict)
    store = ExperimentStore(str(root / "tinypai"))
    _stored(spec, store)
    data = build_dataset(spec.datasets, "nlgp3")
    for seed in spec.seeds:
        for method in spec.pai.methods:
            for density in spec.pai.densities:
                config = PaIConfig(store.name, "nlgp3", seed, method, density, 1, spec)
                run = PaIRun(config, data, store)
                run.prune()
                while not run.done:
                    run.run_epoch()
    return store.uri


def test_analysis_notebook_runs_on_stored_experiments(
    tiny_spec_dict, pai_spec_dict, tmp_path, monkeypatch
):
    monkeypatch.setenv("LOTTERYLAB_IMP_EXPERIMENT", _imp_experiment(tiny_spec_dict, tmp_path))
    monkeypatch.setenv("LOTTERYLAB_PAI_EXPERIMENT", _pai_experiment(pai_spec_dict, tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    # the seed statistics hold both seeds for every data set × method × round
    stats = outputs[2][0]["data"]["text/plain"]
    assert "n_seeds" in stats
    images = sum("image/png" in o.get("data", {}) for cell in outputs for o in cell)
    assert images == 3  # paper 1's figure, the ticket masks, paper 2's figure
    accuracy = " ".join(o.get("data", {}).get("text/plain", "") for o in outputs[-1])
    assert "magnitude" in accuracy and "random" in accuracy and "0.1" in accuracy
    assert not any(o.get("output_type") == "error" for cell in outputs for o in cell)
    assert os.path.exists(NOTEBOOK)
