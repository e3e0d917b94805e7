"""ResNet-18 for 64×64 Tiny-ImageNet, as paper 2 (after NTK-SAP) trains it.

torchvision's ResNet-18 layout with a 3×3 stride-1 stem and no max-pool, so small images keep
their resolution into the first stage.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotterylab.platform.models.resnet_cifar import BasicBlock, kaiming_init_
from lotterylab.platform.schema import Strict


class ResNet18Model(Strict):
    """ResNet-18 with a CIFAR-style stem, for 64×64 Tiny-ImageNet."""

    name: Literal["resnet18"] = Field(description="model name in the registry")


class ResNet18(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        layers, c_in = [], 64
        for stage, c_out in enumerate((64, 128, 256, 512)):
            for block in range(2):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)
        kaiming_init_(self)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_resnet18(spec: ResNet18Model, image_shape, num_classes: int) -> ResNet18:
    return ResNet18(image_shape[0], num_classes)
