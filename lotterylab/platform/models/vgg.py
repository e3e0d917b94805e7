"""VGG-16 with batch norm for small images, as paper 2 trains it on CIFAR-100.

Thirteen 3×3 convolutions, global average pooling and one linear classifier. A max-pool is
skipped once the feature map is down to one pixel, so the net also runs on tiny test images.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotterylab.platform.models.resnet_cifar import kaiming_init_
from lotterylab.platform.schema import Strict

CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Model(Strict):
    """VGG-16 with batch norm, global average pooling and one linear classifier."""

    name: Literal["vgg16_bn"] = Field(description="model name in the registry")


class Pool(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x


class VGG(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        layers, c_in = [], channels
        for item in CONFIG:
            if item == "M":
                layers.append(Pool())
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                c_in = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build_vgg16(spec: VGG16Model, image_shape, num_classes: int) -> VGG:
    return VGG(image_shape[0], num_classes)
