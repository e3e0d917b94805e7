"""The pruning-at-initialisation methods by name. A new method: one module and one line here."""

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
from lotterylab.platform.schema import Strict

METHODS: dict[str, Method] = {
    "random": Method(random_scores, RandomHParams),
    "magnitude": Method(magnitude_scores, MagnitudeHParams),
    "snip": Method(snip_scores, SNIPHParams),
    "grasp": Method(grasp_scores, GraSPHParams),
    "synflow": Method(synflow_scores, SynFlowHParams),
    "synflow_l2": Method(synflow_l2_scores, SynFlowL2HParams),
    "ntksap": Method(ntksap_scores, NTKSAPHParams),
    "px": Method(px_scores, PXHParams),
    "px_literal": Method(px_literal_scores, PXLiteralHParams),
}


def method_names() -> list[str]:
    return list(METHODS)


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
