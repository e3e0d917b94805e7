"""The data sources by name: each brings its spec section and its builder.

A new source is one module (a ``Strict`` spec class with ``type: Literal[...]`` and a builder
``build(spec, context)``) and one entry here; the context gives the other data sets of the same
spec, which clones need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from lotterylab.platform.data.cifar import CIFAR10Data, CIFAR100Data, build_cifar
from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.gaussian_clone import GaussianCloneData, gaussian_clone
from lotterylab.platform.data.image_folder import ImageFolderData, build_image_folder
from lotterylab.platform.data.imagenet32 import ImageNet32Data, build_imagenet32
from lotterylab.platform.data.nlgp import NLGPData, build_nlgp, make_nlgp_clone
from lotterylab.platform.data.tiny_imagenet import TinyImageNetData, build_tiny_imagenet
from lotterylab.platform.data.voc import VOCData, build_voc
from lotterylab.platform.schema import Strict


@dataclass(frozen=True)
class DataContext:
    """The spec's ``datasets`` list, for sources built from another data set."""

    datasets: Sequence[Strict]

    def spec_of(self, name: str) -> Strict:
        for data in self.datasets:
            if data.name == name:
                return data
        raise KeyError(
            f"data set {name!r} is not in the spec; allowed: {[d.name for d in self.datasets]}"
        )

    def build(self, name: str) -> ImageDataset:
        spec = self.spec_of(name)
        return DATA_SOURCES[spec.type].build(spec, self)


def build_gaussian_clone_of(spec: GaussianCloneData, context: DataContext) -> ImageDataset:
    source = context.spec_of(spec.of)
    if isinstance(source, NLGPData):
        # the NLGP covariance is known in closed form: clone it exactly, not from samples
        return make_nlgp_clone(**source.generator_args(), seed=spec.seed, name=spec.name)
    return gaussian_clone(context.build(spec.of), seed=spec.seed, name=spec.name)


@dataclass(frozen=True)
class DataSource:
    spec: type[Strict]
    build: Callable[..., ImageDataset]


DATA_SOURCES: dict[str, DataSource] = {
    "nlgp": DataSource(NLGPData, build_nlgp),
    "gaussian_clone": DataSource(GaussianCloneData, build_gaussian_clone_of),
    "imagenet32": DataSource(ImageNet32Data, build_imagenet32),
    "cifar10": DataSource(CIFAR10Data, build_cifar),
    "cifar100": DataSource(CIFAR100Data, build_cifar),
    "image_folder": DataSource(ImageFolderData, build_image_folder),
    "tiny_imagenet": DataSource(TinyImageNetData, build_tiny_imagenet),
    "voc": DataSource(VOCData, build_voc),
}

DataSpec = Annotated[
    NLGPData
    | GaussianCloneData
    | ImageNet32Data
    | CIFAR10Data
    | CIFAR100Data
    | ImageFolderData
    | TinyImageNetData
    | VOCData,
    Field(discriminator="type"),
]


def source_names() -> list[str]:
    return list(DATA_SOURCES)


def build_dataset(datasets: Sequence[Strict], name: str) -> ImageDataset:
    """Build data set ``name`` of a spec's ``datasets`` list (clones resolve inside it)."""
    return DataContext(datasets).build(name)


def build_datasets(datasets: Sequence[Strict]) -> dict[str, ImageDataset]:
    return {data.name: build_dataset(datasets, data.name) for data in datasets}
