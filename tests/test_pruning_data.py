"""Pruning at initialisation on data held the PyTorch way: DataLoaders, iterators, plain MLPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lotterylab.platform.pruning import prune_at_init
from lotterylab.platform.pruning.batches import DEFAULT_SCORING_BATCHES
from lotterylab.platform.spec import PAISpec


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 3))


def dataset(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 20, generator=generator)
    return TensorDataset(x, torch.arange(n) % 3)


def batches(data: TensorDataset, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data.tensors
    return list(zip(x.split(size), y.split(size), strict=True))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_default_batches_follow_the_spec_default():
    assert PAISpec.model_fields["scoring_batches"].default == DEFAULT_SCORING_BATCHES == 2


@pytest.mark.parametrize("method", ["snip", "grasp", "px"])
def test_a_dataloader_gives_the_masks_of_the_same_list_of_batches(method):
    data = dataset()
    loader = DataLoader(data, batch_size=16, shuffle=False)
    listed = batches(data, 16)
    assert len(listed) == 6
    from_loader = prune_at_init(mlp(), method, 0.2, data=loader)
    # a loader is read for DEFAULT_SCORING_BATCHES batches: the first two of the list
    assert same(from_loader, prune_at_init(mlp(), method, 0.2, data=listed[:2]))
    assert not same(from_loader, prune_at_init(mlp(), method, 0.2, data=listed))
    three = prune_at_init(mlp(), method, 0.2, data=loader, max_batches=3)
    assert same(three, prune_at_init(mlp(), method, 0.2, data=listed[:3]))
    assert same(three, prune_at_init(mlp(), method, 0.2, data=listed, max_batches=3))
    kept = sum(int(m.sum()) for m in from_loader.values())
    assert kept == round(0.2 * (20 * 50 + 50 * 3))


def test_an_endless_iterator_is_read_only_max_batches_far():
    data = dataset()
    listed = batches(data, 16)
    drawn = []

    def endless():
        while True:
            batch = listed[len(drawn) % len(listed)]
            drawn.append(batch)
            yield batch

    masks = prune_at_init(mlp(), "snip", 0.1, data=endless(), max_batches=4)
    assert len(drawn) == 4
    assert same(masks, prune_at_init(mlp(), "snip", 0.1, data=listed[:4]))
    drawn.clear()
    prune_at_init(mlp(), "snip", 0.1, data=endless())
    assert len(drawn) == DEFAULT_SCORING_BATCHES


def test_an_mlp_prunes_with_synflow_without_an_input_shape():
    masks = prune_at_init(mlp(), "synflow", 0.3)
    total = 20 * 50 + 50 * 3
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * total) == 345
    given = prune_at_init(mlp(), "synflow", 0.3, hparams={"input_shape": (20,)})
    assert same(masks, given)
    assert same(
        prune_at_init(mlp(), "synflow_l2", 0.3, rounds=3),
        prune_at_init(mlp(), "synflow_l2", 0.3, rounds=3, hparams={"input_shape": (20,)}),
    )


@pytest.mark.parametrize(
    ("data", "max_batches", "words"),
    [
        (torch.zeros(4, 20), None, ["DataLoader", "Tensor"]),
        ({"x": 1}, None, ["iterable", "dict"]),
        (iter([]), None, ["at least one"]),
        ([], None, ["at least one"]),
        ([(torch.zeros(2, 20), torch.zeros(2, dtype=torch.int64))], 0, ["max_batches", "0"]),
    ],
)
def test_bad_data_is_a_clear_error(data, max_batches, words):
    with pytest.raises(ValueError) as err:
        prune_at_init(mlp(), "snip", 0.5, data=data, max_batches=max_batches)
    for word in words:
        assert word in str(err.value)
