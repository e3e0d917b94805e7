"""Experiment specs: YAML in, validated and typed objects out, before any Ray process starts.

``sections``: one ``Strict`` model per section; ``search``: the search section; ``experiment``:
the sections joined and checked against each other; ``errors``: messages with key paths;
``loading``: YAML text or mappings to specs.
"""

from lotterylab.platform.spec.errors import SpecError
from lotterylab.platform.spec.experiment import (
    KINDS,
    DataSpec,
    ExperimentSpec,
    ModelSpec,
)
from lotterylab.platform.spec.loading import load_spec, parse_spec, spec_from_text
from lotterylab.platform.spec.search import Distribution, SearchSpec
from lotterylab.platform.spec.sections import (
    PAPER2_DENSITIES,
    AnalysisSpec,
    ComponentsSpec,
    IMPSpec,
    PAISpec,
    ResourcesSpec,
    RunSpec,
    TrainingSpec,
)

__all__ = [
    "KINDS",
    "PAPER2_DENSITIES",
    "AnalysisSpec",
    "ComponentsSpec",
    "DataSpec",
    "Distribution",
    "ExperimentSpec",
    "IMPSpec",
    "ModelSpec",
    "PAISpec",
    "ResourcesSpec",
    "RunSpec",
    "SearchSpec",
    "SpecError",
    "TrainingSpec",
    "load_spec",
    "parse_spec",
    "spec_from_text",
]
