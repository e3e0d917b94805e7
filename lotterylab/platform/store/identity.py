"""The one identity rule of IMP lineages, PaI runs and the dense references of the analyses.

An id hashes what changes the computation. A field hashes only when it differs from its declared
default, so a field added later with a neutral default renames nothing; the fields that every id
hashed at any value when ids were first pinned (``PINNED``) keep doing so, so every stored id
stays exactly as it was (``tests/fixtures/pinned_ids.json``). A data set's identity is its whole
spec, with a derived set's source resolved in place of its name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from lotterylab.platform.data.registry import DataContext, source
from lotterylab.platform.schema import Strict
from lotterylab.platform.store.ids import canonical_json

# fields hashed at any value, per section, as when ids were first pinned
_TRAINING = ("optimizer", "lr", "batch_size", "steps", "rewind_step", "eval_batch_size")
_TRAINING_LATER = ("momentum", "weight_decay", "epochs", "lr_drops", "lr_drop_factor", "augment")
_DATA_FILES = ("cache", "n_test", "n_train", "name", "root", "type")
PINNED: dict[str, tuple[str, ...]] = {
    "imp.training": _TRAINING,
    "imp.imp": (
        "rounds",
        "fraction",
        "scope",
        "prune_biases",
        "prune_output",
        "baselines",
        "train_baselines",
    ),
    "pai.training": _TRAINING + _TRAINING_LATER,
    "model.fcn": ("name", "hidden", "batch_norm", "init", "bias"),
    "model.resnet20": ("name", "width"),
    "model.vgg16_bn": ("name",),
    "model.resnet18": ("name",),
    "model.resnet50": ("name",),
    "model.deeplabv3_resnet50": ("name",),
    "data.nlgp": ("type", "name", "grid", "channels", "xi", "gain", "n_train", "n_test", "seed"),
    "data.gaussian_clone": ("type", "name", "of", "seed"),
    "data.imagenet32": (*_DATA_FILES, "format", "image_size"),
    "data.cifar10": (*_DATA_FILES, "normalize"),
    "data.cifar100": (*_DATA_FILES, "normalize"),
    "data.image_folder": (*_DATA_FILES, "normalize", "size"),
    "data.tiny_imagenet": (*_DATA_FILES, "normalize", "size"),
    "data.voc": (*_DATA_FILES, "normalize", "size"),
    "hparams.snip": ("batch_norm",),
    "hparams.grasp": ("batch_norm", "temperature"),
    "hparams.synflow": ("input_shape",),
    "hparams.synflow_l2": ("input_shape",),
    "hparams.ntksap": ("epsilon", "input_shape", "repeats"),
    "hparams.px": ("output_layer",),
}
# a registry entry's own tag: always part of its identity
_TAGS = ("name", "type")


def section_identity(section: BaseModel, pinned: Collection[str] = ()) -> dict:
    """The section's fields that hash: the pinned ones, tags, and any that is not its default."""
    dump = section.model_dump(mode="json")
    out = {}
    for name, info in type(section).model_fields.items():
        default = info.get_default(call_default_factory=True)
        if (
            name in pinned
            or name in _TAGS
            or default is PydanticUndefined
            or canonical_json(dump[name]) != canonical_json(to_jsonable_python(default))
        ):
            out[name] = dump[name]
    return out


def data_identity(datasets: Sequence[Strict], name: str) -> dict:
    """A data set's identity; a derived set carries its source's identity as ``of``."""
    context = DataContext(datasets)
    spec = context.spec_of(name)
    out = section_identity(spec, PINNED.get(f"data.{spec.type}", ()))
    if source(spec).derived:
        out["of"] = data_identity(datasets, spec.of)
    return out


def model_identity(model: Strict) -> dict:
    return section_identity(model, PINNED.get(f"model.{model.name}", ()))


def lineage_identity(spec: Any, dataset: str) -> dict:
    """What an IMP lineage's id hashes."""
    return {
        "kind": spec.kind,
        "data": data_identity(spec.datasets, dataset),
        "model": model_identity(spec.model),
        "training": section_identity(spec.training, PINNED["imp.training"]),
        "imp": section_identity(spec.imp, PINNED["imp.imp"]),
    }


def pai_identity(
    spec: Any,
    dataset: str,
    method: str,
    density: float,
    rounds: int,
    branch: str,
    parent_id: str | None,
) -> dict:
    """What a PaI run's id hashes."""
    pai = spec.pai
    return {
        "kind": "pai",
        "data": data_identity(spec.datasets, dataset),
        "model": model_identity(spec.model),
        "training": section_identity(spec.training, PINNED["pai.training"]),
        "method": method,
        "hparams": section_identity(
            getattr(pai.hparams, method), PINNED.get(f"hparams.{method}", ())
        ),
        "density": density,
        "rounds": rounds,
        "schedule": pai.schedule,
        "scoring": [pai.scoring_batches, pai.scoring_batch_size],
        "branch": branch,
        "parent": parent_id,
    }


def dense_identity(spec: Any, dataset: str, init: str) -> dict:
    """What the id of the unpruned net that PaI runs of (data set, seed, init) start from hashes."""
    return {
        "model": model_identity(spec.model),
        "data": data_identity(spec.datasets, dataset),
        "init": init,
    }
