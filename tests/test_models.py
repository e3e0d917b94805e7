"""The model registry: every network builds from its spec, deterministically, and takes masks."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from lotterylab.platform.models import (
    FCN,
    MODELS,
    FCNModel,
    apply_masks,
    build_model,
    first_layer_name,
    glorot_,
    model_names,
    model_task,
    output_layer_name,
    prunable_names,
)
from lotterylab.platform.spec import ModelSpec

SPEC = TypeAdapter(ModelSpec)


def build(name, shape, classes=10, seed=0, **extra):
    return build_model(SPEC.validate_python({"name": name, **extra}), shape, classes, seed)


def test_fcn_weights_are_glorot_from_the_seeds_generator():
    model = build("fcn", (1, 4, 4), classes=3, seed=7, hidden=[5])
    generator = torch.Generator().manual_seed(7)
    expected = torch.empty(5, 16)
    glorot_(expected, "glorot_normal", generator)
    assert torch.equal(model.layers[0].weight, expected)
    assert torch.equal(model.layers[0].bias, torch.zeros(5))
    flat = build_model(FCNModel(hidden=[5]), (16, 1, 1), 3, 7)  # the input width is all it uses
    assert all(torch.equal(v, flat.state_dict()[k]) for k, v in model.state_dict().items())


def test_fcn_prunable_names_keep_the_layer_order_and_flags():
    model = build("fcn", (1, 4, 4), classes=3, hidden=[5, 4])
    assert prunable_names(model, prune_biases=False, prune_output=False) == [
        "layers.0.weight",
        "layers.1.weight",
    ]
    assert prunable_names(model, prune_biases=True, prune_output=True) == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
        "layers.2.weight",
        "layers.2.bias",
    ]
    assert first_layer_name(model) == "layers.0.weight"
    assert output_layer_name(model) == "layers.2.weight"
    no_bias = build("fcn", (1, 4, 4), classes=3, hidden=[5], bias=False)
    assert prunable_names(no_bias, prune_biases=True) == ["layers.0.weight", "layers.1.weight"]


def test_registry_entries_match_the_spec_union():
    assert set(get_args(get_args(ModelSpec)[0])) == {entry.spec for entry in MODELS.values()}
    for name, entry in MODELS.items():
        spec = SPEC.validate_python({"name": name})
        assert type(spec) is entry.spec and model_task(spec) == entry.task
        for field, info in entry.spec.model_fields.items():
            assert info.description, f"{name}.{field} has no description"
    assert model_task(SPEC.validate_python({"name": "deeplabv3_resnet50"})) == "segmentation"


def test_fcn_first_layer_inputs_are_the_eval_batch_norm_and_change_nothing():
    model = build("fcn", (1, 4, 4), classes=3, hidden=[5])
    norm = model.norms[0]
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = torch.randn(6, 1, 4, 4)
    seen = model.first_layer_inputs(x)
    flat = x.flatten(1)
    by_hand = (flat - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    torch.testing.assert_close(seen, by_hand * norm.weight + norm.bias)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(x).shape == model(flat).shape == (6, 3)


def test_resnet20_has_openlths_parameter_count():
    model = build("resnet20", (3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert first_layer_name(model) == "conv.weight"
    assert output_layer_name(model) == "fc.weight"
    names = prunable_names(model)
    assert len(names) == 22 and names[-1] == "fc.weight"
    assert "fc.weight" not in prunable_names(model, prune_output=False)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("fcn", (3, 8, 8)),
        ("fcn", (3, 32, 32)),
        ("resnet20", (3, 8, 8)),
        ("resnet20", (3, 32, 32)),
        ("vgg16_bn", (3, 8, 8)),
        ("vgg16_bn", (3, 32, 32)),
        ("resnet18", (3, 16, 16)),
    ],
)
def test_models_are_deterministic_for_a_seed_and_run(name, shape):
    a, b, c = build(name, shape, seed=1), build(name, shape, seed=1), build(name, shape, seed=2)
    same = [torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict()]
    other = [torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict()]
    assert all(same) and not all(other)
    a.eval()
    with torch.no_grad():
        assert a(torch.randn(2, *shape)).shape == (2, 10)


def test_vgg_pools_stop_at_one_pixel():
    model = build("vgg16_bn", (3, 8, 8)).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 8, 8)).shape == (1, 512, 1, 1)
        assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


def test_torchvision_models_build_without_weights_and_run():
    resnet = build("resnet50", (3, 32, 32), classes=7).eval()
    deeplab = build("deeplabv3_resnet50", (3, 32, 32), classes=21).eval()
    with torch.no_grad():
        assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        assert deeplab(torch.randn(2, 3, 32, 32))["out"].shape == (2, 21, 32, 32)
    assert (first_layer_name(resnet), output_layer_name(resnet)) == ("conv1.weight", "fc.weight")
    assert output_layer_name(deeplab) == "classifier.4.weight"
    assert prunable_names(deeplab)[0] == "backbone.conv1.weight"


def test_apply_masks_zeroes_pruned_weights_and_checks_names_and_shapes():
    model = build("resnet20", (3, 8, 8))
    mask = torch.rand_like(model.conv.weight) < 0.5
    apply_masks(model, {"conv.weight": mask})
    assert bool((model.conv.weight[~mask] == 0).all())
    with pytest.raises(ValueError, match=r"mask for conv.weight has shape \(3,\)"):
        apply_masks(model, {"conv.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not parameters"):
        apply_masks(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    fcn = build("fcn", (1, 4, 4), classes=3, hidden=[5])
    assert isinstance(fcn, FCN)
    second = fcn.layers[1].weight.detach().clone()
    apply_masks(fcn, {"layers.0.weight": torch.zeros(5, 16, dtype=torch.bool)})
    assert not fcn.layers[0].weight.any() and torch.equal(fcn.layers[1].weight, second)


def test_fcn_loads_states_saved_with_mask_buffers():
    saved = build("fcn", (1, 4, 4), classes=3, hidden=[5]).state_dict()
    legacy = {
        **saved,
        "layers.0.weight_mask": torch.ones(5, 16, dtype=torch.bool),
        "layers.0.bias_mask": torch.ones(5, dtype=torch.bool),
    }
    fresh = build("fcn", (1, 4, 4), classes=3, hidden=[5])
    with torch.no_grad():
        fresh.layers[0].weight.zero_()
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.layers[0].weight, saved["layers.0.weight"])


def test_unknown_model_names_list_the_registry():
    with pytest.raises(ValidationError) as info:
        SPEC.validate_python({"name": "resnet"})
    assert all(name in str(info.value) for name in model_names())
