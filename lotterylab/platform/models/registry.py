"""The networks by name. A new model: one module with its spec class and builder, one entry here
(or one ``lotterylab.models`` entry point in the user's own package).

Each entry declares its own facts, so nothing outside this module asks for a model by name:
its task, whether its first layer is dense on the pixels (kurtosis, cavity scores, RF widths and
cavity-guided pruning need that, and the model then implements ``first_layer_inputs(x)``) and
whether K of its trainings stack into one batched computation (``platform.batched``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

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
from lotterylab.platform.registry import Registry
from lotterylab.platform.schema import Strict

TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class ModelEntry:
    """A spec class (``name: Literal[...]``), its builder and the facts the platform asks.

    ``build(spec, image_shape, num_classes[, seed])``: ``seeded`` builders take the seed and draw
    from their own generator; the others draw from the global generator, which ``build_model``
    seeds inside a forked RNG state. ``dense_first_layer``: the first layer is a dense layer on
    the flattened pixels and the module has ``first_layer_inputs(x)``. ``stacks``: trainings of
    this model stack in ``platform.batched`` (a stack of dense layers, optionally batch-normed).
    """

    spec: type[Strict]
    build: Callable[..., nn.Module]
    task: Literal["classification", "segmentation"] = "classification"
    seeded: bool = False
    dense_first_layer: bool = False
    stacks: bool = False


def _check(name: str, entry: ModelEntry) -> None:
    tag = entry.spec.model_fields.get("name")
    tags = get_args(tag.annotation) if tag is not None else ()
    if tag is None or get_origin(tag.annotation) is not Literal or tags != (name,):
        raise ValueError(
            f"model {name!r}: its spec class {entry.spec.__name__} must declare "
            f"name: Literal[{name!r}] (got {tag.annotation if tag else 'no name field'})"
        )
    if entry.task not in TASKS:
        raise ValueError(f"model {name!r}: task {entry.task!r} is not one of {list(TASKS)}")


MODELS: Registry[ModelEntry] = Registry(
    "model",
    "lotterylab.models",
    ModelEntry,
    {
        "fcn": ModelEntry(FCNModel, build_fcn, seeded=True, dense_first_layer=True, stacks=True),
        "resnet20": ModelEntry(ResNet20Model, build_resnet20),
        "vgg16_bn": ModelEntry(VGG16Model, build_vgg16),
        "resnet18": ModelEntry(ResNet18Model, build_resnet18),
        "resnet50": ModelEntry(ResNet50Model, build_resnet50),
        "deeplabv3_resnet50": ModelEntry(DeepLabV3Model, build_deeplabv3, "segmentation"),
    },
    _check,
)

# the model of a spec that names none
DEFAULT_MODEL = "fcn"


def model_spec_union() -> Any:
    """The ``model`` field's type: every registered spec class, told apart by ``name``."""
    return Annotated[
        Union[tuple(entry.spec for entry in MODELS.values())],  # noqa: UP007
        Field(discriminator="name"),
    ]


def model_names() -> list[str]:
    """The registered model names, as a spec's ``name`` takes them."""
    return MODELS.names()


def model_entry(spec: Strict) -> ModelEntry:
    """The registry entry of a model spec."""
    return MODELS.entry(spec.name)


def model_task(spec: Strict) -> str:
    """``"classification"`` or ``"segmentation"``: which data and metrics a model needs."""
    return model_entry(spec).task


def has_dense_first_layer(spec: Strict) -> bool:
    """Whether the model's first layer is dense on pixels: the first-layer measurements apply."""
    return model_entry(spec).dense_first_layer


def build_model(
    spec: Strict, image_shape: tuple[int, int, int], num_classes: int, seed: int
) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights on any machine."""
    image_shape = tuple(image_shape)
    entry = model_entry(spec)
    if entry.seeded:
        return entry.build(spec, image_shape, num_classes, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.build(spec, image_shape, num_classes)
