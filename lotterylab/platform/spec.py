"""Experiment specs: YAML in, validated and typed objects out, before any Ray process starts.

Every model forbids unknown keys, so a typo fails with its key path instead of being ignored.
Data sources, models and pruning methods bring their own spec sections from their registries;
this module joins them, adds the section of each kind of run (``imp`` or ``pai``, chosen by
``kind``) and checks every constraint that spans sections, so a bad spec never reaches Ray.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from lotterylab.platform.data.registry import DataSpec
from lotterylab.platform.models import ModelSpec, model_task
from lotterylab.platform.models.fcn import FCNModel
from lotterylab.platform.pruning import hparams_class, method_names
from lotterylab.platform.schema import NAME_PATTERN, Strict
from lotterylab.platform.search_space import (
    MINIMISED_METRICS,
    OTHER_KIND_FIELDS,
    SEARCH_METRICS,
    SearchSpec,
)

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
    epochs: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="epochs of one PaI training (kind pai; required there); 0 scores only",
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
                f"training.rewind_step: rewind_step ({self.rewind_step}) must be smaller than "
                f"steps ({self.steps})"
            )
        if self.lr_drops != sorted(set(self.lr_drops)):
            raise ValueError(f"training.lr_drops must be strictly increasing, got {self.lr_drops}")
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
        True,
        description="first-layer pre-activation kurtosis at the start of every round "
        "(models with a dense first layer on pixels, i.e. the FCN; ignored otherwise)",
    )
    measure_cavity: bool = Field(
        True,
        description="cavity scores grouped by removal round when the lineage ends (FCN only; "
        "ignored otherwise)",
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

    @field_validator("cpu", "gpu")
    @classmethod
    def _placeable(cls, value: float) -> float:
        # Ray counts resources in units of 1e-4; a share above one device must be whole
        if 0 < value < 1e-4:
            raise ValueError("must be 0 or at least 0.0001 (Ray's resource unit)")
        if value > 1 and not float(value).is_integer():
            raise ValueError("a share above 1 must be a whole number")
        return value


class RunSpec(Strict):
    max_failures: Annotated[int, Field(ge=0)] = Field(2, description="retries of a dead trial")
    max_concurrent_trials: Annotated[int, Field(ge=0)] = Field(
        0, description="0 = as many as resources allow"
    )
    batch_lineages: Literal["auto", "off"] | Annotated[int, Field(ge=1)] = Field(
        "auto",
        description="IMP lineages per trial, whose round trainings (every lineage and "
        "method) stack into one computation on FCN models: auto = as few groups as still "
        "give every trial slot of the cluster one, off = one lineage per trial trained one "
        "method at a time, K = at most K lineages per trial",
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
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="seed of patch sampling and FastICA (numpy's range, 0 to 2^32 - 1)"
    )


class AnalysisSpec(Strict):
    components: ComponentsSpec | None = Field(
        None, description="compute PCA/ICA components before the run (omit to skip)"
    )
    examples: Annotated[int, Field(ge=0, le=256)] = Field(
        16, description="example images per data set stored for the figures"
    )


# published training-set sizes and classes, for checks when a spec does not declare n_train
PUBLISHED_SIZES = {
    "cifar10": (50_000, 10),
    "cifar100": (50_000, 100),
    "imagenet32": (1_281_167, 1000),
    "tiny_imagenet": (100_000, 200),
    "voc": (1_464, 21),
}
SEGMENTATION_DATA = ("voc",)  # label maps, not one label per image
TORCH_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def _with_defaults(data: Any) -> Any:
    """The ``imp`` section of an IMP spec and the FCN as model, when the spec leaves them out."""
    if isinstance(data, dict) and data.get("kind", "imp") == "imp" and data.get("imp") is None:
        data = {**data, "imp": {}}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = {**data, "model": {"name": "fcn", **data["model"]}}  # the FCN by default
    return data


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
    search: SearchSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_kind_section(cls, data: Any) -> Any:
        return _with_defaults(data)

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
                if source is None or source.type in ("gaussian_clone", *SEGMENTATION_DATA):
                    allowed = [
                        d.name
                        for d in self.datasets
                        if d.type not in ("gaussian_clone", *SEGMENTATION_DATA)
                    ]
                    raise ValueError(
                        f"datasets.{i}.of: {of!r} is not a data set of this spec "
                        f"that can be cloned; allowed: {allowed}"
                    )
        self._check_data()
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
        self._check_lr_drops()
        if self.kind == "imp" and model_task(self.model) != "classification":
            raise ValueError(
                f"model.name: IMP lineages need a classification model, got {self.model.name!r}"
            )
        self._check_task()
        if "cavity" in (self.imp.baselines if self.imp else []) and self.model.name != "fcn":
            raise ValueError(
                "imp.baselines: 'cavity' scores a dense first layer on pixels and needs "
                f"model.name: fcn (got {self.model.name!r})"
            )
        if self.kind == "pai":
            self._check_scoring()
        self._check_components()
        self._check_search()
        return self

    # -- cross-section checks ------------------------------------------------------------
    def _check_data(self) -> None:
        for i, data in enumerate(self.datasets):
            seed = getattr(data, "seed", None)
            if isinstance(seed, int) and not TORCH_SEEDS[0] <= seed <= TORCH_SEEDS[1]:
                raise ValueError(
                    f"datasets.{i}.seed: {seed} is outside torch's seed range "
                    f"[{TORCH_SEEDS[0]}, {TORCH_SEEDS[1]}]"
                )
            classes = self.num_classes(data.name)
            for split in ("n_train", "n_test"):
                n = getattr(data, split, None)
                if data.type == "nlgp" and n < classes:
                    raise ValueError(
                        f"datasets.{i}.{split}: {n} images cannot hold one of each of the "
                        f"{classes} classes (one per entry of xi); make it at least {classes}"
                    )
            n_train = self.train_size(data.name)
            if n_train is not None and self.training.batch_size > n_train:
                raise ValueError(
                    f"training.batch_size ({self.training.batch_size}) exceeds the n_train "
                    f"({n_train}) of datasets.{i} ({data.name!r}): make it at most {n_train}"
                )

    def _check_lr_drops(self) -> None:
        unit, end = (
            ("epochs", self.training.epochs)
            if self.kind == "pai"
            else (
                "steps",
                self.training.steps,
            )
        )
        late = [d for d in self.training.lr_drops if d >= end]
        if late:
            allowed = f"1 to {end - 1}" if end > 1 else "none (remove lr_drops)"
            raise ValueError(
                f"training.lr_drops: {late} never take effect in training of {end} {unit} "
                f"(training.{unit}); allowed: {allowed}"
            )

    def _check_task(self) -> None:
        task = model_task(self.model)
        for i, data in enumerate(self.datasets):
            source = self.dataset(data.of) if data.type == "gaussian_clone" else data
            data_task = "segmentation" if source.type in SEGMENTATION_DATA else "classification"
            if data_task != task:
                raise ValueError(
                    f"datasets.{i}.type: {data.type!r} is {data_task} data, but model.name "
                    f"{self.model.name!r} is a {task} model"
                )

    def _check_scoring(self) -> None:
        pai = self.pai
        total = pai.scoring_batches * pai.scoring_batch_size
        for i, data in enumerate(self.datasets):
            n_train = self.train_size(data.name)
            if n_train is not None and total > n_train:
                raise ValueError(
                    f"pai.scoring_batch_size: pai.scoring_batches ({pai.scoring_batches}) "
                    f"batches of {pai.scoring_batch_size} need {total} training images, more "
                    f"than the {n_train} of datasets.{i} ({data.name!r})"
                )

    def _check_components(self) -> None:
        components = self.analysis.components
        if components is None:
            return
        source = components.source
        names = [d.name for d in self.datasets]
        if source != "sample_patches" and source not in names:
            raise ValueError(
                f"analysis.components.source: {source!r} is neither 'sample_patches' nor a "
                f"data set of this spec; allowed: {['sample_patches', *names]}"
            )
        if source == "sample_patches":
            shape = self.image_shape(names[0])
            channels = shape[0] if shape else None
            if channels not in (None, 1, 3):
                raise ValueError(
                    f"analysis.components.source: sample_patches are grey or RGB, but "
                    f"datasets.0 ({names[0]!r}) has {channels} channels; name a data set instead"
                )
            dim = (channels or 3) * components.patch_size**2
            count = components.patches
        else:
            shape = self.image_shape(source)
            dim = math.prod(shape) if shape else None
            n_train = self.train_size(source)
            count = components.patches if n_train is None else min(components.patches, n_train)
        limit = min(v for v in (dim, count) if v is not None)
        if components.n_components > limit:
            raise ValueError(
                f"analysis.components.n_components: {components.n_components} exceeds "
                f"min(patches, pixels) = {limit} of source {source!r}; make it at most {limit}"
            )

    # -- facts about the data sets, known before they are built --------------------------
    def _sized(self, name: str):
        data = self.dataset(name)
        return self.dataset(data.of) if data.type == "gaussian_clone" else data

    def train_size(self, name: str) -> int | None:
        """Training images of a data set: declared, or the published size; None if unknown."""
        data = self._sized(name)
        declared = getattr(data, "n_train", None)
        published = PUBLISHED_SIZES.get(data.type, (None, None))[0]
        known = [n for n in (declared, published) if isinstance(n, int)]
        return min(known) if known else None

    def num_classes(self, name: str) -> int | None:
        data = self._sized(name)
        if data.type == "nlgp":
            return len(data.xi)
        return PUBLISHED_SIZES.get(data.type, (None, None))[1]

    def image_shape(self, name: str) -> tuple[int, int, int] | None:
        data = self._sized(name)
        if data.type == "nlgp":
            return (data.channels, data.grid, data.grid)
        if data.type in ("cifar10", "cifar100"):
            return (3, 32, 32)
        if data.type == "imagenet32":
            return (3, data.image_size, data.image_size)
        size = getattr(data, "size", None)
        return (3, size, size) if size else None

    # -- searches ------------------------------------------------------------------------
    def searchable_fields(self) -> dict[str, str]:
        """Dotted key path -> scalar type (int, float, bool, str, literal) a search may vary.

        Data sets, seeds, resources, run and analysis settings are left out: data sets are
        built once and shared by every trial, and the others do not change what a trial computes.
        """
        sections: dict[str, BaseModel] = {"training": self.training, "model": self.model}
        if self.kind == "imp":
            sections["imp"] = self.imp
        else:
            sections["pai"] = self.pai
            for method in self.pai.methods:
                sections[f"pai.hparams.{method}"] = getattr(self.pai.hparams, method)
        skip = {"model.name", *OTHER_KIND_FIELDS[self.kind]}
        fields = {}
        for prefix, section in sections.items():
            for name, info in type(section).model_fields.items():
                kind = _scalar_kind(info.annotation)
                path = f"{prefix}.{name}"
                if kind is not None and path not in skip:
                    fields[path] = kind
        return fields

    def search_metrics(self) -> tuple[str, ...]:
        if self.kind == "imp":
            return SEARCH_METRICS["imp"] if self.model.name == "fcn" else ("test_accuracy",)
        score = "test_miou" if model_task(self.model) == "segmentation" else "test_accuracy"
        return (score, "train_loss")

    def with_values(self, values: Mapping[str, Any] | None) -> ExperimentSpec:
        """One trial's spec: the sampled values applied, the search section removed.

        A lineage or run id hashes this spec, so every configuration gets its own ids.
        """
        if values is None:
            return self
        data = self.model_dump(mode="json")
        data["search"] = None
        for path, value in values.items():
            _set_path(data, path, value)
        return ExperimentSpec.model_validate(data)

    def trial_iterations(self) -> int:
        """Tune iterations of one trial: IMP rounds + 1, or PaI epochs."""
        # a PaI trial's first step prunes, and trains its first epoch if it has one
        return self.imp.rounds + 1 if self.kind == "imp" else max(1, self.training.epochs)

    def search_points(self) -> list[dict[str, Any]]:
        """The configurations checked before Ray starts: all of them, or Optuna's corners."""
        if self.search is None:
            return []
        configurations = self.search.configurations()
        return configurations if configurations is not None else self.search.corner_points()

    def max_trial_iterations(self) -> int:
        """The longest trial of the experiment, searched rounds or epochs included."""
        points = self.search_points()
        return max(self.with_values(v).trial_iterations() for v in points or [None])

    def _check_search(self) -> None:
        search = self.search
        if search is None:
            return
        fields = self.searchable_fields()
        for path, distribution in search.space.items():
            where = f"search.space.{path}"
            if path not in fields:
                raise ValueError(
                    f"{where}: not a scalar field a kind {self.kind} search can vary; "
                    f"allowed: {sorted(fields)}"
                )
            kind = distribution.kind
            if fields[path] == "int" and kind in ("uniform", "loguniform"):
                raise ValueError(
                    f"{where}: {kind} draws real numbers, but {path} is an integer; "
                    "allowed: randint, choice, grid"
                )
            if fields[path] in ("bool", "str", "literal") and kind not in ("choice", "grid"):
                raise ValueError(
                    f"{where}: {kind} draws numbers, but {path} is not a number; "
                    "allowed: choice, grid"
                )
            if path.startswith("pai.hparams."):
                method = path.split(".")[2]
                if list(self.pai.methods) != [method]:
                    raise ValueError(
                        f"{where}: a method's hyper-parameter can be searched only with "
                        f"pai.methods: [{method}] (got {list(self.pai.methods)}); the other "
                        "methods' runs would repeat for every value"
                    )
            for value in distribution.corners():
                self._check_point({path: value}, f"{where}: {kind} value {value!r}")
        try:
            points = self.search_points()
        except ValueError as error:
            raise ValueError(str(error)) from None
        for values in points:
            shown = ", ".join(f"{p}={v!r}" for p, v in values.items())
            self._check_point(values, f"search.space: the configuration {shown}")
        self._check_search_metrics()

    def _check_point(self, values: dict[str, Any], what: str) -> None:
        try:
            self.with_values(values)
        except ValidationError as error:
            problems = "; ".join(line.strip() for line in _error_lines(error))
            raise ValueError(f"{what} makes an invalid spec: {problems}") from None

    def _check_search_metrics(self) -> None:
        search, allowed = self.search, self.search_metrics()
        checks = [("search", search.metric, search.mode)]
        asha = search.scheduler.asha if search.scheduler else None
        if asha is not None:
            checks.append(
                ("search.scheduler.asha", asha.metric or search.metric, asha.mode or search.mode)
            )
        for where, metric, mode in checks:
            if metric not in allowed:
                raise ValueError(
                    f"{where}.metric: {metric!r} is not reported by kind {self.kind} trials "
                    f"of model {self.model.name!r}; allowed: {list(allowed)}"
                )
            if metric in MINIMISED_METRICS and mode == "max":
                raise ValueError(f"{where}.mode: {metric} is minimised; set mode: min")
        if asha is not None:
            longest = asha.max_t or self.max_trial_iterations()
            if asha.grace_period >= longest:
                unit = "IMP rounds + 1" if self.kind == "imp" else "epochs"
                raise ValueError(
                    f"search.scheduler.asha.grace_period: {asha.grace_period} leaves no rung "
                    f"to stop a trial at before its end ({longest} iterations = {unit}); "
                    f"make it at most {longest - 1}"
                )

    def dataset(self, name: str):
        for data in self.datasets:
            if data.name == name:
                return data
        raise KeyError(name)

    @property
    def section(self) -> IMPSpec | PAISpec:
        """The section of this spec's kind of run."""
        return self.imp if self.kind == "imp" else self.pai


def _set_path(data: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _options(annotation: Any) -> list[Any]:
    """The members of a union (Optional included) with their constraints stripped."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _scalar_kind(annotation: Any) -> str | None:
    options = _options(annotation)
    if len(options) != 1:
        return None
    (option,) = options
    if get_origin(option) is Literal:
        return "literal"
    if option in (bool, int, float, str):
        return option.__name__
    return None


def _misplaced_booleans(annotation: Any, value: Any, path: str) -> list[tuple[str, bool]]:
    """Key paths where a boolean stands for a number (YAML reads yes, on, true as booleans;
    pydantic would then quietly take them as 1 and 0)."""
    options = _options(annotation)
    if isinstance(value, bool):
        numeric = any(o in (int, float) for o in options)
        return [(path, value)] if numeric and bool not in options else []
    models = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
    if isinstance(value, dict) and models:
        model = _tagged(models, value)
        return _model_booleans(model, value, path) if model else []
    sequences = [o for o in options if get_origin(o) in (list, tuple)]
    if isinstance(value, list) and len(sequences) == 1:
        args = get_args(sequences[0])
        fixed = get_origin(sequences[0]) is tuple and (not args or args[-1] is not Ellipsis)
        found = []
        for i, item in enumerate(value):
            if fixed and i >= len(args):
                break
            found += _misplaced_booleans(args[i] if fixed else args[0], item, f"{path}.{i}")
        return found
    mappings = [o for o in options if get_origin(o) is dict]
    if isinstance(value, dict) and len(mappings) == 1:
        item = get_args(mappings[0])[1]
        return [p for k, v in value.items() for p in _misplaced_booleans(item, v, f"{path}.{k}")]
    return []


def _tagged(models: list[type[BaseModel]], value: dict) -> type[BaseModel] | None:
    """The member of a tagged union that a mapping names by its tag (``type``, ``name``)."""
    if len(models) == 1:
        return models[0]
    for model in models:
        for name, info in model.model_fields.items():
            option = _unwrap(info.annotation)
            if get_origin(option) is Literal and value.get(name) in get_args(option):
                return model
    return None


def _model_booleans(model: type[BaseModel], value: dict, path: str) -> list[tuple[str, bool]]:
    found = []
    for name, info in model.model_fields.items():
        if name in value:
            where = f"{path}.{name}" if path else name
            found += _misplaced_booleans(info.annotation, value[name], where)
    return found


def _error_lines(error: ValidationError) -> list[str]:
    lines = []
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
        if not path or message.startswith((f"{path}.", f"{path}:")):
            lines.append(f"  {message}")  # cross-field checks name their own key paths
        else:
            lines.append(f"  {path}: {message} (got {shown})")
    return lines


def _format_errors(source: str, error: ValidationError) -> str:
    return "\n".join([f"invalid experiment spec {source}:", *_error_lines(error)])


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(
            f"invalid experiment spec {source}: expected a mapping, got {type(data).__name__}"
        )
    booleans = _model_booleans(ExperimentSpec, _with_defaults(data), "")
    if booleans:
        lines = [f"invalid experiment spec {source}:"]
        for path, value in booleans:
            lines.append(f"  {path}: Input should be a number, not a boolean (got {value!r})")
        raise SpecError("\n".join(lines))
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
