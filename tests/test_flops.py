import pytest
import torch
from torch import nn

from lotterylab.platform.metrics import count_macs
from lotterylab.platform.models import build_model
from lotterylab.platform.models.fcn import FCNModel
from lotterylab.platform.models.resnet_cifar import ResNet20Model


def test_small_conv_net_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 5x5 out: 25 positions x 108 weights
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, stride=2),  # 2x2 out: 4 positions x 72 weights
        nn.Flatten(),
        nn.Linear(8, 5),  # 40 weights once
    )
    mask = torch.zeros(4, 3, 3, 3)
    mask[0].view(-1)[:10] = 1  # channel 0 keeps 10 of its 27 kernel weights
    mask[2, 1] = 1  # channel 2 keeps 9
    r = count_macs(model, {"0.weight": mask, "4.weight": torch.ones(5, 8)}, (3, 5, 5))
    assert r.dense == {"0.weight": 2700, "2.weight": 288, "4.weight": 40}
    assert r.masked == {"0.weight": 25 * 19, "2.weight": 288, "4.weight": 40}
    assert (r.dense_total, r.masked_total) == (3028, 475 + 288 + 40)
    assert r.columns() == {"macs": 803, "dense_macs": 3028}


def test_mlp_by_hand():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {
        "0.weight": torch.tensor([[1, 1, 0, 0, 0, 0]] + [[0] * 6] * 2 + [[0, 0, 1, 1, 1, 0]]),
        "2.weight": torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]]),
    }
    r = count_macs(model, masks, (6,))
    assert r.dense == {"0.weight": 24, "2.weight": 8}
    assert r.masked == {"0.weight": 5, "2.weight": 3}


def test_resnet20_dense_count_matches_the_published_41m():
    model = build_model(ResNet20Model(name="resnet20"), (3, 32, 32), 10, 0)
    r = count_macs(model, None, (3, 32, 32))
    assert r.dense_total == 40_813_184  # 40.8 M: convs, 1x1 shortcuts and the classifier
    assert r.dense["fc.weight"] == 640 and r.dense["conv.weight"] == 32 * 32 * 16 * 27
    assert r.masked_total == r.dense_total


def test_fcn_on_images_and_bad_names():
    model = build_model(FCNModel(name="fcn", hidden=[8]), (1, 4, 4), 2, 0)
    r = count_macs(model, None, (1, 4, 4))
    assert r.dense_total == 16 * 8 + 8 * 2
    with pytest.raises(ValueError, match="'nope.weight'"):
        count_macs(model, {"nope.weight": torch.ones(1)}, (1, 4, 4))
