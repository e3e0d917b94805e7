"""Every registry entry keeps its registry's contract; a new entry is tested by being registered.

Each test is parametrised over the entries registered now (built-ins and installed plugins), so
it checks what an entry declares against what it does, never a list of names.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lotterylab.platform.data.registry import DATA_SOURCES, DataContext, source, train_size
from lotterylab.platform.imp.siblings import SIBLINGS, RoundContext
from lotterylab.platform.models import MODELS, build_model, first_layer_name, model_names
from lotterylab.platform.pruning import METHODS, keep_top, method_names, prune_at_init
from lotterylab.platform.spec import parse_spec

SHAPE = (3, 32, 32)


def _described(spec_class: type) -> None:
    for field, info in spec_class.model_fields.items():
        assert info.description, f"{spec_class.__name__}.{field} has no description"
    with pytest.raises(ValueError):
        spec_class.model_validate({"no_such_field": 1})


# -- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", model_names())
def test_model_entry_builds_deterministically_and_does_what_it_declares(name):
    entry = MODELS[name]
    spec = entry.spec.model_validate({"name": name})
    _described(entry.spec)
    a, b, c = (build_model(spec, SHAPE, 5, seed) for seed in (1, 1, 2))
    state = a.state_dict()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in state.items())
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in state.items())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        out = a.eval()(x)
    if entry.task == "segmentation":
        assert out["out"].shape == (2, 5, *SHAPE[1:])
    else:
        assert out.shape == (2, 5)
    if entry.dense_first_layer:
        first = dict(a.named_modules())[first_layer_name(a).removesuffix(".weight")]
        assert isinstance(first, nn.Linear) and first.in_features == math.prod(SHAPE)
        with torch.no_grad():
            assert a.first_layer_inputs(x).shape == (2, math.prod(SHAPE))
        assert all(torch.equal(v, state[k]) for k, v in a.state_dict().items())
    if entry.stacks:
        from lotterylab.platform.imp.batched import BatchedFCN

        BatchedFCN([a, b])  # refuses models whose shapes it cannot stack


# -- pruning methods -----------------------------------------------------------------------


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 8, 8, generator=generator), torch.arange(8) % 4) for _ in range(2)]


@pytest.mark.parametrize("name", method_names())
def test_pruning_method_is_exact_deterministic_and_leaves_the_model_alone(name):
    entry = METHODS[name]
    _described(entry.hparams)
    torch.manual_seed(0)
    net = SmallConvNet()
    state = copy.deepcopy(net.state_dict())
    rounds = 1 if entry.single_shot else 3
    total = net.conv.weight.numel() + net.fc.weight.numel()
    masks = prune_at_init(net, name, 0.3, data=_batches(), rounds=rounds, seed=4)
    again = prune_at_init(net, name, 0.3, data=_batches(), rounds=rounds, seed=4)
    assert set(masks) == {"conv.weight", "fc.weight"}
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * total)
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    if entry.needs_data:
        with pytest.raises(ValueError, match=name):
            prune_at_init(net, name, 0.3)


# -- IMP siblings ---------------------------------------------------------------------------


def _context(round_: int, alive: dict, counts: dict, seed: int = 3) -> RoundContext:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"layers.0.weight": (6, 16), "layers.1.weight": (5, 6)}

    def weights():
        return {n: torch.randn(s, generator=generator) for n, s in shapes.items()}

    dense_final, trained, rewind = weights(), weights(), weights()
    inputs = torch.randn(64, 16, generator=generator)
    return RoundContext(
        round=round_,
        seed=seed,
        alive=alive,
        keep_counts=counts,
        trained=trained,
        dense_final=dense_final,
        rewind_weights=rewind,
        first_layer="layers.0.weight",
        first_layer_inputs=lambda: inputs,
    )


@pytest.mark.parametrize("name", list(SIBLINGS))
def test_imp_sibling_keeps_imps_counts_and_nests_its_masks(name):
    sibling = SIBLINGS[name]
    assert sibling.description
    dense = {"layers.0.weight": torch.ones(6, 16, dtype=bool), "layers.1.weight": torch.ones(5, 6)}
    dense["layers.1.weight"] = dense["layers.1.weight"].bool()
    first = {"layers.0.weight": 58, "layers.1.weight": 20}
    ctx = _context(0, dense, first)
    kept = keep_top(sibling.scores(ctx), dense, first)
    assert all(torch.equal(kept[k], keep_top(sibling.scores(ctx), dense, first)[k]) for k in kept)
    assert {n: int(m.sum()) for n, m in kept.items()} == first
    second = {"layers.0.weight": 30, "layers.1.weight": 12}
    kept_again = keep_top(sibling.scores(_context(1, kept, second)), kept, second)
    assert {n: int(m.sum()) for n, m in kept_again.items()} == second
    assert all(bool((kept_again[n] <= kept[n]).all()) for n in kept)  # nested
    assert isinstance(sibling.trains(False), bool) and sibling.trains(True)


# -- data sources ---------------------------------------------------------------------------

# values for fields a source requires, by field name: the registry, not this test, names sources
_REQUIRED = {"xi": [1.0, 3.0], "of": "base"}
_BASE = {"type": "nlgp", "name": "base", "grid": 4, "xi": [1.0, 2.0], "n_train": 8, "n_test": 4}


@pytest.mark.parametrize("name", list(DATA_SOURCES))
def test_data_source_declares_what_it_builds_or_names_the_missing_file(name, tmp_path):
    entry = DATA_SOURCES[name]
    _described(entry.spec)
    fields = entry.spec.model_fields
    values = {"type": name, "name": "data"}
    values.update({k: v for k, v in _REQUIRED.items() if k in fields})
    if "root" in fields:
        values["root"] = str(tmp_path / "nowhere")
    for split in ("n_train", "n_test"):
        if split in fields:
            values[split] = 8 if split == "n_train" else 4
    if "grid" in fields:
        values["grid"] = 4
    spec = parse_spec(
        {
            "name": "contract",
            "kind": "pai",
            "datasets": ([_BASE] if entry.derived else []) + [values],
            "model": {"name": next(m for m in MODELS if MODELS[m].task == entry.task)},
            "training": {"batch_size": 2, "epochs": 1},
            "pai": {"methods": [method_names()[0]], "scoring_batch_size": 2, "scoring_batches": 1},
        }
    )
    context = DataContext(spec.datasets)
    if "root" in fields:
        with pytest.raises((OSError, ValueError)) as info:
            context.build("data")
        assert str(tmp_path / "nowhere") in str(info.value)
        return
    data = context.build("data")
    facts = context.facts_of("data")
    assert tuple(data.image_shape) == source(facts).image_shape(facts) == spec.image_shape("data")
    assert data.num_classes == source(facts).num_classes(facts) == spec.num_classes("data")
    assert data.size("train") == train_size(facts) == spec.train_size("data")
