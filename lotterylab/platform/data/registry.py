"""The data sources by name: each brings its spec section, its builder and its own facts.

A new source is one module (a ``Strict`` spec class with ``type: Literal[...]`` and a builder
``build(spec, context)``) and one entry here, or one ``lotterylab.datasets`` entry point in the
user's own package. The entry states what the spec checks need before anything is built: image
shape, classes, published training-set size, task; a ``derived`` source (``of``: another data set
of the same spec, as the Gaussian clone) has the facts of its source. The context gives the other
data sets of the same spec, which derived sources need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Field

from lotterylab.platform.data.cifar import CIFAR10Data, CIFAR100Data, build_cifar
from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.gaussian_clone import GaussianCloneData, gaussian_clone
from lotterylab.platform.data.image_folder import ImageFolderData, build_image_folder
from lotterylab.platform.data.imagenet32 import ImageNet32Data, build_imagenet32
from lotterylab.platform.data.nlgp import NLGPData, build_nlgp, make_nlgp_clone
from lotterylab.platform.data.tiny_imagenet import TinyImageNetData, build_tiny_imagenet
from lotterylab.platform.data.voc import VOCData, build_voc
from lotterylab.platform.registry import Registry
from lotterylab.platform.schema import Strict

TASKS = ("classification", "segmentation")
Shape = tuple[int, int, int]


def _unknown(spec: Strict) -> Any:
    return None


def _rgb_of_size(spec: Strict) -> Shape:
    return (3, spec.size, spec.size)


@dataclass(frozen=True)
class DataSource:
    """A spec class (``type: Literal[...]``), its builder and what is known before building.

    ``image_shape(spec)`` and ``num_classes(spec)`` return None when only the files tell;
    ``published_train_size`` caps a declared ``n_train``; ``derived`` sources name another data
    set of the spec in ``of`` and share its facts.
    """

    spec: type[Strict]
    build: Callable[..., ImageDataset]
    image_shape: Callable[[Strict], Shape | None] = _unknown
    num_classes: Callable[[Strict], int | None] = _unknown
    published_train_size: int | None = None
    task: Literal["classification", "segmentation"] = "classification"
    derived: bool = False


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
        return source(spec).build(spec, self)

    def facts_of(self, name: str) -> Strict:
        """The spec whose facts a data set has: its own, or its source's when derived."""
        spec = self.spec_of(name)
        return self.spec_of(spec.of) if source(spec).derived else spec


def build_gaussian_clone_of(spec: GaussianCloneData, context: DataContext) -> ImageDataset:
    source_spec = context.spec_of(spec.of)
    if isinstance(source_spec, NLGPData):
        # the NLGP covariance is known in closed form: clone it exactly, not from samples
        return make_nlgp_clone(**source_spec.generator_args(), seed=spec.seed, name=spec.name)
    return gaussian_clone(context.build(spec.of), seed=spec.seed, name=spec.name)


def _check(name: str, entry: DataSource) -> None:
    tag = entry.spec.model_fields.get("type")
    if (
        tag is None
        or get_origin(tag.annotation) is not Literal
        or get_args(tag.annotation) != (name,)
    ):
        raise ValueError(
            f"data source {name!r}: its spec class {entry.spec.__name__} must declare "
            f"type: Literal[{name!r}]"
        )
    if entry.task not in TASKS:
        raise ValueError(f"data source {name!r}: task {entry.task!r} is not one of {list(TASKS)}")
    if entry.derived and "of" not in entry.spec.model_fields:
        raise ValueError(f"data source {name!r} is derived, so its spec class needs a field 'of'")


DATA_SOURCES: Registry[DataSource] = Registry(
    "data source",
    "lotterylab.datasets",
    DataSource,
    {
        "nlgp": DataSource(
            NLGPData,
            build_nlgp,
            image_shape=lambda s: (s.channels, s.grid, s.grid),
            num_classes=lambda s: len(s.xi),
        ),
        "gaussian_clone": DataSource(GaussianCloneData, build_gaussian_clone_of, derived=True),
        "imagenet32": DataSource(
            ImageNet32Data,
            build_imagenet32,
            image_shape=lambda s: (3, s.image_size, s.image_size),
            num_classes=lambda s: 1000,
            published_train_size=1_281_167,
        ),
        "cifar10": DataSource(
            CIFAR10Data,
            build_cifar,
            image_shape=lambda s: (3, 32, 32),
            num_classes=lambda s: 10,
            published_train_size=50_000,
        ),
        "cifar100": DataSource(
            CIFAR100Data,
            build_cifar,
            image_shape=lambda s: (3, 32, 32),
            num_classes=lambda s: 100,
            published_train_size=50_000,
        ),
        "image_folder": DataSource(ImageFolderData, build_image_folder, _rgb_of_size),
        "tiny_imagenet": DataSource(
            TinyImageNetData,
            build_tiny_imagenet,
            _rgb_of_size,
            num_classes=lambda s: 200,
            published_train_size=100_000,
        ),
        "voc": DataSource(
            VOCData,
            build_voc,
            _rgb_of_size,
            num_classes=lambda s: 21,
            published_train_size=1_464,
            task="segmentation",
        ),
    },
    _check,
)


def data_spec_union() -> Any:
    """The type of a ``datasets`` item: every registered spec class, told apart by ``type``."""
    return Annotated[
        Union[tuple(entry.spec for entry in DATA_SOURCES.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]


def source_names() -> list[str]:
    return DATA_SOURCES.names()


def source(spec: Strict) -> DataSource:
    """The registry entry of a data set's spec."""
    return DATA_SOURCES.entry(spec.type)


def train_size(spec: Strict) -> int | None:
    """Training images: the declared ``n_train`` capped by the published size; None if unknown."""
    declared = getattr(spec, "n_train", None)
    known = [n for n in (declared, source(spec).published_train_size) if isinstance(n, int)]
    return min(known) if known else None


def check_sources(datasets: Sequence[Strict]) -> None:
    """Derived data sets name a data set of the spec that is neither derived nor label maps."""
    allowed = [
        d.name for d in datasets if not source(d).derived and source(d).task == "classification"
    ]
    for i, data in enumerate(datasets):
        if source(data).derived and data.of not in allowed:
            raise ValueError(
                f"datasets.{i}.of: {data.of!r} is not a data set of this spec that a "
                f"{data.type} can be built from; allowed: {allowed}"
            )


def build_dataset(datasets: Sequence[Strict], name: str) -> ImageDataset:
    """Build data set ``name`` of a spec's ``datasets`` list (derived sets resolve inside it)."""
    return DataContext(datasets).build(name)


def build_datasets(datasets: Sequence[Strict]) -> dict[str, ImageDataset]:
    return {data.name: build_dataset(datasets, data.name) for data in datasets}
