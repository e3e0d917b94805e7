"""K FCN lineages trained as one batched computation equal the same lineages trained alone.

The comparisons run on the test device (``--device``); on CUDA a batched product sums in
another order than a single one, so the tolerances there are a little looser.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lotterylab.platform.data.nlgp import make_nlgp, make_nlgp_clone
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.batched import train_batched
from lotterylab.platform.models import FCNModel, apply_masks, build_fcn
from lotterylab.platform.spec import TrainingSpec
from lotterylab.platform.training import train

NLGP_ARGS = {
    "grid": 8,
    "channels": 1,
    "xi": [1.0, 3.0],
    "gain": 3.0,
    "n_train": 200,
    "n_test": 40,
    "seed": 0,
}
PRUNED = ("layers.0.weight", "layers.1.weight")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny products on a shared machine: a second thread only waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def datasets():
    return make_nlgp(**NLGP_ARGS), make_nlgp_clone(**{**NLGP_ARGS, "seed": 1})


def fresh_models(data, count=3, device="cpu"):
    spec = FCNModel(hidden=[32, 16])
    return [
        build_fcn(spec, data.image_shape, data.num_classes, seed=10 + k).to(device)
        for k in range(count)
    ]


def random_masks(model, seed, names, density):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) < density for n in names}


def lineage_masks(model):
    """A dense lineage, one pruned in both hidden layers, one also in a bias and the output."""
    return [
        None,
        random_masks(model, 1, PRUNED, 0.5),
        random_masks(model, 2, (*PRUNED, "layers.0.bias", "layers.2.weight"), 0.3),
    ]


def train_alone(model, data, spec, seed, start, masks, capture_step, device):
    """``training.train`` on one lineage, keeping its state before ``capture_step``."""
    captured = {}

    def capture(step, current):
        if step == capture_step:
            captured.update(copy.deepcopy(current.state_dict()))

    if masks:
        apply_masks(model, masks)
    train(model, data, spec, seed, start_step=start, on_step=capture, masks=masks, device=device)
    return captured or None


def on_cpu(state: dict) -> dict:
    return {name: value.cpu() for name, value in state.items()}


def assert_states_close(batched: dict, alone: dict):
    assert set(batched) == set(alone)
    batched, alone = on_cpu(batched), on_cpu(alone)
    cuda = any(v.is_cuda for v in alone.values())
    rtol, atol = (1e-4, 1e-5) if cuda else (1e-5, 1e-6)
    for name, value in alone.items():
        if value.dtype == torch.int64:  # num_batches_tracked
            assert torch.equal(batched[name], value), name
        elif value.dtype.is_floating_point:
            torch.testing.assert_close(batched[name], value, rtol=rtol, atol=atol, msg=name)


def run_both(datasets, spec, starts, capture_step, device):
    data = [datasets[0], datasets[1], datasets[0]]
    seeds = [3, 4, 5]
    models = fresh_models(data[0], device=device)
    masks = lineage_masks(models[0])
    masks = [m and {n: t.to(device) for n, t in m.items()} for m in masks]
    start_states = [copy.deepcopy(m.state_dict()) for m in models]
    alone_models = copy.deepcopy(models)
    alone_captures = [
        train_alone(m, d, spec, s, t, mask, capture_step, device)
        for m, d, s, t, mask in zip(alone_models, data, seeds, starts, masks, strict=True)
    ]
    captures = train_batched(
        models,
        data,
        spec,
        seeds,
        start_step=starts,
        masks=masks,
        capture_step=capture_step,
        device=device,
    )
    return models, alone_models, masks, start_states, captures, alone_captures


@pytest.mark.parametrize(
    "recipe",
    [
        {"optimizer": "sgd", "lr_drops": [20, 40]},
        {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-3},
        {"optimizer": "nesterov", "momentum": 0.9, "weight_decay": 5e-3},
    ],
    ids=["plain", "momentum", "nesterov"],
)
def test_batched_lineages_end_where_lineages_trained_alone_end(datasets, recipe, device):
    spec = TrainingSpec(lr=0.05, batch_size=20, steps=50, rewind_step=5, **recipe)
    models, alone, masks, start_states, captures, alone_captures = run_both(
        datasets, spec, [0, 0, 0], spec.rewind_step, device
    )
    for k, (model, reference) in enumerate(zip(models, alone, strict=True)):
        assert captures[k]["layers.0.weight"].device.type == device.type
        state, reference_state = on_cpu(model.state_dict()), on_cpu(reference.state_dict())
        capture, start = on_cpu(captures[k]), on_cpu(start_states[k])
        assert_states_close(state, reference_state)
        assert_states_close(capture, alone_captures[k])
        assert all(value.is_contiguous() for value in captures[k].values())
        assert int(state["norms.0.num_batches_tracked"]) == spec.steps
        moved = (state["layers.0.weight"] - start["layers.0.weight"]).abs().max()
        assert moved > 1e-2  # the lineage really trained
        for name, mask in (masks[k] or {}).items():
            mask = mask.cpu()
            assert torch.equal(state[name][~mask], torch.zeros(int((~mask).sum())))
            assert torch.equal(capture[name][~mask], torch.zeros(int((~mask).sum())))
        alive = masks[k] or {n: torch.ones_like(state[n], dtype=torch.bool) for n in PRUNED}
        alive = {n: alive[n].cpu() for n in PRUNED}
        kept = mk.magnitude_prune(state, alive, 0.3, "layer")
        kept_alone = mk.magnitude_prune(reference_state, alive, 0.3, "layer")
        for name in PRUNED:
            # on CUDA a weight within rounding of the threshold may fall either side
            differ = int((kept[name] != kept_alone[name]).sum())
            assert differ <= (2 if device.type == "cuda" else 0), (k, name, differ)


def test_lineages_from_different_start_steps_keep_their_own_schedule(datasets, device):
    """A dense round and two rewound rounds in one batch, leaving it as each finishes."""
    spec = TrainingSpec(
        lr=0.05, batch_size=20, steps=50, rewind_step=5, momentum=0.9, lr_drops=[10, 35]
    )
    starts = [0, 5, 30]
    models, alone, masks, start_states, captures, alone_captures = run_both(
        datasets, spec, starts, capture_step=5, device=device
    )
    for model, reference in zip(models, alone, strict=True):
        assert_states_close(model.state_dict(), reference.state_dict())
    tracked = [int(m.state_dict()["norms.0.num_batches_tracked"]) for m in models]
    assert tracked == [spec.steps - s for s in starts]
    # lineage 1 starts at the capture step: its capture is its masked start state
    assert captures[2] is None and alone_captures[2] is None
    for k in (0, 1):
        assert_states_close(captures[k], alone_captures[k])
    start = {n: t * masks[1][n] if n in masks[1] else t for n, t in start_states[1].items()}
    assert_states_close(captures[1], start)


def test_single_lineage_without_masks_matches_train(datasets, device):
    spec = TrainingSpec(lr=0.1, batch_size=25, steps=30, rewind_step=1)
    (model,) = fresh_models(datasets[1], count=1, device=device)
    model.eval()
    reference = copy.deepcopy(model)
    train(reference, datasets[1], spec, seed=7, device=device)
    assert train_batched([model], [datasets[1]], spec, [7], device=device) is None
    assert_states_close(model.state_dict(), reference.state_dict())
    assert model.training and reference.training


def bad_inputs(datasets):
    data = datasets[0]
    models = fresh_models(data, count=2)
    wide = build_fcn(FCNModel(hidden=[32, 8]), data.image_shape, data.num_classes, seed=0)
    spec = TrainingSpec(lr=0.1, batch_size=20, steps=10, rewind_step=1)
    pair = [data, data]
    mask = {"layers.0.weight": torch.ones(3, 3, dtype=torch.bool)}
    return [
        ((models[:1] + [wide], pair, spec, [0, 1]), {}, "models[1]: dims"),
        ((models, pair, spec, [0]), {}, "seeds: 1 entries for 2 models"),
        ((models, [data], spec, [0, 1]), {}, "datasets: 1 entries"),
        ((models, pair, spec, [0, 1]), {"start_step": 10}, "start_step[0] is 10"),
        ((models, pair, spec, [0, 1]), {"capture_step": -1}, "capture_step is -1"),
        ((models, pair, spec, [0, 1]), {"masks": [None, mask]}, "masks[1]['layers.0.weight']"),
        (
            (models, pair, spec, [0, 1]),
            {"masks": [{"x": mask["layers.0.weight"]}, None]},
            "masks[0] names 'x'",
        ),
        (
            (models, pair, spec.model_copy(update={"batch_size": 500}), [0, 1]),
            {},
            "batch_size (500) exceeds the 200",
        ),
    ]


def test_bad_input_names_the_field_and_what_is_allowed(datasets):
    for args, kwargs, message in bad_inputs(datasets):
        with pytest.raises(ValueError) as error:
            train_batched(*args, **kwargs)
        assert message in str(error.value)
