"""The networks by name. A new model: one module with its spec class and builder, one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from lotterylab.platform.models.fcn import FCNModel, build_fcn
from lotterylab.platform.models.resnet_cifar import ResNet20Model, build_resnet20
from lotterylab.platform.models.resnet_tiny import ResNet18Model, build_resnet18
from lotterylab.platform.models.torchvision_models import (
    DeepLabV3Model,
    ResNet50Model,
    build_deeplabv3,
    build_resnet50,
)
from lotterylab.platform.models.vgg import VGG16Model, build_vgg16
from lotterylab.platform.schema import Strict


@dataclass(frozen=True)
class ModelEntry:
    """A spec class, its builder ``(spec, image_shape, num_classes[, seed])`` and its task.

    ``seeded`` builders take the seed and draw from their own generator; the others draw from
    the global generator, which ``build_model`` seeds inside a forked RNG state.
    """

    spec: type[Strict]
    build: Callable[..., nn.Module]
    task: Literal["classification", "segmentation"] = "classification"
    seeded: bool = False


MODELS: dict[str, ModelEntry] = {
    "fcn": ModelEntry(FCNModel, build_fcn, seeded=True),  # bit-compatible with old lineages
    "resnet20": ModelEntry(ResNet20Model, build_resnet20),
    "vgg16_bn": ModelEntry(VGG16Model, build_vgg16),
    "resnet18": ModelEntry(ResNet18Model, build_resnet18),
    "resnet50": ModelEntry(ResNet50Model, build_resnet50),
    "deeplabv3_resnet50": ModelEntry(DeepLabV3Model, build_deeplabv3, "segmentation"),
}

ModelSpec = Annotated[
    FCNModel | ResNet20Model | VGG16Model | ResNet18Model | ResNet50Model | DeepLabV3Model,
    Field(discriminator="name"),
]


def model_names() -> list[str]:
    """The registered model names, as a spec's ``name`` takes them."""
    return list(MODELS)


def model_task(spec: Strict) -> str:
    """``"classification"`` or ``"segmentation"``: which data and metrics a model needs."""
    return MODELS[spec.name].task


def build_model(
    spec: Strict, image_shape: tuple[int, int, int] | int, num_classes: int, seed: int
) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights on any machine.

    An int ``image_shape`` is a flat input width (FCN only), as older callers pass it.
    """
    if isinstance(image_shape, int):
        if spec.name != "fcn":
            raise ValueError(f"model {spec.name} needs an image shape (C, H, W), got {image_shape}")
        image_shape = (1, 1, image_shape)
    image_shape = tuple(image_shape)
    entry = MODELS[spec.name]
    if entry.seeded:
        return entry.build(spec, image_shape, num_classes, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.build(spec, image_shape, num_classes)
