"""Tickets taken elsewhere: stored trained weights, models from the store, exported layouts."""

import pytest
import torch

from lotterylab.analysis.experiment import open_experiment
from lotterylab.cli import main
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.export import export_state, prune_identity
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.lineage import IMP, IMPLineage, LineageConfig, trained_path
from lotterylab.platform.models import apply_masks, build_model
from lotterylab.platform.pai.run import PaIConfig, PaIRun
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore


@pytest.fixture
def lineage_store(tiny_spec_dict, tmp_path):
    tiny_spec_dict["imp"].update(rounds=1, baselines=["oneshot"])
    tiny_spec_dict["training"]["steps"] = 20
    spec = parse_spec(tiny_spec_dict)
    store = ExperimentStore(str(tmp_path / "exp"))
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))
    data = build_dataset(spec.datasets, "nlgp")
    lineage = IMPLineage(LineageConfig(store.name, "nlgp", 0, spec), data, store)
    while not lineage.done:
        lineage.run_round()
    return spec, store, data, lineage


def outputs(model, data):
    x = data.batch("test", torch.arange(50))
    with torch.no_grad():
        return model.eval()(x.view(50, *data.image_shape))


def test_every_round_stores_each_trained_methods_weights(lineage_store):
    spec, store, data, lineage = lineage_store
    for method, n in ((IMP, 0), (IMP, 1), ("oneshot", 1)):
        state = store.read_tensors(trained_path(lineage.id, method, n))
        masks = mk.masks_after_round(lineage.removal_rounds[method], n - 1)
        assert all(bool((state[k][~m] == 0).all()) for k, m in masks.items())
    experiment = open_experiment(store.uri)
    trained = experiment.ticket(lineage.id, "oneshot", 1, weights="trained")
    rewind = experiment.ticket(lineage.id, "oneshot", 1)
    masks = experiment.masks(lineage.id, "oneshot", 1)
    manual = build_model(spec.model, data.image_shape, data.num_classes, 0)
    manual.load_state_dict(store.read_tensors(f"lineages/{lineage.id}/rewind.pt"))
    apply_masks(manual, masks)
    assert torch.equal(outputs(rewind, data), outputs(manual, data))
    assert not torch.equal(outputs(trained, data), outputs(rewind, data))
    weight = dict(trained.named_parameters())["layers.0.weight"]
    assert bool((weight[~masks["layers.0.weight"]] == 0).all())
    dense = experiment.ticket(lineage.id, "oneshot", 0, weights="trained")  # the shared dense net
    assert all(bool(p.ne(0).all()) for n, p in dense.named_parameters() if n in masks)


@pytest.mark.parametrize("format", ["torch_prune", "dense"])
def test_exported_tickets_load_into_a_fresh_model_and_match(lineage_store, tmp_path, format):
    spec, store, data, lineage = lineage_store
    out = tmp_path / f"ticket-{format}.pt"
    args = ["export", store.uri, "--lineage", lineage.id, "--round", "1", "-o", str(out)]
    assert main([*args, "--format", format]) == 0
    state = torch.load(out, weights_only=True)
    experiment = open_experiment(store.uri)
    reference = experiment.ticket(lineage.id, IMP, 1, weights="trained")
    masks = experiment.masks(lineage.id, IMP, 1)
    fresh = build_model(spec.model, data.image_shape, data.num_classes, 123)
    if format == "torch_prune":
        assert {"layers.0.weight_orig", "layers.0.weight_mask"} <= set(state)
        assert "layers.0.weight" not in state and "layers.2.weight" in state
        assert torch.equal(state["layers.0.weight_mask"], masks["layers.0.weight"].float())
        prune_identity(fresh, masks)
    fresh.load_state_dict(state)
    assert torch.equal(outputs(fresh, data), outputs(reference, data))


def test_bad_ticket_requests_name_what_is_allowed(lineage_store, tmp_path, capsys):
    _, store, _, lineage = lineage_store
    experiment = open_experiment(store.uri)
    with pytest.raises(ValueError, match=r"methods are \['imp', 'oneshot'\]"):
        experiment.ticket(lineage.id, "random", 1)
    with pytest.raises(ValueError, match=r"finished rounds are 0\.\.1"):
        experiment.ticket(lineage.id, IMP, 2)
    with pytest.raises(ValueError, match=r"not one of \['rewind', 'trained'\]"):
        experiment.ticket(lineage.id, IMP, 1, weights="final")
    out = str(tmp_path / "x.pt")
    base = ["export", store.uri, "--lineage", lineage.id, "-o", out]
    assert main([*base, "--round", "1", "--format", "onnx"]) == 2
    assert "not one of ['torch_prune', 'dense']" in capsys.readouterr().err
    assert main([*base, "--round", "5"]) == 2
    assert main(base) == 2
    assert "--round" in capsys.readouterr().err


def test_pai_runs_store_init_and_trained_models(pai_spec_dict, tmp_path):
    pai_spec_dict["model"] = {"name": "fcn", "hidden": [32, 16]}
    pai_spec_dict["datasets"][0].update(channels=1)
    pai_spec_dict["training"].update(augment="none", epochs=1, lr_drops=[])
    spec = parse_spec(pai_spec_dict)
    store = ExperimentStore(str(tmp_path / "pai"))
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))
    data = build_dataset(spec.datasets, "nlgp3")
    run = PaIRun(PaIConfig(store.name, "nlgp3", 0, "magnitude", 0.2, 1, spec), data, store)
    run.prune()
    while not run.done:
        run.run_epoch()
    experiment = open_experiment(store.uri)
    trained = experiment.pai_model(run.id, weights="trained")
    assert torch.equal(outputs(trained, data), outputs(run.model, data))
    init = experiment.pai_model(run.id)
    weight = dict(init.named_parameters())["layers.0.weight"]
    assert int(weight.ne(0).sum()) == int(run.masks["layers.0.weight"].sum())
    out = tmp_path / "pai.pt"
    assert main(["export", store.uri, "--run", run.id, "--format", "dense", "-o", str(out)]) == 0
    fresh = build_model(spec.model, data.image_shape, data.num_classes, 7)
    fresh.load_state_dict(torch.load(out, weights_only=True))
    assert torch.equal(outputs(fresh, data), outputs(run.model, data))
    with pytest.raises(ValueError, match=r"not one of \['init', 'trained'\]"):
        experiment.pai_model(run.id, weights="rewind")


def test_export_state_refuses_unknown_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="does not hold"):
        export_state(model, {"1.weight": torch.ones(2, 3, dtype=torch.bool)})
