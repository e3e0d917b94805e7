"""The ``search`` section of a spec: which fields each trial draws, how, and what ranks them.

Only the section's own shape is checked here; ``ExperimentSpec`` (``spec.experiment``) checks
every value the space can produce against the fields it names, with the rest of the spec.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from lotterylab.platform.schema import Strict
from lotterylab.platform.store.ids import canonical_json

SEARCH_ALGORITHMS = ("random", "grid", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
# what the trainables report after every IMP round or PaI epoch, and so what a search can rank
SEARCH_METRICS = {
    "imp": ("test_accuracy", "rf_width_median"),
    "pai": ("test_accuracy", "test_miou", "train_loss"),
}
MINIMISED_METRICS = ("train_loss",)
# fields of one kind of run only: searching them in the other would repeat identical trials
OTHER_KIND_FIELDS = {
    "imp": ("training.epochs",),
    "pai": ("training.steps", "training.rewind_step"),
}
# checking every combination of range ends is exhaustive up to this many combinations
_MAX_CORNER_COMBINATIONS = 512

Scalar = bool | int | float | str  # a smart union keeps each YAML value's own type


class Distribution(Strict):
    """How one searched field is drawn: exactly one of the keys, Ray Tune's conventions."""

    uniform: tuple[float, float] | None = Field(
        None, description="[low, high]: a real number drawn uniformly, low <= x < high"
    )
    loguniform: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        None, description="[low, high]: a real number drawn uniformly in log space, 0 < low"
    )
    randint: tuple[int, int] | None = Field(
        None, description="[low, high]: an integer low <= n < high (high excluded, as in Tune)"
    )
    choice: Annotated[list[Scalar], Field(min_length=1)] | None = Field(
        None, description="values, one drawn uniformly per sample"
    )
    grid: Annotated[list[Scalar], Field(min_length=1)] | None = Field(
        None, description="values, every one tried (algorithm: grid)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {list(DISTRIBUTIONS)}, got {given or 'none of them'}"
            )
        kind, args = self.kind, self.args
        if kind in ("uniform", "loguniform", "randint") and not args[0] < args[1]:
            raise ValueError(f"{kind}: low must be smaller than high, got {list(args)}")
        if kind in ("choice", "grid"):
            keys = [canonical_json(v) for v in args]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{kind}: values must not repeat, got {list(args)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def args(self) -> tuple | list:
        return getattr(self, self.kind)

    def corners(self) -> list:
        """The values a constraint on the field is checked at: range ends, or every value."""
        low_high = {"uniform": 0, "loguniform": 0, "randint": 1}
        if self.kind in low_high:
            low, high = self.args
            return [low, high - low_high[self.kind]]
        return list(self.args)

    def count(self) -> float:
        """Distinct values it can take (infinite for real ranges)."""
        if self.kind in ("uniform", "loguniform"):
            return math.inf
        if self.kind == "randint":
            return self.args[1] - self.args[0]
        return len(self.args)

    def sample(self, rng: np.random.RandomState) -> Any:
        kind, args = self.kind, self.args
        if kind == "uniform":
            return float(rng.uniform(*args))
        if kind == "loguniform":
            return float(np.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
        if kind == "randint":
            return int(rng.randint(*args))
        return args[int(rng.randint(len(args)))]


class ASHASpec(Strict):
    """Asynchronous successive halving: stop trials whose metric lags at each rung."""

    metric: str | None = Field(None, description="reported metric it compares (search.metric)")
    mode: Literal["max", "min"] | None = Field(None, description="max or min (search.mode)")
    grace_period: Annotated[int, Field(ge=1)] = Field(
        1, description="rounds (imp) or epochs (pai) every trial runs before it may be stopped"
    )
    reduction_factor: Annotated[float, Field(gt=1)] = Field(
        2, description="1/reduction_factor of the trials reaching a rung go on to the next"
    )
    max_t: Annotated[int, Field(ge=1)] | None = Field(
        None, description="iterations of the longest trial (default imp.rounds + 1, or epochs)"
    )


class SchedulerSpec(Strict):
    asha: ASHASpec = Field(description="early stopping by ASHA")


class SearchSpec(Strict):
    """Spec fields drawn per trial; each configuration runs on the whole grid of the kind."""

    space: Annotated[dict[str, Distribution], Field(min_length=1)] = Field(
        description="dotted key path of a scalar field (training.lr) -> its distribution"
    )
    algorithm: Literal[SEARCH_ALGORITHMS] = Field(
        "random", description="random sampling, every grid combination, or Optuna's TPE"
    )
    num_samples: Annotated[int, Field(ge=1, le=10_000)] = Field(
        1, description="distinct configurations drawn (random, optuna; grid takes each once)"
    )
    metric: str = Field(
        "test_accuracy", description="the metric Optuna optimises and the report ranks by"
    )
    mode: Literal["max", "min"] = Field("max", description="whether higher metric is better")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="seed of random sampling and of Optuna's sampler"
    )
    scheduler: SchedulerSpec | None = Field(None, description="early stopping (asha)")

    @model_validator(mode="after")
    def _algorithm_fits_space(self) -> SearchSpec:
        kinds = {path: d.kind for path, d in self.space.items()}
        if self.algorithm == "grid":
            sampled = sorted(p for p, k in kinds.items() if k != "grid")
            if sampled:
                raise ValueError(
                    f"search.space.{sampled[0]}: algorithm grid takes grid values only, "
                    f"got {kinds[sampled[0]]}; allowed: grid"
                )
            if self.num_samples != 1:
                raise ValueError(
                    f"search.num_samples: algorithm grid runs every combination once; "
                    f"remove num_samples (got {self.num_samples})"
                )
            return self
        gridded = sorted(p for p, k in kinds.items() if k == "grid")
        if gridded:
            raise ValueError(
                f"search.space.{gridded[0]}: grid values need algorithm: grid "
                f"(got algorithm: {self.algorithm}); allowed here: "
                f"{[k for k in DISTRIBUTIONS if k != 'grid']}"
            )
        distinct = math.prod(d.count() for d in self.space.values())
        if self.num_samples > distinct:
            raise ValueError(
                f"search.num_samples: {self.num_samples} exceeds the {distinct} distinct "
                "configurations of search.space; lower it, or use algorithm: grid"
            )
        return self

    def configurations(self) -> list[dict[str, Any]] | None:
        """Every configuration the search runs, in order; None for Optuna (it adapts)."""
        if self.algorithm == "grid":
            paths = list(self.space)
            values = itertools.product(*(self.space[p].grid for p in paths))
            return [dict(zip(paths, combination, strict=True)) for combination in values]
        if self.algorithm == "optuna":
            return None
        rng = np.random.RandomState(self.seed)
        drawn: dict[str, dict[str, Any]] = {}
        for _ in range(100 * self.num_samples + 1000):
            values = {path: d.sample(rng) for path, d in self.space.items()}
            drawn.setdefault(canonical_json(values), values)
            if len(drawn) == self.num_samples:
                return list(drawn.values())
        raise ValueError(
            f"search: could not draw {self.num_samples} distinct configurations "
            f"(got {len(drawn)}); lower search.num_samples"
        )

    def corner_points(self) -> list[dict[str, Any]]:
        """Combinations of range ends and listed values: where monotone constraints break."""
        paths = list(self.space)
        corners = [self.space[p].corners() for p in paths]
        if math.prod(len(c) for c in corners) > _MAX_CORNER_COMBINATIONS:
            return [{p: v} for p, values in zip(paths, corners, strict=True) for v in values]
        return [
            dict(zip(paths, combination, strict=True))
            for combination in itertools.product(*corners)
        ]
