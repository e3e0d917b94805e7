"""torchvision's ResNet-50 and DeepLabV3-ResNet-50, randomly initialised (nothing downloads)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn
from torchvision.models import resnet50
from torchvision.models.segmentation import deeplabv3_resnet50

from lotterylab.platform.models.resnet_cifar import kaiming_init_
from lotterylab.platform.schema import Strict


class ResNet50Model(Strict):
    """torchvision's ImageNet ResNet-50, randomly initialised."""

    name: Literal["resnet50"] = Field(description="model name in the registry")


class DeepLabV3Model(Strict):
    """torchvision's DeepLabV3 on a ResNet-50 backbone, no auxiliary head: a segmentation net."""

    name: Literal["deeplabv3_resnet50"] = Field(description="model name in the registry")


def _check_rgb(image_shape, name: str) -> None:
    if image_shape[0] != 3:
        raise ValueError(f"model {name} needs 3-channel images, got image_shape {image_shape}")


def build_resnet50(spec: ResNet50Model, image_shape, num_classes: int) -> nn.Module:
    _check_rgb(image_shape, spec.name)
    model = resnet50(weights=None, num_classes=num_classes)
    kaiming_init_(model)  # paper 2 initialises every model Kaiming-normal
    return model


def build_deeplabv3(spec: DeepLabV3Model, image_shape, num_classes: int) -> nn.Module:
    """Returns ``{"out": (N, K, H, W)}`` logits, as torchvision's segmentation models do."""
    _check_rgb(image_shape, spec.name)
    model = deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    kaiming_init_(model)
    return model
