"""Analyses of stored experiments, one work unit at a time: cavity scores, fixed-weight NTK
spectra, layer widths, and first-layer kurtosis with RF widths.

A unit is one analysis of one stored mask: an IMP lineage × method × round, a PaI run, or the
dense net a PaI run was pruned from. Its output path is a function of its inputs alone, so the
same unit always lands in the same place and a finished one (checksum verified, table part
present) is never computed again: a re-run after a crash computes only what is missing, and a
run while trials still train covers the rounds and runs stored so far, a later one the rest.

Layout under the experiment::

    analysis/<what>/<lineage id>/<method>-round-0003.pt     IMP lineages
    analysis/<what>/<run id>/mask.pt                        PaI runs (width: .json)
    analysis/ntk/<run or dense id>/samples-0100.pt          NTK spectra on N samples
    tables/analysis_<what>/<lineage, run or dense id>/<unit>.parquet

Everything here is a pure function of what the store holds (and of the data sets, rebuilt
deterministically from the stored spec); no Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.first_layer import (
    finite_or_none,
    first_layer_inputs,
    kurtosis_columns,
    rf_width_columns,
)
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.metrics import (
    cavity_scores,
    layer_widths,
    ntk_spectrum,
    preactivation_kurtosis,
    rf_width,
)
from lotterylab.platform.models import (
    apply_masks,
    build_model,
    first_layer_name,
    has_dense_first_layer,
    model_task,
)
from lotterylab.platform.seeds import derived_seed
from lotterylab.platform.spec import ExperimentSpec, IMPSpec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.identity import dense_identity
from lotterylab.platform.store.ids import short_hash
from lotterylab.platform.store.tables import CAVITY, KURTOSIS, NTK, WIDTH

WHATS = (CAVITY, NTK, WIDTH, KURTOSIS)
DEFAULT_SAMPLES = 100
# Θ of N·K rows beyond this (3.2 GB in float64) is refused before any work starts
MAX_NTK_ROWS = 20_000
# first-layer inputs measured for PaI runs (IMP lineages use their spec's imp.measure_samples)
PAI_MEASURE_SAMPLES = IMPSpec.model_fields["measure_samples"].default
DENSE = "dense"
COMPUTED, SKIPPED = "computed", "skipped"
# a writer replaces an artifact, then its checksum: a reader in between sees a mismatch
READ_ATTEMPTS = 5
READ_RETRY_S = 0.5


def parse_what(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"cavity,ntk"`` (or a list of names) as analysis names in canonical order."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"--what: name at least one analysis of {', '.join(WHATS)}")
    unknown = [n for n in names if n not in WHATS]
    if unknown:
        raise ValueError(
            f"--what: {', '.join(repr(n) for n in unknown)} is not an analysis; "
            f"allowed: {', '.join(WHATS)}"
        )
    return tuple(w for w in WHATS if w in names)


@dataclass(frozen=True)
class AnalysisUnit:
    """One analysis of one stored mask; its output path follows from these fields alone."""

    what: str
    source: str  # lineage | run | dense
    source_id: str
    kind: str  # imp | pai
    method: str
    dataset: str
    seed: int
    round: int | None = None  # IMP: the round whose mask (the one it trains) is analysed
    density: float | None = None
    rounds: int | None = None
    branch: str = ""
    init: str = "init"  # seed purpose of the weights at initialisation (PaI: init or reinit)
    samples: int | None = None  # NTK inputs

    @property
    def stem(self) -> str:
        if self.what == NTK:
            return f"samples-{self.samples:04d}"
        if self.source == "lineage":
            return f"{self.method}-round-{self.round:04d}"
        return "mask"

    @property
    def output(self) -> str:
        suffix = ".json" if self.what == WIDTH else ".pt"
        return f"analysis/{self.what}/{self.source_id}/{self.stem}{suffix}"

    @property
    def table(self) -> str:
        return f"analysis_{self.what}"

    @property
    def table_part(self) -> str:
        return f"tables/{self.table}/{self.source_id}/{self.stem}.parquet"

    @property
    def needs_data(self) -> bool:
        return self.what != WIDTH

    @property
    def key(self) -> str:
        return self.output


@dataclass
class UnitListing:
    """The units of an experiment, and why any requested analysis has none."""

    units: list[AnalysisUnit]
    not_applicable: dict[str, str] = field(default_factory=dict)

    def count(self, what: str) -> int:
        return sum(u.what == what for u in self.units)


@dataclass(frozen=True)
class UnitResult:
    key: str
    what: str
    status: str  # computed | skipped | failed
    seconds: float
    pid: int
    error: str | None = None
    device: str | None = None  # where the unit was computed (None: not computed here)
    bad_input: bool = False  # failed on a stored input that is missing or corrupt


# -- listing -----------------------------------------------------------------------------------
def list_units(
    store: ExperimentStore,
    spec: ExperimentSpec,
    what: Sequence[str] = WHATS,
    samples: int = DEFAULT_SAMPLES,
) -> UnitListing:
    """Every unit of ``what`` over the lineages and runs stored so far, in a stable order."""
    what = parse_what(what)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"--samples must be a positive integer, got {samples!r}")
    searched = [p for p in (spec.search.space if spec.search else {}) if p.startswith("model.")]
    if searched:  # every unit rebuilds the model from the one stored spec
        raise ValueError(
            f"search over {', '.join(searched)}: analyses of a search that changes the model "
            "are not supported; allowed: searches over training, imp and pai fields"
        )
    if spec.kind == "imp":
        listing = _imp_units(store, spec, what)
    else:
        listing = _pai_units(store, spec, what, samples)
    rank = {w: i for i, w in enumerate((NTK, CAVITY, KURTOSIS, WIDTH))}
    # the costliest first (balances the pool), then a source's units together (input caches)
    listing.units.sort(
        key=lambda u: (u.what != NTK, u.source_id, rank[u.what], u.method, u.round or 0)
    )
    return listing


def _imp_units(store: ExperimentStore, spec: ExperimentSpec, what: tuple) -> UnitListing:
    listing = UnitListing([])
    if NTK in what:
        listing.not_applicable[NTK] = (
            "NTK spectra are computed for PaI runs and their dense nets; this is an IMP experiment"
        )
    first_layer_units = [w for w in (CAVITY, KURTOSIS) if w in what]
    for lineage in store.list("lineages"):
        rel = f"lineages/{lineage}/lineage.json"
        if not store.exists(rel + ".sha256"):
            continue  # round 0 has not ended yet
        info = read_settled(store, rel, store.read_json)
        dense_first = has_dense_first_layer(spec.model)
        if not dense_first:
            for w in first_layer_units:
                listing.not_applicable[w] = (
                    f"{spec.model.name} has no dense first layer on pixels; {w} applies to "
                    "models with one (the FCN)"
                )
        kinds = [w for w in what if w == WIDTH or (w in first_layer_units and dense_first)]
        for method in info["methods"]:
            for n in range(int(info["last_round"]) + 1):
                for w in kinds:
                    listing.units.append(
                        AnalysisUnit(
                            what=w,
                            source="lineage",
                            source_id=lineage,
                            kind="imp",
                            method=method,
                            dataset=info["dataset"],
                            seed=int(info["seed"]),
                            round=n,
                        )
                    )
    return listing


def _pai_units(
    store: ExperimentStore, spec: ExperimentSpec, what: tuple, samples: int
) -> UnitListing:
    listing = UnitListing([])
    if CAVITY in what:
        listing.not_applicable[CAVITY] = (
            "cavity scores follow an IMP lineage's rounds from θ(t_rewind); "
            "this is a PaI experiment"
        )
    if NTK in what and model_task(spec.model) == "segmentation":
        listing.not_applicable[NTK] = (
            f"{spec.model.name} is a segmentation network: Θ over per-pixel logits is not computed"
        )
    dense: dict[str, AnalysisUnit] = {}
    checked_size = False
    for run in store.list("runs"):
        rel = f"runs/{run}/run.json"
        if not store.exists(rel + ".sha256"):
            continue  # not pruned yet
        info = read_settled(store, rel, store.read_json)
        image_shape = tuple(info["image_shape"])
        init = "reinit" if info["branch"] == "reinit" else "init"
        common = dict(
            source="run",
            source_id=run,
            kind="pai",
            method=info["method"],
            dataset=info["dataset"],
            seed=int(info["seed"]),
            density=float(info["density"]),
            rounds=int(info["rounds"]),
            branch=info["branch"],
            init=init,
        )
        if NTK in what and NTK not in listing.not_applicable:
            if not checked_size:
                _check_ntk_size(store, spec, run, image_shape, samples)
                checked_size = True
            listing.units.append(AnalysisUnit(what=NTK, samples=samples, **common))
            reference = dense_reference(spec, info["dataset"], int(info["seed"]), init, samples)
            dense.setdefault(reference.source_id, reference)
        if WIDTH in what:
            listing.units.append(AnalysisUnit(what=WIDTH, **common))
        if KURTOSIS in what:
            if has_dense_first_layer(spec.model):
                listing.units.append(AnalysisUnit(what=KURTOSIS, **common))
            else:
                listing.not_applicable[KURTOSIS] = (
                    f"{spec.model.name} has no dense first layer on pixels; kurtosis and RF "
                    "widths apply to models with one (the FCN)"
                )
    listing.units.extend(dense.values())
    return listing


def dense_reference(
    spec: ExperimentSpec, dataset: str, seed: int, init: str, samples: int
) -> AnalysisUnit:
    """The NTK unit of the unpruned net that PaI runs of (data set, seed, init) start from."""
    identity = dense_identity(spec, dataset, init)
    suffix = "-reinit" if init == "reinit" else ""
    return AnalysisUnit(
        what=NTK,
        source=DENSE,
        source_id=f"dense-{spec.model.name}-{dataset}-{short_hash(identity)}-s{seed}{suffix}",
        kind="pai",
        method=DENSE,
        dataset=dataset,
        seed=seed,
        density=1.0,
        branch="",
        init=init,
        samples=samples,
    )


def _check_ntk_size(
    store: ExperimentStore, spec: ExperimentSpec, run: str, image_shape: tuple, samples: int
) -> None:
    masks = read_settled(store, f"runs/{run}/masks.pt", store.read_tensors)
    model = build_model(spec.model, image_shape, 2, 0)
    names = [n for n, _ in model.named_parameters()]
    outputs = next((int(masks[n].shape[0]) for n in reversed(names) if n in masks), 1)
    rows = samples * outputs
    if rows > MAX_NTK_ROWS:
        raise ValueError(
            f"--samples {samples}: Θ would have {samples} × {outputs} logits = {rows} rows "
            f"({rows**2 * 8 / 2**30:.1f} GiB in float64); at most {MAX_NTK_ROWS} rows are "
            f"computed, so use --samples {max(1, MAX_NTK_ROWS // outputs)} or fewer"
        )


def read_settled(store: ExperimentStore, rel: str, reader: Callable[[str], Any]) -> Any:
    """Read an input a live trial may be replacing; retried while artifact and checksum differ."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return reader(rel)
        except StoreError:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(READ_RETRY_S)
    raise AssertionError("unreachable")


# -- the science of one unit -------------------------------------------------------------------
def calibrate_batch_norm(model: nn.Module, inputs: torch.Tensor) -> None:
    """Batch-norm running statistics of exactly ``inputs``, then eval mode.

    The fixed-weight NTK needs per-sample logits (eval mode); the initial statistics (mean 0,
    variance 1) normalise nothing, so a fresh ResNet's activations grow block after block and
    float32 Jacobians lose digits. One pass over the NTK's own inputs gives the statistics the
    network sees at initialisation in train mode, without coupling the samples.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: this batch's statistics exactly
    if norms:
        model.train()
        with torch.no_grad():
            model(inputs)
    model.eval()


def fixed_weight_ntk_spectrum(
    model: nn.Module, masks: Mapping[str, torch.Tensor] | None, inputs: torch.Tensor
) -> torch.Tensor:
    """Eigenvalues of Θ of ``model`` ⊙ ``masks`` at its current weights on ``inputs``."""
    if masks:
        apply_masks(model, masks)
    calibrate_batch_norm(model, inputs)
    return ntk_spectrum(model, masks, inputs)


def eigen_rank(eigenvalues: torch.Tensor) -> int:
    """Eigenvalues above rounding: max |λ| · size · float64 epsilon, as a matrix rank takes it."""
    tolerance = eigenvalues.abs().max() * len(eigenvalues) * torch.finfo(torch.float64).eps
    return int((eigenvalues > tolerance).sum())


class UnitRunner:
    """Computes and writes units of one experiment; holds what several units share.

    ``datasets`` may hold some of the spec's data sets already built (shared through Ray's
    object store); any other is built from the spec the first time a unit needs it.
    """

    def __init__(
        self,
        store: ExperimentStore,
        spec: ExperimentSpec,
        datasets: Mapping[str, ImageDataset] | None = None,
        device: torch.device | None = None,
    ):
        self.store, self.spec = store, spec
        self.datasets = dict(datasets or {})
        self.device = device or torch.device("cpu")
        self._inputs: tuple[str, torch.Tensor] | None = None  # one source's first-layer inputs
        self._templates: dict[str, nn.Module] = {}

    def dataset(self, name: str) -> ImageDataset:
        if name not in self.datasets:
            self.datasets[name] = build_dataset(self.spec.datasets, name)
        return self.datasets[name]

    def done(self, unit: AnalysisUnit) -> bool:
        """Output present with a valid checksum, and its table part written."""
        if not (self.store.exists(unit.output + ".sha256") and self.store.exists(unit.table_part)):
            return False
        try:
            self.store.read_artifact(unit.output)
        except StoreError:
            return False
        return True

    def run(self, unit: AnalysisUnit, pid: int = 0) -> UnitResult:
        """Compute the unit unless it is done; its table row first, its artifact last."""
        start = time.perf_counter()
        if self.done(unit):
            return UnitResult(unit.key, unit.what, SKIPPED, time.perf_counter() - start, pid)
        artifact, row = self.compute(unit)
        self.store.write_rows(unit.table, unit.source_id, unit.stem, [row])
        if unit.what == WIDTH:
            self.store.write_json(unit.output, artifact)
        else:
            self.store.write_tensors(unit.output, artifact)
        seconds = time.perf_counter() - start
        return UnitResult(unit.key, unit.what, COMPUTED, seconds, pid, device=str(self.device))

    def compute(self, unit: AnalysisUnit) -> tuple[Any, dict]:
        """The unit's artifact and table row, nothing written."""
        compute = {
            CAVITY: self._cavity,
            NTK: self._ntk,
            WIDTH: self._width,
            KURTOSIS: self._kurtosis,
        }[unit.what]
        return compute(unit)

    # -- inputs ---------------------------------------------------------------------------
    def _removal_rounds(self, unit: AnalysisUnit) -> dict[str, torch.Tensor]:
        rel = f"lineages/{unit.source_id}/masks/{unit.method}.pt"
        return read_settled(self.store, rel, self.store.read_tensors)

    def masks(self, unit: AnalysisUnit) -> dict[str, torch.Tensor]:
        """The analysed mask: the one an IMP round trains, or a PaI run's."""
        if unit.source == "lineage":
            return mk.masks_after_round(self._removal_rounds(unit), unit.round - 1)
        rel = f"runs/{unit.source_id}/masks.pt"
        stored = read_settled(self.store, rel, self.store.read_tensors)
        return {name: mask.bool() for name, mask in stored.items()}

    def initial_model(self, unit: AnalysisUnit) -> nn.Module:
        """The net at the initialisation a PaI run (or its dense reference) starts from."""
        data = self.dataset(unit.dataset)
        seed = derived_seed(unit.seed, unit.init)
        return build_model(self.spec.model, data.image_shape, data.num_classes, seed)

    def first_layer(self, unit: AnalysisUnit) -> tuple[str, torch.Tensor, torch.Tensor]:
        """The first layer's name, the weights it starts from, and the inputs it sees.

        IMP: θ(t_rewind), and the input batch norm at its statistics on the lineage's first
        ``imp.measure_samples`` training inputs, as ``IMPLineage`` measures them. PaI: the
        initial weights and batch norm, on as many inputs. Inputs are on this device.
        """
        data = self.dataset(unit.dataset)
        if unit.source == "lineage":
            rel = f"lineages/{unit.source_id}/rewind.pt"
            state = read_settled(self.store, rel, self.store.read_tensors)
            count = self.spec.imp.measure_samples
        else:
            state = self.initial_model(unit).state_dict()
            count = PAI_MEASURE_SAMPLES
        model = self._template(unit.dataset)
        name = first_layer_name(model)
        if self._inputs is None or self._inputs[0] != unit.source_id:
            self._inputs = None  # free the last source's inputs first
            model.load_state_dict(state)
            self._inputs = (unit.source_id, first_layer_inputs(model, data, count, self.device))
        return name, state[name], self._inputs[1]

    # -- the analyses ---------------------------------------------------------------------
    def _cavity(self, unit: AnalysisUnit) -> tuple[dict, dict]:
        name, start, inputs = self.first_layer(unit)
        mask = self.masks(unit)[name]
        weight = (start * mask).to(self.device)
        scores = cavity_scores(weight, inputs).cpu()
        n_alive = int(mask.sum())
        scored = scores[mask & scores.isfinite()]
        row = {
            **self._columns(unit),
            "n_alive": n_alive,
            "n_scored": int(scored.numel()),
            "cavity_mean": finite_or_none(n_alive * scored.mean()) if scored.numel() else None,
            "positive_fraction": float((scored > 0).double().mean()) if scored.numel() else None,
        }
        return {"scores": scores}, row

    def _kurtosis(self, unit: AnalysisUnit) -> tuple[dict, dict]:
        name, start, inputs = self.first_layer(unit)
        data = self.dataset(unit.dataset)
        mask = self.masks(unit).get(name)
        if mask is None:  # a first layer the run did not prune
            mask = torch.ones_like(start, dtype=torch.bool)
        weight = (start * mask).to(self.device)
        labels = data.train_y[: len(inputs)]
        kurtosis = preactivation_kurtosis(
            weight,
            inputs,
            labels=labels.to(self.device) if labels.dim() == 1 else None,
            num_classes=data.num_classes if labels.dim() == 1 else None,
        )
        sigma_x, sigma_y = rf_width(mask, data.image_shape)
        row = {
            **self._columns(unit),
            "sparsity_first_layer": 1.0 - float(mask.float().mean()),
            **kurtosis_columns(kurtosis),
            **rf_width_columns(mask, data.image_shape),
        }
        artifact = {"overall": kurtosis.overall.cpu(), "sigma_x": sigma_x, "sigma_y": sigma_y}
        if kurtosis.per_class is not None:
            artifact["per_class"] = kurtosis.per_class.cpu()
        return artifact, row

    def _width(self, unit: AnalysisUnit) -> tuple[dict, dict]:
        widths = layer_widths(self.masks(unit))
        artifact = {
            "active_units": widths.active_units,
            "total_units": widths.total_units,
            "layer_density": widths.layer_density,
            "density": widths.density,
            "collapsed": widths.collapsed,
        }
        row = {
            **self._columns(unit),
            **widths.columns(),
        }
        return artifact, row

    def _ntk(self, unit: AnalysisUnit) -> tuple[dict, dict]:
        data = self.dataset(unit.dataset)
        model = self.initial_model(unit).to(self.device)
        masks = None if unit.source == DENSE else self.masks(unit)
        n = min(unit.samples, data.size("train"))
        x = data.batch("train", torch.arange(n)).view(n, *data.image_shape).to(self.device)
        device_masks = None if masks is None else {k: v.to(self.device) for k, v in masks.items()}
        eigenvalues = fixed_weight_ntk_spectrum(model, device_masks, x).cpu()
        kept = 1.0 if masks is None else layer_widths(masks).density
        row = {
            **self._columns(unit),
            "init": unit.init,
            "samples": n,
            "outputs": len(eigenvalues) // n,
            "eig_max": float(eigenvalues[0]),
            "eig_median": float(eigenvalues.median()),
            "eig_min": float(eigenvalues[-1]),
            "trace": float(eigenvalues.sum()),
            "rank": eigen_rank(eigenvalues),
            "actual_density": float(kept),
        }
        return {"eigenvalues": eigenvalues}, row

    # -- helpers --------------------------------------------------------------------------
    def _template(self, dataset: str) -> nn.Module:
        """A model of the data set's shapes, to load stored weights into (one per data set)."""
        if dataset not in self._templates:
            data = self.dataset(dataset)
            self._templates[dataset] = build_model(
                self.spec.model, data.image_shape, data.num_classes, 0
            )
        return self._templates[dataset]

    def _columns(self, unit: AnalysisUnit) -> dict:
        return {
            "experiment": self.store.name,
            "source_id": unit.source_id,
            "source": unit.source,
            "kind": unit.kind,
            "method": unit.method,
            "dataset": unit.dataset,
            "model": self.spec.model.name,
            "seed": unit.seed,
            "round": unit.round,
            "density": unit.density,
            "rounds": unit.rounds,
            "branch": unit.branch,
            "artifact": unit.output,
        }
