"""Experiment specs: YAML in, validated and typed objects out, before any Ray process starts.

Every model forbids unknown keys, so a typo fails with its key path instead of being ignored.
Data sources, models and pruning methods bring their own spec sections from their registries;
this module joins them, adds the section of each kind of run (``imp`` or ``pai``, chosen by
``kind``) and checks every constraint that spans sections, so a bad spec never reaches Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from lotterylab.platform.data.registry import DataSpec
from lotterylab.platform.models import ModelSpec, model_task
from lotterylab.platform.models.fcn import FCNModel
from lotterylab.platform.pruning import hparams_class, method_names
from lotterylab.platform.schema import NAME_PATTERN, Strict

KINDS = ("imp", "pai")
# paper 2's sparsity grid: density 0.8^(2k), k = 1..9 (36.00 % ... 98.20 % sparsity)
PAPER2_DENSITIES = [round(0.8 ** (2 * k), 10) for k in range(1, 10)]
IMP_BASELINES = ("oneshot", "random", "cavity")
SINGLE_SHOT = ("random", "magnitude", "snip", "grasp")


class SpecError(ValueError):
    """A spec that cannot be run; the message names the key path, the value and what is allowed."""


PositiveFloat = Annotated[float, Field(gt=0)]


class TrainingSpec(Strict):
    """The optimiser recipe; IMP lineages count ``steps``, PaI runs count ``epochs``."""

    optimizer: Literal["sgd", "nesterov"] = Field(
        "sgd", description="plain (or momentum) SGD, or SGD with Nesterov momentum"
    )
    lr: PositiveFloat = Field(0.1, description="learning rate")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="SGD momentum")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="L2 weight decay")
    batch_size: Annotated[int, Field(ge=1)] = Field(1000, description="training batch size")
    steps: Annotated[int, Field(ge=1)] = Field(
        100_000, description="optimiser steps of one IMP training (kind imp)"
    )
    rewind_step: Annotated[int, Field(ge=0)] = Field(
        1000, description="step whose weights IMP rewinds to (kind imp)"
    )
    epochs: Annotated[int, Field(ge=1)] | None = Field(
        None, description="epochs of one PaI training (kind pai; required there)"
    )
    lr_drops: list[Annotated[int, Field(ge=1)]] = Field(
        [], description="steps (imp) or epochs (pai) after which the learning rate is multiplied"
    )
    lr_drop_factor: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1, description="factor applied to the learning rate at each of lr_drops"
    )
    augment: Literal["none", "crop_flip"] = Field(
        "none", description="random 4-pixel-padded crops and horizontal flips of image batches"
    )
    eval_batch_size: Annotated[int, Field(ge=1)] = Field(4096, description="evaluation batch")

    @model_validator(mode="after")
    def _rewind_before_end(self) -> TrainingSpec:
        if self.rewind_step >= self.steps:
            raise ValueError(
                f"rewind_step ({self.rewind_step}) must be smaller than steps ({self.steps})"
            )
        if self.lr_drops != sorted(set(self.lr_drops)):
            raise ValueError(
                f"training.lr_drops must be strictly increasing, got {self.lr_drops}"
            )
        if self.momentum == 0 and self.optimizer == "nesterov":
            raise ValueError("training.momentum must be > 0 with optimizer: nesterov (got 0.0)")
        return self


class IMPSpec(Strict):
    """Iterative magnitude pruning with rewinding and its sibling methods (kind imp)."""

    rounds: Annotated[int, Field(ge=1, le=100)] = Field(10, description="pruning rounds")
    fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.3, description="fraction of the remaining weights removed per round"
    )
    scope: Literal["layer", "global"] = Field(
        "layer", description="magnitude threshold per tensor or over all prunable tensors"
    )
    prune_biases: bool = Field(False, description="whether biases are prunable")
    prune_output: bool = Field(False, description="whether the output layer is prunable")
    baselines: list[Literal[IMP_BASELINES]] = Field(
        ["oneshot", "random"],
        description="siblings at IMP's per-layer counts: oneshot and random masks of the dense "
        "net, or cavity-guided pruning (first layer by highest cavity score)",
    )
    train_baselines: bool = Field(
        True, description="train the oneshot/random masks each round (cavity always trains)"
    )
    measure_kurtosis: bool = Field(
        True, description="first-layer pre-activation kurtosis at the start of every round "
        "(models with a dense first layer on pixels, i.e. the FCN; ignored otherwise)"
    )
    measure_cavity: bool = Field(
        True, description="cavity scores grouped by removal round when the lineage ends (FCN only; "
        "ignored otherwise)"
    )
    measure_samples: Annotated[int, Field(ge=2)] = Field(
        50_000, description="training inputs used for kurtosis and cavity scores (at most)"
    )

    @field_validator("baselines")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"baselines must not repeat, got {value}")
        return value


def _method_hparams_model() -> type[Strict]:
    """One optional section per registered pruning method, e.g. ``pai.hparams.grasp``."""
    fields = {
        name: (hparams_class(name), Field(default_factory=hparams_class(name)))
        for name in method_names()
    }
    return create_model("MethodHParams", __base__=Strict, **fields)


MethodHParams = _method_hparams_model()


class PAISpec(Strict):
    """Pruning at initialisation (kind pai): the grid methods × densities × rounds × seeds."""

    methods: Annotated[list[str], Field(min_length=1)] = Field(
        ..., description="registered pruning methods"
    )
    densities: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = Field(
        PAPER2_DENSITIES, description="fractions of prunable weights kept"
    )
    rounds: Annotated[list[Annotated[int, Field(ge=1, le=1000)]], Field(min_length=1)] = Field(
        [1], description="scoring rounds T (a grid axis: Table 2 compares several)"
    )
    single_shot: list[str] = Field(
        list(SINGLE_SHOT),
        description="methods scored once whatever rounds says (the paper's single-shot methods)",
    )
    schedule: Literal["exponential", "linear"] = Field(
        "exponential", description="density of round t: d^(t/T), or linear in t"
    )
    scoring_batches: Annotated[int, Field(ge=1)] = Field(
        2, description="class-balanced batches of training data that data-driven methods see"
    )
    scoring_batch_size: Annotated[int, Field(ge=1)] = Field(128, description="their batch size")
    hparams: MethodHParams = Field(
        default_factory=MethodHParams, description="per-method hyper-parameters"
    )

    @field_validator("methods", "single_shot")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        allowed = method_names()
        for i, name in enumerate(value):
            if name not in allowed:
                raise ValueError(f"methods.{i}: unknown method {name!r}; allowed: {allowed}")
        if len(set(value)) != len(value):
            raise ValueError(f"methods must not repeat, got {value}")
        return value

    @field_validator("densities", "rounds")
    @classmethod
    def _no_repeats(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"values must not repeat, got {value}")
        return value

    def rounds_of(self, method: str) -> list[int]:
        """The scoring rounds a method runs at: once for single-shot methods."""
        return [1] if method in self.single_shot else list(self.rounds)


class ResourcesSpec(Strict):
    cpu: Annotated[float, Field(ge=0)] = Field(1, description="CPUs per trial")
    gpu: Annotated[float, Field(ge=0)] = Field(
        0, description="GPU share per trial (0.25 packs four trials on one GPU)"
    )


class RunSpec(Strict):
    max_failures: Annotated[int, Field(ge=0)] = Field(2, description="retries of a dead trial")
    max_concurrent_trials: Annotated[int, Field(ge=0)] = Field(
        0, description="0 = as many as resources allow"
    )


class ComponentsSpec(Strict):
    """PCA and FastICA components of natural image patches (paper 1 Fig. 2)."""

    source: str = Field(
        "sample_patches",
        description="'sample_patches' (scikit-learn's sample photos) or a data set of the spec",
    )
    n_components: Annotated[int, Field(ge=1, le=1024)] = Field(64, description="components")
    patches: Annotated[int, Field(ge=2)] = Field(20_000, description="patches or images fitted")
    patch_size: Annotated[int, Field(ge=2, le=64)] = Field(
        16, description="side of sample-image patches (pixels)"
    )
    seed: int = Field(0, description="seed of patch sampling and FastICA")


class AnalysisSpec(Strict):
    components: ComponentsSpec | None = Field(
        None, description="compute PCA/ICA components before the run (omit to skip)"
    )
    examples: Annotated[int, Field(ge=0, le=256)] = Field(
        16, description="example images per data set stored for the figures"
    )


class ExperimentSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal[KINDS] = "imp"
    storage: str = "./results"
    seeds: Annotated[list[int], Field(min_length=1)] = [0, 1, 2]
    datasets: Annotated[list[DataSpec], Field(min_length=1)]
    model: ModelSpec = FCNModel()
    training: TrainingSpec = TrainingSpec()
    imp: IMPSpec | None = None
    pai: PAISpec | None = None
    analysis: AnalysisSpec = AnalysisSpec()
    resources: ResourcesSpec = ResourcesSpec()
    run: RunSpec = RunSpec()

    @model_validator(mode="before")
    @classmethod
    def _default_kind_section(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind", "imp") == "imp" and data.get("imp") is None:
            data = {**data, "imp": {}}
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            data = {**data, "model": {"name": "fcn", **data["model"]}}  # the FCN by default
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentSpec:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must not repeat, got {self.seeds}")
        for i, data in enumerate(self.datasets):
            of = getattr(data, "of", None)
            if data.type == "gaussian_clone":
                source = self.dataset(of) if of in names else None
                if source is None or source.type == "gaussian_clone":
                    allowed = [d.name for d in self.datasets if d.type != "gaussian_clone"]
                    raise ValueError(
                        f"datasets.{i}.of: {of!r} is not a data set of this spec "
                        f"that can be cloned; allowed: {allowed}"
                    )
        for i, data in enumerate(self.datasets):
            sized = self.dataset(data.of) if data.type == "gaussian_clone" else data
            n_train = getattr(sized, "n_train", None)
            if isinstance(n_train, int) and self.training.batch_size > n_train:
                raise ValueError(
                    f"training.batch_size ({self.training.batch_size}) exceeds the n_train "
                    f"({n_train}) of datasets.{i} ({data.name!r}): make it at most {n_train}"
                )
        other = "pai" if self.kind == "imp" else "imp"
        if getattr(self, other) is not None:
            raise ValueError(f"{other}: section not allowed with kind: {self.kind}")
        if self.kind == "pai":
            if self.pai is None:
                raise ValueError("pai: section required with kind: pai (methods at least)")
            if self.training.epochs is None:
                raise ValueError("training.epochs: required with kind: pai")
        if self.kind == "imp" and self.training.epochs is not None:
            raise ValueError(
                f"training.epochs: IMP lineages count training.steps; remove epochs "
                f"(got {self.training.epochs})"
            )
        if self.kind == "imp" and model_task(self.model) != "classification":
            raise ValueError(
                f"model.name: IMP lineages need a classification model, got {self.model.name!r}"
            )
        if "cavity" in (self.imp.baselines if self.imp else []) and self.model.name != "fcn":
            raise ValueError(
                "imp.baselines: 'cavity' scores a dense first layer on pixels and needs "
                f"model.name: fcn (got {self.model.name!r})"
            )
        if self.analysis.components is not None:
            source = self.analysis.components.source
            if source != "sample_patches" and source not in names:
                raise ValueError(
                    f"analysis.components.source: {source!r} is neither 'sample_patches' nor a "
                    f"data set of this spec; allowed: {['sample_patches', *names]}"
                )
        return self

    def dataset(self, name: str):
        for data in self.datasets:
            if data.name == name:
                return data
        raise KeyError(name)

    @property
    def section(self) -> IMPSpec | PAISpec:
        """The section of this spec's kind of run."""
        return self.imp if self.kind == "imp" else self.pai


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"invalid experiment spec {source}:"]
    for item in error.errors():
        loc = [str(p) for p in item["loc"] if not str(p).startswith("function-")]
        # discriminated unions put the tag into the path; keep the user's own keys only
        if len(loc) >= 3 and loc[0] == "datasets":
            loc = [p for j, p in enumerate(loc) if not (j == 2 and not p.isdigit())]
        if len(loc) >= 2 and loc[0] == "model":
            loc = [p for j, p in enumerate(loc) if j != 1]
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        if item["type"] == "union_tag_invalid":  # name the tag's own key and value
            loc.append(str(item["ctx"]["discriminator"]).strip("'"))
            shown = repr(item["ctx"]["tag"])
        path = ".".join(loc)
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
