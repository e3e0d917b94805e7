"""Experiment specs: YAML in, validated and typed objects out, before any Ray process starts.

Every model forbids unknown keys, so a typo fails with its key path instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from lotterylab.platform.schema import NAME_PATTERN, Strict


class SpecError(ValueError):
    """A spec that cannot be run; the message names the key path, the value and what is allowed."""


class NLGPData(Strict):
    """Ingrosso & Goldt's non-linear Gaussian process images, one correlation length per class."""

    type: Literal["nlgp"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    grid: Annotated[int, Field(ge=2, le=256)] = 16
    channels: Annotated[int, Field(ge=1, le=16)] = 1
    xi: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2)]
    gain: Annotated[float, Field(gt=0)] = 3.0
    n_train: Annotated[int, Field(ge=2)] = 8000
    n_test: Annotated[int, Field(ge=2)] = 2000
    seed: int = 0


class GaussianCloneData(Strict):
    """Same mean and covariance as another data set of the spec, no higher cumulants."""

    type: Literal["gaussian_clone"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    of: str
    seed: int = 1


DataSpec = Annotated[NLGPData | GaussianCloneData, Field(discriminator="type")]


class FCNModel(Strict):
    """Pellegrini & Biroli's fully connected net."""

    name: Literal["fcn"] = "fcn"
    hidden: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [1024, 1024]
    batch_norm: bool = True
    init: Literal["glorot_normal", "glorot_uniform"] = "glorot_normal"
    bias: bool = True


class TrainingSpec(Strict):
    optimizer: Literal["sgd"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.1
    batch_size: Annotated[int, Field(ge=1)] = 1000
    steps: Annotated[int, Field(ge=1)] = 100_000
    rewind_step: Annotated[int, Field(ge=0)] = 1000
    eval_batch_size: Annotated[int, Field(ge=1)] = 4096

    @model_validator(mode="after")
    def _rewind_before_end(self) -> TrainingSpec:
        if self.rewind_step >= self.steps:
            raise ValueError(
                f"rewind_step ({self.rewind_step}) must be smaller than steps ({self.steps})"
            )
        return self


class IMPSpec(Strict):
    rounds: Annotated[int, Field(ge=1, le=100)] = 10
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3
    scope: Literal["layer", "global"] = "layer"
    prune_biases: bool = False
    prune_output: bool = False
    baselines: list[Literal["oneshot", "random"]] = ["oneshot", "random"]
    train_baselines: bool = True

    @field_validator("baselines")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"baselines must not repeat, got {value}")
        return value


class ResourcesSpec(Strict):
    cpu: Annotated[float, Field(ge=0)] = 1
    gpu: Annotated[float, Field(ge=0)] = 0


class RunSpec(Strict):
    max_failures: Annotated[int, Field(ge=0)] = 2
    max_concurrent_trials: Annotated[int, Field(ge=0)] = 0  # 0 = as many as resources allow


class ExperimentSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal["imp"] = "imp"
    storage: str = "./results"
    seeds: Annotated[list[int], Field(min_length=1)] = [0, 1, 2]
    datasets: Annotated[list[DataSpec], Field(min_length=1)]
    model: FCNModel = FCNModel()
    training: TrainingSpec = TrainingSpec()
    imp: IMPSpec = IMPSpec()
    resources: ResourcesSpec = ResourcesSpec()
    run: RunSpec = RunSpec()

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentSpec:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must not repeat, got {self.seeds}")
        for i, data in enumerate(self.datasets):
            if isinstance(data, GaussianCloneData):
                source = self.dataset(data.of) if data.of in names else None
                if source is None or isinstance(source, GaussianCloneData):
                    allowed = [
                        d.name for d in self.datasets if not isinstance(d, GaussianCloneData)
                    ]
                    raise ValueError(
                        f"datasets.{i}.of: {data.of!r} is not a data set of this spec "
                        f"that can be cloned; allowed: {allowed}"
                    )
        return self

    def dataset(self, name: str) -> NLGPData | GaussianCloneData:
        for data in self.datasets:
            if data.name == name:
                return data
        raise KeyError(name)


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"invalid experiment spec {source}:"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        # discriminated unions put the tag into the path; keep the user's own keys only
        path = path.replace(".nlgp.", ".").replace(".gaussian_clone.", ".")
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        if not path:  # cross-field checks name their own key paths
            lines.append(f"  {message}")
        else:
            lines.append(f"  {path}: {message} (got {shown})")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(
            f"invalid experiment spec {source}: expected a mapping, got {type(data).__name__}"
        )
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(source, error)) from None


def load_spec(path: str | Path) -> tuple[ExperimentSpec, str]:
    """Read and validate a YAML spec; returns the spec and the text as given."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read experiment spec {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"experiment spec {path} is not valid YAML: {exc}") from None
    return parse_spec(data, str(path)), text


def spec_from_text(text: str, source: str) -> ExperimentSpec:
    return parse_spec(yaml.safe_load(text), source)
