"""The pruning-at-initialisation methods by name. A new method: one module and one line here, or
one ``lotterylab.pruning_methods`` entry point in the user's own package."""

from __future__ import annotations

from lotterylab.platform.pruning.base import Method
from lotterylab.platform.pruning.grasp import GraSPHParams, grasp_scores
from lotterylab.platform.pruning.magnitude import MagnitudeHParams, magnitude_scores
from lotterylab.platform.pruning.ntksap import NTKSAPHParams, ntksap_scores
from lotterylab.platform.pruning.px import PXHParams, px_scores
from lotterylab.platform.pruning.px_literal import PXLiteralHParams, px_literal_scores
from lotterylab.platform.pruning.random_scores import RandomHParams, random_scores
from lotterylab.platform.pruning.snip import SNIPHParams, snip_scores
from lotterylab.platform.pruning.synflow import SynFlowHParams, synflow_scores
from lotterylab.platform.pruning.synflow_l2 import SynFlowL2HParams, synflow_l2_scores
from lotterylab.platform.registry import Registry
from lotterylab.platform.schema import Strict


def _check(name: str, entry: Method) -> None:
    if not (isinstance(entry.hparams, type) and issubclass(entry.hparams, Strict)):
        raise ValueError(f"pruning method {name!r}: hparams must be a Strict spec class")
    if not callable(entry.scorer):
        raise ValueError(f"pruning method {name!r}: scorer must be callable")


METHODS: Registry[Method] = Registry(
    "pruning method",
    "lotterylab.pruning_methods",
    Method,
    {
        "random": Method(random_scores, RandomHParams, single_shot=True),
        "magnitude": Method(magnitude_scores, MagnitudeHParams, single_shot=True),
        "snip": Method(snip_scores, SNIPHParams, single_shot=True, needs_data=True),
        "grasp": Method(grasp_scores, GraSPHParams, single_shot=True, needs_data=True),
        "synflow": Method(synflow_scores, SynFlowHParams),
        "synflow_l2": Method(synflow_l2_scores, SynFlowL2HParams),
        "ntksap": Method(ntksap_scores, NTKSAPHParams),
        "px": Method(px_scores, PXHParams, needs_data=True),
        "px_literal": Method(px_literal_scores, PXLiteralHParams, needs_data=True),
    },
    _check,
)


def method_names() -> list[str]:
    return METHODS.names()


def single_shot_names() -> list[str]:
    """The methods scored once whatever the rounds, as their entries declare."""
    return [name for name, entry in METHODS.items() if entry.single_shot]


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not a pruning method; allowed: {method_names()}")
    return METHODS[name]


def hparams_class(name: str) -> type[Strict]:
    return method(name).hparams


def resolve_hparams(name: str, hparams: Strict | dict | None) -> Strict:
    """Validated hyper-parameters of ``name``: defaults, a dict, or an instance of its class."""
    cls = hparams_class(name)
    if hparams is None:
        return cls()
    if isinstance(hparams, cls):
        return hparams
    if isinstance(hparams, dict):
        return cls.model_validate(hparams)
    raise ValueError(
        f"hparams for method {name!r} must be None, a dict or {cls.__name__}; "
        f"got {type(hparams).__name__}"
    )
