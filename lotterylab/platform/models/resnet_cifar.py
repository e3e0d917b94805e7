"""ResNet-20 for 32×32 images (He et al. 2016, §4.2), as OpenLTH and paper 2 train it.

Three stages of three basic blocks at widths w, 2w, 4w; a 1×1 convolution with batch norm
on the shortcut wherever the shape changes. Width 16 on CIFAR-10 has 272,474 parameters.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotterylab.platform.schema import Strict


class ResNet20Model(Strict):
    """OpenLTH's CIFAR ResNet-20 (``cifar_resnet_20``); ``width`` 16 is the standard net."""

    name: Literal["resnet20"] = Field(description="model name in the registry")
    width: Annotated[int, Field(ge=1)] = Field(16, description="channels of the first stage")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 16, blocks: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU) conv and linear weights, zero biases, unit batch norm."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_resnet20(spec: ResNet20Model, image_shape, num_classes: int) -> ResNetCifar:
    return ResNetCifar(image_shape[0], num_classes, spec.width)
