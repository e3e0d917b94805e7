"""The experiment spec: the sections joined, and every check that spans them.

Every model forbids unknown keys, so a typo fails with its key path instead of being ignored.
Data sources, models and pruning methods bring their own spec sections from their registries;
this module joins them, adds the section of each kind of run (``imp`` or ``pai``, chosen by
``kind``) and checks every constraint that spans sections, asking the registry entries for
their facts, so a bad spec never reaches Ray. It names no model, data set or method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from lotterylab.platform.data.registry import (
    DataContext,
    check_sources,
    data_spec_union,
    source,
)
from lotterylab.platform.data.registry import train_size as data_train_size
from lotterylab.platform.imp.siblings import sibling
from lotterylab.platform.models import (
    DEFAULT_MODEL,
    MODELS,
    has_dense_first_layer,
    model_spec_union,
    model_task,
)
from lotterylab.platform.schema import NAME_PATTERN, Strict
from lotterylab.platform.spec.bounds import grid_problem, storage_problem
from lotterylab.platform.spec.errors import error_lines, scalar_kind
from lotterylab.platform.spec.safe_yaml import shown
from lotterylab.platform.spec.search import (
    MINIMISED_METRICS,
    OTHER_KIND_FIELDS,
    SEARCH_METRICS,
    SearchSpec,
)
from lotterylab.platform.spec.sections import (
    AnalysisSpec,
    IMPSpec,
    PAISpec,
    ResourcesSpec,
    RunSpec,
    TrainingSpec,
)
from lotterylab.platform.store.tracking.spec import TrackingSpec

KINDS = ("imp", "pai")
TORCH_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
DataSpec = data_spec_union()
ModelSpec = model_spec_union()


def with_defaults(data: Any) -> Any:
    """The ``imp`` section of an IMP spec and the default model, when the spec leaves them out."""
    if isinstance(data, dict) and data.get("kind", "imp") == "imp" and data.get("imp") is None:
        data = {**data, "imp": {}}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = {**data, "model": {"name": DEFAULT_MODEL, **data["model"]}}
    return data


class ExperimentSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal[KINDS] = "imp"
    storage: str = "./results"
    seeds: Annotated[list[int], Field(min_length=1)] = [0, 1, 2]
    datasets: Annotated[list[DataSpec], Field(min_length=1)]
    model: ModelSpec = Field(default_factory=lambda: MODELS[DEFAULT_MODEL].spec())
    training: TrainingSpec = TrainingSpec()
    imp: IMPSpec | None = None
    pai: PAISpec | None = None
    analysis: AnalysisSpec = AnalysisSpec()
    resources: ResourcesSpec = ResourcesSpec()
    run: RunSpec = RunSpec()
    search: SearchSpec | None = None
    tracking: TrackingSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_kind_section(cls, data: Any) -> Any:
        return with_defaults(data)

    @field_validator("storage")
    @classmethod
    def _leased_storage(cls, value: str) -> str:
        problem = storage_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentSpec:
        too_big = grid_problem(self)
        if too_big:
            raise ValueError(too_big)
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must not repeat, got {shown(self.seeds)}")
        check_sources(self.datasets)
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
        self._check_siblings()
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
            data_task = self.data_task(data.name)
            if data_task != task:
                raise ValueError(
                    f"datasets.{i}.type: {data.type!r} is {data_task} data, but model.name "
                    f"{self.model.name!r} is a {task} model"
                )

    def _check_siblings(self) -> None:
        if self.imp is None or has_dense_first_layer(self.model):
            return
        for i, name in enumerate(self.imp.baselines):
            if sibling(name).needs_dense_first_layer:
                allowed = [m for m in MODELS if MODELS[m].dense_first_layer]
                raise ValueError(
                    f"imp.baselines.{i}: {name!r} reads a dense first layer on pixels, which "
                    f"model {self.model.name!r} has not; models that have one: {allowed}"
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
    def data_facts(self, name: str):
        """The spec whose facts data set ``name`` has (a derived set's source)."""
        return DataContext(self.datasets).facts_of(name)

    def train_size(self, name: str) -> int | None:
        """Training images of a data set: declared, or the published size; None if unknown."""
        return data_train_size(self.data_facts(name))

    def num_classes(self, name: str) -> int | None:
        facts = self.data_facts(name)
        return source(facts).num_classes(facts)

    def image_shape(self, name: str) -> tuple[int, int, int] | None:
        facts = self.data_facts(name)
        return source(facts).image_shape(facts)

    def data_task(self, name: str) -> str:
        """``classification`` or ``segmentation`` (label maps)."""
        return source(self.data_facts(name)).task

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
                kind = scalar_kind(info.annotation)
                path = f"{prefix}.{name}"
                if kind is not None and path not in skip:
                    fields[path] = kind
        return fields

    def search_metrics(self) -> tuple[str, ...]:
        if self.kind == "imp":
            dense_first = has_dense_first_layer(self.model)
            return SEARCH_METRICS["imp"] if dense_first else ("test_accuracy",)
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
            problems = "; ".join(line.strip() for line in error_lines(error))
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
