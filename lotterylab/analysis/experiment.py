"""The analysis API: one experiment (or several) as it sits in its store, tables and artifacts.

Everything here reads the store only, so a notebook on a laptop can redraw any figure of an
experiment that ran on a cluster, from its URI alone. Artifacts not written yet (the experiment is
still running, or its kind never writes them) raise ``MissingArtifactError``; an artifact that was
written but is corrupt raises ``StoreError`` as always.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from lotterylab.platform.imp.lineage import IMP, trained_path
from lotterylab.platform.imp.masks import mask_after_round
from lotterylab.platform.models import apply_masks, build_model, output_layer_name
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.tables import (
    CAVITY_TABLE,
    IMP_BRANCHES_TABLE,
    KURTOSIS_TABLE,
    PAI_EPOCHS_TABLE,
    PAI_MASKS_TABLE,
    ROUNDS_TABLE,
    SCHEMAS,
)

RESOLVED_SPEC = "spec.resolved.json"
SEARCH_VALUES = "search.json"  # a search's sampled values, in each lineage's or run's folder
TABLE_ORDER = (
    ROUNDS_TABLE,
    KURTOSIS_TABLE,
    CAVITY_TABLE,
    IMP_BRANCHES_TABLE,
    PAI_EPOCHS_TABLE,
    PAI_MASKS_TABLE,
)
TICKET_WEIGHTS = ("rewind", "trained")
PAI_WEIGHTS = ("init", "trained")
_LINEAGE_ORDER = ["dataset", "method", "seed"]
_PAI_ORDER = ["model", "dataset", "method", "rounds", "branch", "density", "seed"]
ROW_ORDERS: dict[str, list[str]] = {
    ROUNDS_TABLE: [*_LINEAGE_ORDER, "round", "lineage_id"],
    IMP_BRANCHES_TABLE: [*_LINEAGE_ORDER, "round", "branch", "lineage_id"],
    KURTOSIS_TABLE: [*_LINEAGE_ORDER, "round", "lineage_id"],
    CAVITY_TABLE: [*_LINEAGE_ORDER, "evaluated_at_round", "removed_at_round", "lineage_id"],
    PAI_EPOCHS_TABLE: [*_PAI_ORDER, "epoch", "run_id"],
    PAI_MASKS_TABLE: [*_PAI_ORDER, "run_id"],
}
# spec keys that are not experiment settings, or that rows already carry
_SPEC_SKIP = {"name", "kind", "storage", "seeds", "datasets", "search"}


class MissingArtifactError(StoreError):
    """An artifact that is not (yet) in the store: figures built from it are skipped."""


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested dicts; lists of scalars become tuples, lists of dicts are dropped.

    Tuples keep list-valued settings (``pai.rounds: [1, 10]``) hashable, so they still work as
    ``groupby`` keys.
    """
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if isinstance(obj, list):
        if all(not isinstance(v, dict | list) for v in obj):
            out[key] = tuple(obj)
        return out
    out[key] = obj
    return out


def spec_columns(spec: dict) -> dict[str, Any]:
    """The experiment's scalar settings as ``section.field`` columns (``training.lr`` ...)."""
    return flatten({k: v for k, v in spec.items() if k not in _SPEC_SKIP})


def dataset_columns(spec: dict) -> dict[str, dict[str, Any]]:
    """Per data set name, its spec fields as ``data.<field>`` columns."""
    out = {}
    for entry in spec.get("datasets") or []:
        if isinstance(entry, dict) and "name" in entry:
            out[entry["name"]] = flatten(entry, "data.")
    return out


class NamedTables:
    """The result tables by name, for one experiment or a set (both define ``table``)."""

    def rounds(self) -> pd.DataFrame:
        return self.table(ROUNDS_TABLE)

    def kurtosis(self) -> pd.DataFrame:
        return self.table(KURTOSIS_TABLE)

    def cavity(self) -> pd.DataFrame:
        return self.table(CAVITY_TABLE)

    def imp_branches(self) -> pd.DataFrame:
        return self.table(IMP_BRANCHES_TABLE)

    def pai_epochs(self) -> pd.DataFrame:
        return self.table(PAI_EPOCHS_TABLE)

    def pai_masks(self) -> pd.DataFrame:
        return self.table(PAI_MASKS_TABLE)


class Experiment(NamedTables):
    """One experiment's store, read-only: its spec, result tables and artifacts."""

    def __init__(self, store: ExperimentStore):
        self.store = store
        self.spec: dict = self._read_spec()
        self._search_values: dict[str, dict] | None = None

    def __repr__(self) -> str:
        return f"Experiment({self.uri!r}, kind={self.kind!r})"

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.store.name

    @property
    def kind(self) -> str:
        """``imp`` or ``pai``: the spec's, else guessed from the tables present."""
        if self.spec.get("kind"):
            return self.spec["kind"]
        present = self.tables()
        return "pai" if any(t in present for t in (PAI_EPOCHS_TABLE, PAI_MASKS_TABLE)) else "imp"

    def _read_spec(self) -> dict:
        if not self.has(RESOLVED_SPEC):
            return {}
        spec = self.store.read_json(RESOLVED_SPEC)
        if not isinstance(spec, dict):
            raise StoreError(f"{self.store.url(RESOLVED_SPEC)}: expected a JSON object")
        return spec

    @property
    def searched(self) -> list[str]:
        """Dotted key paths the experiment's search varies (none without a search)."""
        search = self.spec.get("search") or {}
        return list(search.get("space") or {})

    def search_values(self) -> dict[str, dict[str, Any]]:
        """The sampled values of every lineage or run of a search, by id (read once)."""
        if self._search_values is None:
            values = {}
            if self.searched:
                for folder in ("lineages", "runs"):
                    for name in self.store.list(folder):
                        rel = f"{folder}/{name}/{SEARCH_VALUES}"
                        if self.has(rel):
                            values[name] = self.store.read_json(rel)
            self._search_values = values
        return self._search_values

    def has(self, rel: str) -> bool:
        """Whether a verified artifact was finished (its checksum file is written last)."""
        return self.store.exists(rel + ".sha256")

    # -- tables --------------------------------------------------------------------------
    def tables(self) -> list[str]:
        """Names of the tables holding at least one part file."""
        present = set(self.store.list("tables"))
        return [t for t in TABLE_ORDER if t in present and self.store.list(f"tables/{t}")]

    def table(self, name: str, with_spec: bool = True) -> pd.DataFrame:
        """Every row of a table, sorted, map columns as dicts; spec settings as extra columns.

        Columns added: the spec's scalar settings (``training.lr``, ``imp.fraction``,
        ``model.name`` ...) and the row's data set fields (``data.type``, ``data.grid`` ...).
        In a search, each searched field holds the value the row's lineage or run ran with,
        also as ``search.<field>`` (``search.training.lr``), the columns to group by.
        """
        if name not in SCHEMAS:
            raise ValueError(f"table {name!r} is not one of {sorted(SCHEMAS)}")
        frame = self.store.read_table(name).to_pandas(maps_as_pydicts="strict")
        frame = frame.sort_values(ROW_ORDERS[name], ignore_index=True)
        if with_spec:
            frame = self._with_spec(frame)
        return frame

    def _with_spec(self, frame: pd.DataFrame) -> pd.DataFrame:
        extra = {k: v for k, v in spec_columns(self.spec).items() if k not in frame.columns}
        columns = {key: [value] * len(frame) for key, value in extra.items()}
        per_dataset = dataset_columns(self.spec)
        fields = sorted({f for d in per_dataset.values() for f in d} - set(frame.columns))
        for field in fields:
            columns[field] = [per_dataset.get(d, {}).get(field) for d in frame["dataset"]]
        if self.searched:
            values = self.search_values()
            ids = frame["lineage_id" if "lineage_id" in frame.columns else "run_id"]
            for path in self.searched:
                ran_with = [values.get(i, {}).get(path) for i in ids]
                columns[f"search.{path}"] = ran_with
                columns[path] = ran_with
            frame = frame.drop(columns=[c for c in columns if c in frame.columns])
        if not columns:
            return frame
        return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)

    # -- artifacts -----------------------------------------------------------------------
    def _json(self, rel: str, what: str) -> Any:
        if not self.has(rel):
            raise MissingArtifactError(f"{what}: {self.store.url(rel)} is not in the store")
        return self.store.read_json(rel)

    def _tensors(self, rel: str, what: str) -> dict[str, torch.Tensor]:
        if not self.has(rel):
            raise MissingArtifactError(f"{what}: {self.store.url(rel)} is not in the store")
        return self.store.read_tensors(rel)

    def lineage_ids(self) -> list[str]:
        return [i for i in self.store.list("lineages") if self.has(f"lineages/{i}/lineage.json")]

    def lineage(self, lineage_id: str) -> dict:
        """``lineage.json``: data set, seed, image shape, first layer, methods, round, device."""
        return self._json(f"lineages/{lineage_id}/lineage.json", f"lineage {lineage_id!r}")

    def removal_rounds(self, lineage_id: str, method: str) -> dict[str, torch.Tensor]:
        """The mask history of a lineage's method: removal round per weight, -1 alive."""
        rel = f"lineages/{lineage_id}/masks/{method}.pt"
        return self._tensors(rel, f"masks of lineage {lineage_id!r}, method {method!r}")

    def masks(self, lineage_id: str, method: str, round: int) -> dict[str, torch.Tensor]:
        """The masks round ``round`` trains under (round 0 is dense)."""
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        rr = self.removal_rounds(lineage_id, method)
        return {name: mask_after_round(r, round - 1) for name, r in rr.items()}

    def first_layer_mask(self, lineage_id: str, method: str, round: int) -> torch.Tensor:
        """The first-layer mask (H, C*Np*Np) of round ``round``; FCN lineages only."""
        first = self.lineage(lineage_id).get("first_layer")
        if first is None:
            raise ValueError(
                f"lineage {lineage_id!r} has no dense first layer on pixels (first_layer: null)"
            )
        return self.masks(lineage_id, method, round)[first]

    def unit_kurtosis(self, lineage_id: str, method: str, round: int) -> dict[str, torch.Tensor]:
        """Per-unit kurtosis at the start of a round: ``overall`` (H,), ``per_class`` (K, H)."""
        rel = f"lineages/{lineage_id}/kurtosis/{method}-round-{round:04d}.pt"
        return self._tensors(rel, f"kurtosis of lineage {lineage_id!r}")

    def examples(self, dataset: str) -> dict[str, torch.Tensor]:
        """Example images ``x`` (N, C*H*W), labels ``y`` and ``image_shape`` of a data set."""
        return self._tensors(f"data/{dataset}/examples.pt", f"examples of data set {dataset!r}")

    def example_datasets(self) -> list[str]:
        return [d for d in self.store.list("data") if self.has(f"data/{d}/examples.pt")]

    def component_sources(self) -> list[str]:
        names = self.store.list("data/components")
        return [
            n[: -len(".pt")]
            for n in names
            if n.endswith(".pt") and self.has(f"data/components/{n}")
        ]

    def components(self, source: str) -> dict[str, torch.Tensor]:
        """PCA and FastICA components (k, D) of ``source`` and its ``image_shape``."""
        rel = f"data/components/{source}.pt"
        return self._tensors(rel, f"components of {source!r}")

    def run_ids(self) -> list[str]:
        return [r for r in self.store.list("runs") if self.has(f"runs/{r}/run.json")]

    def run(self, run_id: str) -> dict:
        """``run.json`` of a PaI run: method, density, rounds, data set, seed, branch."""
        return self._json(f"runs/{run_id}/run.json", f"PaI run {run_id!r}")

    def run_masks(self, run_id: str) -> dict[str, torch.Tensor]:
        """The bool masks a PaI run trained under, per prunable tensor."""
        return self._tensors(f"runs/{run_id}/masks.pt", f"masks of PaI run {run_id!r}")

    # -- models --------------------------------------------------------------------------
    def ticket(
        self, lineage_id: str, method: str, round: int, weights: str = "rewind"
    ) -> nn.Module:
        """Round ``round``'s ticket of a lineage's method as a model, its mask applied.

        ``rewind``: θ(t_rewind) ⊙ m, the ticket the round trains; ``trained``: θ(T) ⊙ m, the
        model the round trained (round 0 is the dense net every method shares). In eval mode.
        """
        what = f"lineage {lineage_id!r}, method {method!r}, round {round!r}"
        if weights not in TICKET_WEIGHTS:
            raise ValueError(f"{what}: weights {weights!r} is not one of {list(TICKET_WEIGHTS)}")
        info = self.lineage(lineage_id)
        methods = info.get("methods") or []
        if method not in methods:
            raise ValueError(f"{what}: the lineage's methods are {methods}")
        last = info.get("last_round")
        if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= last:
            raise ValueError(f"{what}: the lineage's finished rounds are 0..{last}")
        masks = self.masks(lineage_id, method, round)
        if weights == "rewind":
            rel = f"lineages/{lineage_id}/rewind.pt"
        else:
            rel = trained_path(lineage_id, method if round > 0 else IMP, round)
        state = self._tensors(rel, f"{weights} weights of {what}")
        return self._model(state, masks, info, lineage_id, rel)

    def pai_model(self, run_id: str, weights: str = "init") -> nn.Module:
        """A PaI run's model with its mask applied: at initialisation (pruned) or trained."""
        if weights not in PAI_WEIGHTS:
            raise ValueError(
                f"PaI run {run_id!r}: weights {weights!r} is not one of {list(PAI_WEIGHTS)}"
            )
        info = self.run(run_id)
        rel = f"runs/{run_id}/{weights}.pt"
        state = self._tensors(rel, f"{weights} weights of PaI run {run_id!r}")
        return self._model(state, self.run_masks(run_id), info, run_id, rel)

    def _model(self, state, masks, info: dict, source_id: str, rel: str) -> nn.Module:
        """The spec's model (the search's values of ``source_id`` applied) holding ``state``."""
        if not self.spec:
            raise MissingArtifactError(f"{self.store.url(RESOLVED_SPEC)} is not in the store")
        spec = parse_spec(self.spec, self.store.url(RESOLVED_SPEC))
        spec = spec.with_values(self.search_values().get(source_id))
        shape = info.get("image_shape")
        if not isinstance(shape, list) or len(shape) != 3:
            raise StoreError(f"{source_id}: image_shape {shape!r} is not [C, H, W]")
        probe = build_model(spec.model, tuple(shape), 2, 0)
        output = state.get(output_layer_name(probe))
        if not isinstance(output, torch.Tensor) or output.dim() < 1:
            raise StoreError(
                f"{self.store.url(rel)} has no classifier weight {output_layer_name(probe)!r}"
            )
        model = build_model(spec.model, tuple(shape), int(output.shape[0]), 0)
        try:
            model.load_state_dict(state)
            apply_masks(model, masks)
        except (RuntimeError, ValueError) as error:
            raise StoreError(
                f"{self.store.url(rel)} does not fit {spec.model.name}: {error}"
            ) from error
        return model.eval()


class ExperimentSet(NamedTables):
    """Several experiments read as one: tables concatenated, labelled by ``experiment``."""

    def __init__(self, experiments: Sequence[Experiment]):
        if not experiments:
            raise ValueError("open_experiments: give at least one experiment URI")
        self.experiments = list(experiments)
        self.labels = unique_labels([e.name for e in self.experiments])

    def __iter__(self):
        return iter(self.experiments)

    def __len__(self) -> int:
        return len(self.experiments)

    @property
    def kinds(self) -> list[str]:
        return sorted({e.kind for e in self.experiments})

    def tables(self) -> list[str]:
        present = {t for e in self.experiments for t in e.tables()}
        return [t for t in TABLE_ORDER if t in present]

    def table(self, name: str, with_spec: bool = True) -> pd.DataFrame:
        """Rows of every experiment; ``experiment`` holds each one's (unique) label."""
        frames = [
            e.table(name, with_spec).assign(experiment=label)
            for e, label in zip(self.experiments, self.labels, strict=True)
        ]
        return pd.concat(frames, ignore_index=True, sort=False)


def unique_labels(names: Iterable[str]) -> list[str]:
    """Names made unique by a ``#2``, ``#3`` ... suffix on repeats (same name, two stores)."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


def as_store(
    target: str | ExperimentStore, storage_options: dict[str, Any] | None = None
) -> ExperimentStore:
    if isinstance(target, ExperimentStore):
        return target
    if not isinstance(target, str) or not target:
        raise ValueError(f"experiment URI must be a non-empty string, got {target!r}")
    return ExperimentStore(target, storage_options)


def open_experiment(
    uri: str | ExperimentStore, storage_options: dict[str, Any] | None = None
) -> Experiment:
    """Open an experiment folder on any fsspec URI (``./results/x``, ``s3://bucket/x`` ...)."""
    return Experiment(as_store(uri, storage_options))


def open_experiments(
    uris: Sequence[str | ExperimentStore], storage_options: dict[str, Any] | None = None
) -> ExperimentSet:
    """Open several experiments to compare them; their tables gain an ``experiment`` label."""
    if isinstance(uris, str | ExperimentStore):
        uris = [uris]
    return ExperimentSet([open_experiment(u, storage_options) for u in uris])


def relabel(rows: pd.DataFrame, column: str = "method") -> pd.DataFrame:
    """``<experiment>/<method>`` labels, for comparison figures across experiments."""
    if rows.empty:
        return rows
    return rows.assign(**{column: rows["experiment"].astype(str) + "/" + rows[column]})


__all__ = [
    "Experiment",
    "ExperimentSet",
    "MissingArtifactError",
    "open_experiment",
    "open_experiments",
]
