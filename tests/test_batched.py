"""K FCN lineages trained as one batched computation equal the same lineages trained alone."""

from __future__ import annotations

import copy

import pytest
import torch

from lotterylab.platform import masks as mk
from lotterylab.platform.batched import train_batched
from lotterylab.platform.data.nlgp import make_nlgp, make_nlgp_clone
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


def fresh_models(data, count=3):
    spec = FCNModel(hidden=[32, 16])
    return [build_fcn(spec, data.image_shape, data.num_classes, seed=10 + k) for k in range(count)]


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


def train_alone(model, data, spec, seed, start, masks, capture_step):
    """``training.train`` on one lineage, keeping its state before ``capture_step``."""
    captured = {}

    def capture(step, current):
        if step == capture_step:
            captured.update(copy.deepcopy(current.state_dict()))

    if masks:
        apply_masks(model, masks)
    train(model, data, spec, seed, start_step=start, on_step=capture, masks=masks)
    return captured or None


def assert_states_close(batched: dict, alone: dict):
    assert set(batched) == set(alone)
    for name, value in alone.items():
        if value.dtype == torch.int64:  # num_batches_tracked
            assert torch.equal(batched[name], value), name
        elif value.dtype.is_floating_point:
            torch.testing.assert_close(batched[name], value, rtol=1e-5, atol=1e-6, msg=name)


def run_both(datasets, spec, starts, capture_step):
    data = [datasets[0], datasets[1], datasets[0]]
    seeds = [3, 4, 5]
    models = fresh_models(data[0])
    masks = lineage_masks(models[0])
    start_states = [copy.deepcopy(m.state_dict()) for m in models]
    alone_models = copy.deepcopy(models)
    alone_captures = [
        train_alone(m, d, spec, s, t, mask, capture_step)
        for m, d, s, t, mask in zip(alone_models, data, seeds, starts, masks, strict=True)
    ]
    captures = train_batched(
        models, data, spec, seeds, start_step=starts, masks=masks, capture_step=capture_step
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
def test_batched_lineages_end_where_lineages_trained_alone_end(datasets, recipe):
    spec = TrainingSpec(lr=0.05, batch_size=20, steps=50, rewind_step=5, **recipe)
    models, alone, masks, start_states, captures, alone_captures = run_both(
        datasets, spec, [0, 0, 0], spec.rewind_step
    )
    for k, (model, reference) in enumerate(zip(models, alone, strict=True)):
        state = model.state_dict()
        assert_states_close(state, reference.state_dict())
        assert_states_close(captures[k], alone_captures[k])
        assert all(value.is_contiguous() for value in captures[k].values())
        assert int(state["norms.0.num_batches_tracked"]) == spec.steps
        moved = (state["layers.0.weight"] - start_states[k]["layers.0.weight"]).abs().max()
        assert moved > 1e-2  # the lineage really trained
        for name, mask in (masks[k] or {}).items():
            assert torch.equal(state[name][~mask], torch.zeros(int((~mask).sum())))
            assert torch.equal(captures[k][name][~mask], torch.zeros(int((~mask).sum())))
        alive = masks[k] or {n: torch.ones_like(state[n], dtype=torch.bool) for n in PRUNED}
        alive = {n: alive[n] for n in PRUNED}
        kept = mk.magnitude_prune(state, alive, 0.3, "layer")
        kept_alone = mk.magnitude_prune(reference.state_dict(), alive, 0.3, "layer")
        for name in PRUNED:
            assert torch.equal(kept[name], kept_alone[name]), (k, name)


def test_lineages_from_different_start_steps_keep_their_own_schedule(datasets):
    """A dense round and two rewound rounds in one batch, leaving it as each finishes."""
    spec = TrainingSpec(
        lr=0.05, batch_size=20, steps=50, rewind_step=5, momentum=0.9, lr_drops=[10, 35]
    )
    starts = [0, 5, 30]
    models, alone, masks, start_states, captures, alone_captures = run_both(
        datasets, spec, starts, capture_step=5
    )
    for model, reference in zip(models, alone, strict=True):
        assert_states_close(model.state_dict(), reference.state_dict())
    tracked = [int(m.state_dict()["norms.0.num_batches_tracked"]) for m in models]
    assert tracked == [spec.steps - s for s in starts]
    # lineage 1 starts at the capture step: its capture is its masked start state
    assert captures[2] is None and alone_captures[2] is None
    for k in (0, 1):
        assert_states_close(captures[k], alone_captures[k])
    start = {n: t * masks[1].get(n, 1) for n, t in start_states[1].items()}
    assert_states_close(captures[1], start)


def test_single_lineage_without_masks_matches_train(datasets):
    spec = TrainingSpec(lr=0.1, batch_size=25, steps=30, rewind_step=1)
    (model,) = fresh_models(datasets[1], count=1)
    model.eval()
    reference = copy.deepcopy(model)
    train(reference, datasets[1], spec, seed=7)
    assert train_batched([model], [datasets[1]], spec, [7]) is None
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
