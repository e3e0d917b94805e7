"""Running and resuming experiments end to end: spec → store → data → Tune → report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from lotterylab.analysis.report import write_report
from lotterylab.cluster.connection import connect, disconnect
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.spec import ExperimentSpec, spec_from_text
from lotterylab.platform.store import ExperimentStore, normalise_uri
from lotterylab.trainables import search

SPEC_FILE = "spec.yaml"
RESOLVED_SPEC_FILE = "spec.resolved.json"


class ExperimentError(ValueError):
    """The experiment cannot be started or resumed as asked."""


@dataclass(frozen=True)
class ExperimentOutcome:
    uri: str
    trials: int
    errored_trials: list[str]
    figures: list[str]
    wall_time_s: float


def experiment_uri(storage_root: str, name: str) -> str:
    return normalise_uri(storage_root).rstrip("/") + "/" + name


def run_experiment(
    spec: ExperimentSpec,
    spec_text: str,
    storage_root: str | None = None,
    address: str | None = None,
) -> ExperimentOutcome:
    start = time.perf_counter()
    root = storage_root or spec.storage
    store = ExperimentStore(experiment_uri(root, spec.name))
    if search.can_restore(store.uri):
        raise ExperimentError(
            f"experiment {store.uri} already exists: continue it with "
            f"`lotterylab resume {store.uri}` or pick another --name"
        )
    # a run that died before Tune's first snapshot may start again, with the same spec only
    if store.exists(RESOLVED_SPEC_FILE) and load_stored_spec(store) != spec:
        raise ExperimentError(
            f"{store.uri} already holds results of a different spec: pick another --name"
        )
    store.write_artifact(SPEC_FILE, spec_text.encode())
    store.write_json(RESOLVED_SPEC_FILE, spec.model_dump(mode="json"))
    datasets = build_datasets(spec)
    connect(address)
    try:
        results = search.new_tuner(spec, datasets, root, store.uri).fit()
    finally:
        disconnect()
    return _finish(store, results, start)


def load_stored_spec(store: ExperimentStore) -> ExperimentSpec:
    if not store.exists(RESOLVED_SPEC_FILE):
        raise ExperimentError(
            f"{store.uri} is not a lotterylab experiment: it has no {RESOLVED_SPEC_FILE}"
        )
    resolved = json.dumps(store.read_json(RESOLVED_SPEC_FILE))
    return spec_from_text(resolved, store.url(RESOLVED_SPEC_FILE))


def resume_experiment(uri: str, address: str | None = None) -> ExperimentOutcome:
    start = time.perf_counter()
    store = ExperimentStore(uri)
    spec = load_stored_spec(store)
    if not search.can_restore(store.uri):
        raise ExperimentError(
            f"{store.uri} holds no Ray Tune experiment state to resume from "
            "(the run stopped before its first state snapshot): "
            "start it again with `lotterylab run`"
        )
    datasets = build_datasets(spec)
    connect(address)
    try:
        results = search.restored_tuner(spec, datasets, store.uri).fit()
    finally:
        disconnect()
    return _finish(store, results, start)


def _finish(store: ExperimentStore, results, start: float) -> ExperimentOutcome:
    errored = [str(r.error) for r in results if r.error is not None]
    figures = write_report(store)
    return ExperimentOutcome(
        uri=store.uri,
        trials=len(results),
        errored_trials=errored,
        figures=figures,
        wall_time_s=time.perf_counter() - start,
    )
