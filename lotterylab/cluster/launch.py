"""Running, resuming and branching experiments end to end: spec → store → data → Tune → report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from lotterylab.analysis.report import write_report
from lotterylab.cluster.connection import connect, disconnect
from lotterylab.cluster.signals import StopOnSignals
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.data_artifacts import write_data_artifacts
from lotterylab.platform.grid_values import match_densities
from lotterylab.platform.ids import short_hash
from lotterylab.platform.lease import ExperimentLease
from lotterylab.platform.pai import BRANCHES, PaIConfig, pai_grid
from lotterylab.platform.spec import ExperimentSpec, spec_from_text
from lotterylab.platform.store import ExperimentStore, normalise_uri
from lotterylab.platform.tracking import check_tracking, track_summary
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
    # one live writer: a second run of the same spec is refused
    with StopOnSignals(store.uri) as stop, ExperimentLease(store):
        return _start(spec, spec_text, root, store, address, start, stop)


def _fit(address: str | None, make_tuner, stop: StopOnSignals):
    """Tune's results; :class:`Interrupted` (after Ray is shut down) if a signal stopped it."""
    connect(address)
    try:
        stop.install()  # after ray.init, which sets its own SIGTERM handler
        tuner = make_tuner()
        with stop.tune():
            results = tuner.fit()
    finally:
        disconnect()
    stop.check()  # a stopped run draws no report: it would look complete
    return results


def _start(spec, spec_text, root, store, address, start, stop) -> ExperimentOutcome:
    check_tracking(spec)  # an unreachable tracker fails now, before anything is stored
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
    datasets = build_datasets(spec.datasets)
    write_data_artifacts(spec, datasets, store)
    results = _fit(address, lambda: search.new_tuner(spec, datasets, root, store.uri), stop)
    return _finish(store, results, start)


def load_stored_spec(store: ExperimentStore) -> ExperimentSpec:
    if not store.exists(RESOLVED_SPEC_FILE):
        raise ExperimentError(
            f"{store.uri} is not a lotterylab experiment: it has no {RESOLVED_SPEC_FILE}"
        )
    resolved = json.dumps(store.read_json(RESOLVED_SPEC_FILE))
    return spec_from_text(resolved, store.url(RESOLVED_SPEC_FILE))


def existing_experiment(uri: str) -> ExperimentStore:
    """The store of an experiment that exists; nothing is created when it does not."""
    store = ExperimentStore(uri)
    if not store.exists(RESOLVED_SPEC_FILE):
        raise ExperimentError(
            f"{store.uri} is not a lotterylab experiment: it has no {RESOLVED_SPEC_FILE} "
            "(check the URI; `lotterylab run` starts a new experiment)"
        )
    return store


def resume_experiment(uri: str, address: str | None = None) -> ExperimentOutcome:
    start = time.perf_counter()
    store = existing_experiment(uri)
    with StopOnSignals(store.uri) as stop, ExperimentLease(store):
        return _resume(store, address, start, stop)


def _resume(store: ExperimentStore, address: str | None, start: float, stop) -> ExperimentOutcome:
    spec = load_stored_spec(store)
    if not search.can_restore(store.uri):
        raise ExperimentError(
            f"{store.uri} holds no Ray Tune experiment state to resume from "
            "(the run stopped before its first state snapshot): "
            "start it again with `lotterylab run`"
        )
    datasets = build_datasets(spec.datasets)
    check_tracking(spec)
    results = _fit(
        address, lambda: search.restored_tuner(spec, datasets, store.uri, store.uri), stop
    )
    return _finish(store, results, start)


def branch_runs(
    spec: ExperimentSpec,
    store: ExperimentStore,
    branch: str,
    methods: list[str] | None = None,
    densities: list[str | float] | None = None,
    sparsities: list[str | float] | None = None,
) -> list[dict]:
    """The branch of every finished-pruning PaI run of the experiment that matches the filters.

    Densities and sparsities (percent) match grid values to the digits typed (``0.01801``).
    """
    if branch not in BRANCHES:
        raise ExperimentError(f"--kind {branch!r} is not one of {list(BRANCHES)}")
    if spec.kind != "pai":
        raise ExperimentError(
            f"{store.uri} is a {spec.kind} experiment: branches apply to PaI runs "
            "(kind: pai) in this version"
        )
    if spec.search is not None:
        raise ExperimentError(
            f"{store.uri} is a search: branches apply to the runs of a grid in this version "
            "(a searched run's id depends on its sampled values)"
        )
    wanted = match_densities(densities, sparsities, spec.pai.densities)
    runs = []
    for run in pai_grid(spec):
        if methods and run["method"] not in methods:
            continue
        if wanted is not None and run["density"] not in wanted:
            continue
        parent = PaIConfig(experiment=spec.name, spec=spec, **run).run_id
        if not store.exists(f"runs/{parent}/masks.pt"):
            continue  # the parent has not pruned yet: nothing to branch from
        runs.append({**run, "branch": branch, "parent_id": parent})
    if not runs:
        raise ExperimentError(
            f"no pruned PaI run of {store.uri} matches --kind {branch} with methods "
            f"{methods or 'any'} and densities {sorted(wanted or []) or 'any'}"
        )
    return runs


def branch_experiment(
    uri: str,
    branch: str,
    methods: list[str] | None = None,
    densities: list[str | float] | None = None,
    address: str | None = None,
    sparsities: list[str | float] | None = None,
) -> ExperimentOutcome:
    """Launch (or continue) sanity-check branches of stored runs without recomputing them.

    The branch runs form their own Tune experiment inside the parent's folder; their rows go
    to the parent's tables with ``branch`` and ``parent_id`` set. Calling it again with the same
    selection continues an interrupted branch experiment.
    """
    start = time.perf_counter()
    store = existing_experiment(uri)
    with StopOnSignals(store.uri) as stop, ExperimentLease(store):
        return _branch(store, branch, methods, densities, sparsities, address, start, stop)


def _branch(
    store, branch, methods, densities, sparsities, address, start, stop
) -> ExperimentOutcome:
    spec = load_stored_spec(store)
    runs = branch_runs(spec, store, branch, methods, densities, sparsities)
    name = f"branch-{branch}-{short_hash(runs)}"
    datasets = build_datasets(spec.datasets)
    branch_uri = store.uri.rstrip("/") + "/" + name

    def make_tuner():
        if search.can_restore(branch_uri):
            return search.restored_tuner(spec, datasets, branch_uri, store.uri)
        return search.new_tuner(spec, datasets, store.uri, store.uri, name=name, runs=runs)

    results = _fit(address, make_tuner, stop)
    return _finish(store, results, start)


def _finish(store: ExperimentStore, results, start: float) -> ExperimentOutcome:
    errored = [str(r.error) for r in results if r.error is not None]
    figures = write_report(store)
    track_summary(load_stored_spec(store), store)
    return ExperimentOutcome(
        uri=store.uri,
        trials=len(results),
        errored_trials=errored,
        figures=figures,
        wall_time_s=time.perf_counter() - start,
    )
