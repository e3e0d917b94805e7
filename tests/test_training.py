"""The training loop's loss: image labels are all classes, label maps may mark pixels unlabelled."""

import torch
import torch.nn.functional as F
from torch import nn

from lotterylab.platform.training import IGNORE_INDEX, loss_of


def test_class_255_of_a_large_label_set_counts_in_the_loss():
    model = nn.Linear(8, 300)
    x = torch.randn(4, 8)
    y = torch.tensor([255, 255, 3, 255])
    assert torch.equal(loss_of(model, x, y), F.cross_entropy(model(x), y))


def test_unlabelled_pixels_of_label_maps_are_left_out():
    model = nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(5, (2, 4, 4))
    y[:, 0] = IGNORE_INDEX
    expected = F.cross_entropy(model(x)[:, :, 1:], y[:, 1:])
    assert torch.allclose(loss_of(model, x, y), expected)
