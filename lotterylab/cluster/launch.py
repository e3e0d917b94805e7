"""Running, resuming and branching experiments end to end: spec → store → data → Tune → report."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from lotterylab.analysis.report import write_report
from lotterylab.cluster.connection import connect, disconnect
from lotterylab.cluster.out_of_space import out_of_space, storage_full
from lotterylab.cluster.signals import StopOnSignals
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.imp.branches import BRANCH_KINDS
from lotterylab.platform.pai.run import BRANCHES, PaIConfig, pai_grid
from lotterylab.platform.spec import ExperimentSpec, parse_spec
from lotterylab.platform.spec.grid_values import match_densities
from lotterylab.platform.store.data_artifacts import write_data_artifacts
from lotterylab.platform.store.experiment_store import ExperimentStore, normalise_uri
from lotterylab.platform.store.ids import short_hash
from lotterylab.platform.store.lease import ExperimentLease, LeaseError
from lotterylab.platform.store.tracking import check_tracking, track_summary
from lotterylab.platform.store.trial_states import adopt_legacy_checkpoints, keep_states_here
from lotterylab.trainables import search
from lotterylab.trainables.imp_branch import imp_branch_config

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
    # one live writer: a second run of the same spec is refused, and every write of this one
    # (driver and trials) lands only while it still holds the lease
    with StopOnSignals(store.uri) as stop, ExperimentLease(store) as lease:
        fenced = store.fenced(lease.info.token)
        return _start(spec, spec_text, root, fenced, address, start, stop, lease)


def _fit(
    store: ExperimentStore,
    address: str | None,
    make_tuner,
    stop: StopOnSignals,
    lease: ExperimentLease,
):
    """Tune's results; :class:`Interrupted` (after Ray is shut down) if a signal stopped it,
    :class:`StorageFullError` if the storage ran out of space, :class:`LeaseLostError` naming
    the new holder if another writer took the lease (the run then stopped its trials)."""
    connect(address)
    try:
        stop.install()  # after ray.init, which sets its own SIGTERM handler
        tuner = make_tuner(lease)
        with stop.tune():
            try:
                results = tuner.fit()
            except Exception as error:
                lost = lease.lost_error()
                if lost is not None:
                    raise lost from error
                if out_of_space(store, [error]):
                    raise storage_full(store) from error
                raise
    finally:
        disconnect()
    with contextlib.suppress(LeaseError, OSError):  # lost while the last trials ended?
        lease.verify()
    lost = lease.lost_error()
    if lost is not None:  # another writer owns the experiment now: no report of ours
        raise lost
    stop.check()  # a stopped run draws no report: it would look complete
    if out_of_space(store, [str(r.error) for r in results if r.error is not None]):
        raise storage_full(store)
    return results


def _start(spec, spec_text, root, store, address, start, stop, lease) -> ExperimentOutcome:
    check_tracking(spec)  # an unreachable tracker fails now, before anything is stored
    if store.exists(RESOLVED_SPEC_FILE):
        if load_stored_spec(store) != spec:
            raise ExperimentError(
                f"{store.uri} already holds results of a different spec: pick another --name"
            )
        raise ExperimentError(
            f"experiment {store.uri} already exists: continue it with "
            f"`lotterylab resume {store.uri}` or pick another --name"
        )
    keep_states_here(store)
    store.write_artifact(SPEC_FILE, spec_text.encode())
    store.write_json(RESOLVED_SPEC_FILE, spec.model_dump(mode="json"))
    datasets = build_datasets(spec.datasets)
    write_data_artifacts(spec, datasets, store)
    results = _fit(store, address, _tuner_of(spec, datasets, root, store), stop, lease)
    return _finish(store, results, start)


def _tuner_of(spec: ExperimentSpec, datasets, root: str, store: ExperimentStore):
    """A Tuner factory over the spec's grid whose trials are fenced like ``store``."""

    def make_tuner(lease: ExperimentLease):
        return search.new_tuner(
            spec, datasets, root, store.uri, store.name, fence=store.fence, lease=lease
        )

    return make_tuner


def load_stored_spec(store: ExperimentStore) -> ExperimentSpec:
    if not store.exists(RESOLVED_SPEC_FILE):
        raise ExperimentError(
            f"{store.uri} is not a lotterylab experiment: it has no {RESOLVED_SPEC_FILE}"
        )
    # JSON, not YAML: YAML 1.1 reads a JSON number such as 1e-06 as a string
    return parse_spec(store.read_json(RESOLVED_SPEC_FILE), store.url(RESOLVED_SPEC_FILE))


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
    with StopOnSignals(store.uri) as stop, ExperimentLease(store) as lease:
        return _resume(store.fenced(lease.info.token), address, start, stop, lease)


def _resume(store: ExperimentStore, address: str | None, start: float, stop, lease):
    """The stored spec's grid again; each trial goes on from its state in the store."""
    spec = load_stored_spec(store)
    datasets = build_datasets(spec.datasets)
    check_tracking(spec)
    adopt_legacy_checkpoints(store)
    root = store.uri.rstrip("/").rsplit("/", 1)[0]
    results = _fit(store, address, _tuner_of(spec, datasets, root, store), stop, lease)
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


def imp_branch_runs(
    spec: ExperimentSpec,
    store: ExperimentStore,
    kind: str,
    round: int | None,
    rewind_step: int | None = None,
) -> list[dict]:
    """One lottery-ticket branch per lineage of the experiment that has pruned up to ``round``."""
    if round is None:
        raise ExperimentError(f"--round N is needed for IMP branches (1..{spec.imp.rounds})")
    if spec.search is not None:
        raise ExperimentError(
            f"{store.uri} is a search: branches apply to the lineages of a grid in this version "
            "(a searched lineage's id depends on its sampled values)"
        )
    runs = []
    for member in search.lineage_members(spec):
        run = {**member, "kind": kind, "round": round, "rewind_step": rewind_step}
        try:
            config = imp_branch_config(spec, spec.name, run)
        except ValueError as error:
            raise ExperimentError(f"--kind {kind} --round {round}: {error}") from error
        rel = f"lineages/{config.parent_id}/lineage.json"
        if not store.exists(rel + ".sha256"):
            continue  # the lineage has not finished a round yet
        if store.read_json(rel).get("last_round", -1) >= round - 1:
            runs.append(run)
    if not runs:
        raise ExperimentError(
            f"no lineage of {store.uri} has pruned its round-{round} mask yet: "
            f"resume the experiment first (`lotterylab resume {store.uri}`)"
        )
    return runs


def branch_experiment(
    uri: str,
    branch: str,
    methods: list[str] | None = None,
    densities: list[str | float] | None = None,
    address: str | None = None,
    sparsities: list[str | float] | None = None,
    round: int | None = None,
    rewind_step: int | None = None,
) -> ExperimentOutcome:
    """Launch (or continue) branches of stored runs or lineages without recomputing them.

    PaI runs take the sanity-check branches (``BRANCHES``), IMP lineages the lottery-ticket
    branches of round ``round``'s ticket (``BRANCH_KINDS``). The branches form their own Tune
    experiment inside the parent's folder; their rows go to the parent's tables with
    ``branch`` and ``parent_id`` set. Calling it again with the same selection continues an
    interrupted branch experiment.
    """
    start = time.perf_counter()
    store = existing_experiment(uri)
    with StopOnSignals(store.uri) as stop, ExperimentLease(store) as lease:
        store = store.fenced(lease.info.token)
        spec = load_stored_spec(store)
        if spec.kind == "imp":
            if methods or densities or sparsities:
                raise ExperimentError(
                    "--method, --density and --sparsity select PaI runs; IMP branches take "
                    "--round (and --rewind-step)"
                )
            if branch not in BRANCH_KINDS:
                raise ExperimentError(
                    f"--kind {branch!r} is not one of {list(BRANCH_KINDS)} (IMP lineages)"
                )
            runs = imp_branch_runs(spec, store, branch, round, rewind_step)
        else:
            if round is not None or rewind_step is not None:
                raise ExperimentError(
                    "--round and --rewind-step select IMP tickets; PaI branches take --method "
                    "and --density (or --sparsity)"
                )
            runs = branch_runs(spec, store, branch, methods, densities, sparsities)
        return _branch(store, spec, branch, runs, address, start, stop, lease)


def _branch(store, spec, branch, runs, address, start, stop, lease) -> ExperimentOutcome:
    name = f"branch-{branch}-{short_hash(runs)}"
    datasets = build_datasets(spec.datasets)
    imp = spec.kind == "imp"

    adopt_legacy_checkpoints(store, name)  # a branch experiment of an earlier version

    def make_tuner(lease: ExperimentLease):
        fenced = {"fence": store.fence, "lease": lease}
        if imp:
            return search.new_imp_branch_tuner(spec, datasets, store.uri, name, runs, **fenced)
        return search.new_tuner(
            spec, datasets, store.uri, store.uri, name=name, runs=runs, **fenced
        )

    results = _fit(store, address, make_tuner, stop, lease)
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
