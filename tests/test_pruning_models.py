"""Pruning at initialisation on the registry's ResNet-20 (CIFAR-10 shapes, batch norm)."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import TypeAdapter

from lotterylab.platform.models import build_model
from lotterylab.platform.pruning import keep_top, method_names, prunable_names, score
from lotterylab.platform.spec import ModelSpec

GRID = [0.8 ** (2 * k) for k in range(1, 10)]  # paper 2's densities, 36 % ... 98.2 % sparsity


def random_batches(seed, n=2, size=32, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn((size, 3, 32, 32), generator=g) + shift,
            torch.randint(0, 10, (size,), generator=g),
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def resnet20():
    spec = TypeAdapter(ModelSpec).validate_python({"name": "resnet20"})
    return build_model(spec, (3, 32, 32), 10, 0)


def test_every_method_prunes_resnet20_at_every_grid_density(resnet20):
    state = copy.deepcopy(resnet20.state_dict())
    training = resnet20.training
    data = random_batches(0)
    names = prunable_names(resnet20)
    assert names[0].endswith("weight") and len(names) >= 21  # stem, 18 convs, shortcuts, fc
    masks = {
        n: torch.ones_like(p, dtype=torch.bool)
        for n, p in resnet20.named_parameters()
        if n in names
    }
    total = sum(m.numel() for m in masks.values())
    for method in method_names():
        scores = score(resnet20, method, masks, data, seed=0)
        assert set(scores) == set(names)
        assert all(bool(torch.isfinite(s).all()) for s in scores.values()), method
        for density in GRID:
            kept = keep_top(scores, masks, round(density * total))
            assert sum(int(m.sum()) for m in kept.values()) == round(density * total), method
    assert all(torch.equal(state[k], v) for k, v in resnet20.state_dict().items())
    assert resnet20.training == training


def test_px_scores_on_resnet20_have_a_spread_and_follow_the_data(resnet20):
    a = score(resnet20, "px", data=random_batches(1))
    b = score(resnet20, "px", data=random_batches(2, shift=0.3))
    flat_a = torch.cat([s.flatten() for s in a.values()])
    nonzero = flat_a[flat_a > 0]
    assert nonzero.numel() > 0.9 * flat_a.numel()
    # with train-mode batch norm on an all-ones input every score would be rounding noise
    assert float(nonzero.max() / nonzero.min()) > 10
    flat_b = torch.cat([s.flatten() for s in b.values()])
    assert not torch.allclose(flat_a / flat_a.sum(), flat_b / flat_b.sum(), rtol=1e-3, atol=0)
