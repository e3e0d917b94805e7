import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lotterylab.platform.metrics import connectivity, layer_widths
from lotterylab.platform.models import build_model
from lotterylab.platform.models.resnet_cifar import BasicBlock, ResNet20Model
from lotterylab.platform.pruning import prune_at_init


def _ones(model):
    return {n: torch.ones_like(p) for n, p in model.named_parameters() if p.dim() > 1}


class Residual(nn.Module):
    """1x1 stem, one basic block (with a 1x1 shortcut when ``stride`` > 1), pool, classifier."""

    def __init__(self, stride: int):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1, bias=False)
        self.block = BasicBlock(2, 4 if stride > 1 else 2, stride)
        self.fc = nn.Linear(4 if stride > 1 else 2, 3)

    def forward(self, x):
        out = self.block(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _block_masks(model, pruned):
    masks = _ones(model)
    for name in pruned:
        masks[name] = torch.zeros_like(masks[name])
    return masks


def test_dead_unit_feeding_nothing():
    """Hidden unit 1 has inputs but no outgoing weight: its inputs are kept, not effective."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    masks = {
        "0.weight": torch.tensor([[1, 1, 0], [1, 0, 1]]),
        "2.weight": torch.tensor([[1, 0], [1, 0]]),
    }
    c = connectivity(model, masks, (3,))
    assert c.effective["0.weight"].tolist() == [[True, True, False], [False, False, False]]
    assert c.effective["2.weight"].tolist() == [[True, False], [True, False]]
    assert c.effective_density == pytest.approx(4 / 10)  # nominal 6 / 10
    assert layer_widths(masks).density == pytest.approx(0.6)
    assert c.effective_units == {"0.weight": 1, "2.weight": 2}
    assert not c.disconnected
    assert c.log10_paths == pytest.approx(math.log10(4))  # 2 inputs x 2 outputs


def test_residual_block_with_all_convs_pruned_is_bypassed():
    model = Residual(stride=1)
    masks = _block_masks(model, ["block.conv1.weight", "block.conv2.weight"])
    c = connectivity(model, masks, (1, 4, 4))
    assert not c.disconnected
    assert c.effective_units == {
        "stem.weight": 2,
        "block.conv1.weight": 0,
        "block.conv2.weight": 0,
        "fc.weight": 3,
    }
    assert c.effective_density == pytest.approx((2 + 6) / (2 + 36 + 36 + 6))
    # 16 pixels x 2 stem channels x 3 outputs, the global pool summing positions
    assert c.log10_paths == pytest.approx(math.log10(96), rel=1e-12)
    assert layer_widths(masks).collapsed  # zero-width layers, yet connected


def test_dead_end_conv_and_live_shortcut():
    """conv2 pruned: conv1 keeps its weights but reaches nothing; the 1x1 shortcut carries all."""
    model = Residual(stride=2)
    masks = _block_masks(model, ["block.conv2.weight"])
    c = connectivity(model, masks, (1, 4, 4))
    assert c.effective_units == {
        "stem.weight": 2,
        "block.conv1.weight": 0,
        "block.conv2.weight": 0,
        "block.shortcut.0.weight": 4,
        "fc.weight": 3,
    }
    assert c.effective_density == pytest.approx((2 + 8 + 12) / (2 + 72 + 144 + 8 + 12))
    # the stride-2 shortcut reads 4 pixels; each: 2 stem x 4 shortcut x 3 outputs
    assert c.log10_paths == pytest.approx(math.log10(4 * 24), rel=1e-12)


def test_cut_shortcut_disconnects():
    model = Residual(stride=2)
    masks = _block_masks(model, ["block.conv1.weight", "block.shortcut.0.weight"])
    c = connectivity(model, masks, (1, 4, 4))
    assert c.disconnected and c.log10_paths is None
    assert c.effective_density == 0.0
    assert set(c.effective_units.values()) == {0}
    # cutting only the shortcut leaves the convs' paths
    alive = connectivity(model, _block_masks(model, ["block.shortcut.0.weight"]), (1, 4, 4))
    assert not alive.disconnected and alive.effective_units["block.conv2.weight"] == 4


def test_max_pool_counts_every_window_path():
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1, bias=False), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 1)
    )
    c = connectivity(model, _ones(model), (1, 4, 4))
    assert c.log10_paths == pytest.approx(math.log10(16), rel=1e-12)
    assert c.effective_density == 1.0


def test_taps_that_only_see_padding_are_not_effective():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Flatten(), nn.Linear(1, 1))
    c = connectivity(model, _ones(model), (1, 1, 1))
    assert c.effective["0.weight"].flatten().tolist() == [i == 4 for i in range(9)]
    assert c.effective_density == pytest.approx(2 / 10)


def test_bad_masks_name_the_problem():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="'1.weight'"):
        connectivity(model, {"1.weight": torch.ones(2, 3)}, (3,))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        connectivity(model, {"0.weight": torch.ones(3, 2)}, (3,))


def test_model_is_untouched_and_dense_resnet20_counts():
    model = build_model(ResNet20Model(name="resnet20", width=4), (3, 8, 8), 10, 0)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    c = connectivity(model, _ones(model), (3, 8, 8))
    assert c.effective_density == 1.0 and not c.disconnected
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_synflow_single_shot_disconnects_resnet20_where_iterated_does_not():
    """Paper 2's Table 2 case: full-width ResNet-20 at density 0.018 on 32 px inputs."""
    model = build_model(ResNet20Model(name="resnet20"), (3, 32, 32), 10, 0)
    shape = {"input_shape": [3, 32, 32]}
    one = prune_at_init(model, "synflow", 0.018, rounds=1, hparams=shape)
    c1 = connectivity(model, one, (3, 32, 32))
    widths = layer_widths(one)
    assert c1.disconnected and c1.log10_paths is None and c1.effective_density == 0.0
    zero = {n for n, a in widths.active_units.items() if a == 0}
    assert {"blocks.3.shortcut.0.weight", "blocks.6.shortcut.0.weight"} <= zero
    many = prune_at_init(model, "synflow", 0.018, rounds=100, hparams=shape)
    c100 = connectivity(model, many, (3, 32, 32))
    assert not c100.disconnected
    assert 30 < c100.log10_paths < 33
    assert 0.9 * 0.018 < c100.effective_density <= layer_widths(many).density
