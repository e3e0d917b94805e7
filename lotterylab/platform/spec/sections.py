"""The sections of an experiment spec, each a ``Strict`` model checked on its own.

Sections that list registry entries (IMP siblings, pruning methods and their hyper-parameters)
are built from the registries, so a registered entry is a valid value with nothing added here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, create_model, field_validator, model_validator

from lotterylab.platform.imp.siblings import SIBLINGS, sibling_names
from lotterylab.platform.pruning import hparams_class, method_names, single_shot_names
from lotterylab.platform.schema import Strict

# paper 2's sparsity grid: density 0.8^(2k), k = 1..9 (36.00 % ... 98.20 % sparsity)
PAPER2_DENSITIES = [round(0.8 ** (2 * k), 10) for k in range(1, 10)]

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
    steps: Annotated[int, Field(ge=1, le=10**8)] = Field(
        100_000, description="optimiser steps of one IMP training (kind imp)"
    )
    rewind_step: Annotated[int, Field(ge=0)] = Field(
        1000, description="step whose weights IMP rewinds to (kind imp)"
    )
    epochs: Annotated[int, Field(ge=0, le=10**4)] | None = Field(
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
    baselines: list[Literal[tuple(sibling_names())]] = Field(
        ["oneshot", "random"],
        description="siblings at IMP's per-layer counts: "
        + "; ".join(f"{name}: {SIBLINGS[name].description}" for name in sibling_names()),
    )
    train_baselines: bool = Field(
        True, description="train the siblings' masks each round (some always train)"
    )
    measure_kurtosis: bool = Field(
        True,
        description="first-layer pre-activation kurtosis at the start of every round "
        "(models with a dense first layer on pixels; ignored otherwise)",
    )
    measure_cavity: bool = Field(
        True,
        description="cavity scores grouped by removal round when the lineage ends (models "
        "with a dense first layer on pixels; ignored otherwise)",
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
        default_factory=single_shot_names,
        description="methods scored once whatever rounds says (default: those whose entry "
        "declares itself single-shot, the paper's)",
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
