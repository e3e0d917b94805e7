"""The Tune search of an experiment: the grid, resources, storage and restore, for either kind.

``imp`` experiments search data sets × seeds (the methods live inside each lineage), a group of
lineages per trial (``run.batch_lineages``: with ``auto``, one group per trial slot of the
cluster, so every slot is busy and each trial stacks its lineages' trainings); ``pai``
experiments search data sets × seeds × methods × densities × scoring rounds, one trial per run.
Sanity-check branches are their own small Tune experiments inside the parent's folder.

A spec with a ``search`` section also varies spec fields. Every configuration runs on the whole
grid, so each one has a mean and a spread over seeds: random and grid searches list their
configurations up front and cross them with the grid (``tune.grid_search`` of both); Optuna
adapts, so ``GridRepeater`` hands each of its suggestions to every grid point and tells it the
mean of the metric over them. A trial's config holds its grid point and, under ``search``, the
sampled values; its spec is the experiment's with those values applied, so its lineage or run
id, and its trial folder, differ from every other configuration's.

Resuming builds a new Tuner from what the platform stored itself, never from Tune's saved state
(its pickles could hold anyone's code): the grid comes from the stored spec, every trial takes
its lineages' or run's state from the store, Optuna is handed the configurations it had already
sampled before it draws new ones, and an ASHA stop is kept as a marker beside the trial's state.
"""

from __future__ import annotations

import copy
import math
import os

import fsspec
import pyarrow.fs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.imp.group import (
    AUTO_GROUP_LIMIT,
    group_lineages,
    lineages_per_group,
    stacks,
)
from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.pai.run import pai_grid
from lotterylab.platform.spec import Distribution, ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError, normalise_uri
from lotterylab.platform.store.ids import canonical_json
from lotterylab.platform.store.lease import ExperimentLease
from lotterylab.platform.store.trial_states import lineage_folder, mark_stopped_early, run_folder
from lotterylab.trainables.imp_branch import IMPBranchTrainable, imp_branch_config
from lotterylab.trainables.imp_lineage import IMPLineageTrainable, trial_members
from lotterylab.trainables.lease_watch import lease_watch
from lotterylab.trainables.pai_run import PaIRunTrainable, pai_config

TRAINABLES = {"imp": IMPLineageTrainable, "pai": PaIRunTrainable}
SEARCH_KEY = "search"  # a trial config's sampled values, {dotted key path: value}


def tune_storage(uri: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Tune's ``storage_path`` and ``storage_filesystem`` for any fsspec URI."""
    uri = normalise_uri(uri)
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://"), None
    fs, path = fsspec.core.url_to_fs(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def trainable_for(
    spec: ExperimentSpec,
    datasets: dict[str, ImageDataset],
    store_uri: str,
    cls=None,
    fence: str | None = None,
):
    """The trainable (default: the spec kind's) with the data sets put in the object store once.

    ``fence`` (the driver's lease token) makes the trials' stores fenced; it is a parameter, not
    part of the trial config, so trial and lineage ids do not depend on it."""
    trainable = tune.with_parameters(
        cls or TRAINABLES[spec.kind],
        spec_json=spec.model_dump_json(),
        datasets=datasets,
        store_uri=store_uri,
        fence=fence,
    )
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def lineage_members(spec: ExperimentSpec) -> list[dict]:
    """Every lineage of an ``imp`` spec: data set × seed, in the grid's order."""
    return [{"dataset": d.name, "seed": s} for d in spec.datasets for s in spec.seeds]


def trial_slots(spec: ExperimentSpec) -> int:
    """How many trials of the spec the connected Ray cluster runs at once (at least 1)."""
    resources = ray.cluster_resources()
    counts = [
        int(resources.get(kind, 0) // share)
        for kind, share in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu))
        if share > 0
    ]
    slots = min(counts) if counts else 1
    if spec.run.max_concurrent_trials:
        slots = min(slots, spec.run.max_concurrent_trials)
    return max(1, slots)


def lineage_groups(
    spec: ExperimentSpec, datasets: dict[str, ImageDataset], slots: int
) -> list[list[dict]]:
    """The spec's lineages, grouped per trial as ``run.batch_lineages`` asks for ``slots``."""
    members = lineage_members(spec)
    stacked = stacks(spec)
    size = lineages_per_group(spec, len(members), slots, stacked)
    if spec.run.batch_lineages == "auto":
        size = min(size, AUTO_GROUP_LIMIT["gpu" if spec.resources.gpu > 0 else "cpu"])

    def shape(member: dict) -> tuple:
        data = datasets[member["dataset"]]
        return tuple(data.image_shape), data.num_classes

    return group_lineages(members, shape, size)


def grid_points(
    spec: ExperimentSpec, runs: list[dict] | None = None, groups: list[list[dict]] | None = None
) -> list[dict]:
    """One config per trial: a group of lineages (default: one each) or a PaI run."""
    if spec.kind == "pai":
        return [{"run": run} for run in (runs if runs is not None else pai_grid(spec))]
    if groups is None:
        groups = [[member] for member in lineage_members(spec)]
    return [{"lineages": group} for group in groups]


def param_space(
    spec: ExperimentSpec, runs: list[dict] | None = None, groups: list[list[dict]] | None = None
) -> dict:
    search = spec.search if runs is None else None  # branches rerun stored runs: no search
    if search is not None and search.algorithm == "optuna":
        return {}  # the searcher holds the space and walks the grid itself
    points = grid_points(spec, runs, groups)
    space = {key: tune.grid_search([point[key] for point in points]) for key in points[0]}
    if search is not None and search.algorithm == "grid":
        space[SEARCH_KEY] = {p: tune.grid_search(d.grid) for p, d in search.space.items()}
    elif search is not None:
        space[SEARCH_KEY] = tune.grid_search(search.configurations())
    return space


def tune_domain(distribution: Distribution):
    """A distribution of the spec as a Ray Tune search space."""
    kind, args = distribution.kind, distribution.args
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "randint":
        return tune.randint(*args)
    if kind == "choice":
        return tune.choice(list(args))
    return tune.grid_search(list(args))


def trial_spec(spec: ExperimentSpec, config: dict) -> ExperimentSpec:
    """The spec a trial runs: the experiment's with the trial's sampled values applied."""
    return spec.with_values(config.get(SEARCH_KEY))


class GridRepeater(Searcher):
    """Runs every configuration a searcher suggests on every point of the experiment's grid.

    The searcher sees one trial per configuration and learns the mean of the metric over the
    grid (seeds, data sets …) once every point has finished. A configuration it suggests again
    is not rerun: it learns the known mean (or a failure, if still running) and is asked anew,
    so no two trials share a lineage or run id. Tune saves its state (``get_state``) next to
    the searcher's with the experiment, so a resumed search goes on where it stopped.
    """

    MAX_REPEATS = 100

    def __init__(self, searcher: Searcher, grid: list[dict]):
        if not grid:
            raise ValueError("GridRepeater needs at least one grid point")
        self.searcher = searcher
        self.grid = grid
        self._groups: dict[str, dict] = {}  # searcher's trial id -> values, trials, scores
        self._group_of: dict[str, str] = {}  # Tune trial id -> searcher's trial id
        self._current: str | None = None
        self._seen: dict[str, str] = {}  # canonical values -> searcher's trial id
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        group = self._groups.get(self._current) if self._current else None
        if group is None or len(group["trials"]) == len(self.grid):
            key = self._ask(trial_id)
            if key is None or key == Searcher.FINISHED:
                return key
            group = self._groups[key]
            self._current = key
        point = self.grid[len(group["trials"])]
        group["trials"].append(trial_id)
        self._group_of[trial_id] = self._current
        return {**copy.deepcopy(point), SEARCH_KEY: copy.deepcopy(group["values"])}

    def _ask(self, trial_id: str) -> str | None:
        for attempt in range(self.MAX_REPEATS):
            key = trial_id if attempt == 0 else f"{trial_id}-repeat{attempt}"
            config = self.searcher.suggest(key)
            if config is None or config == Searcher.FINISHED:
                return config
            values = config[SEARCH_KEY]
            known = self._seen.get(canonical_json(values))
            if known is None:
                self._seen[canonical_json(values)] = key
                self._groups[key] = {"values": values, "trials": [], "scores": {}, "mean": None}
                return key
            mean = self._groups[known]["mean"]
            if mean is None:
                self.searcher.on_trial_complete(key, error=True)
            else:
                self.searcher.on_trial_complete(key, result={self.metric: mean})
        return Searcher.FINISHED  # the searcher keeps to configurations already run

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        key = self._group_of.get(trial_id)
        if key is None:
            return
        group = self._groups[key]
        score = (result or {}).get(self.metric)
        group["scores"][trial_id] = math.nan if score is None else float(score)
        if len(group["scores"]) < len(self.grid) or group["mean"] is not None:
            return
        finite = [s for s in group["scores"].values() if not math.isnan(s)]
        if finite:
            group["mean"] = sum(finite) / len(finite)
            self.searcher.on_trial_complete(key, result={self.metric: group["mean"]})
        else:
            self.searcher.on_trial_complete(key, error=True)

    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)


class RecordedASHA(ASHAScheduler):
    """ASHA whose stops are written to the store, so that a resumed search keeps them."""

    def __init__(self, store_uri: str, fence: str | None = None, **options):
        super().__init__(**options)
        self.store_uri = store_uri
        self.fence = fence

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get("done"):
            store = ExperimentStore(self.store_uri, fence=self.fence)
            for folder in result_folders(result):
                mark_stopped_early(store, folder)
        return decision


def result_folders(result: dict) -> list[str]:
    """The store folders of the lineages or run a trial's result speaks for."""
    if result.get("run_id"):
        return [run_folder(result["run_id"])]
    return [lineage_folder(i) for i in str(result.get("lineage_id") or "").split(",") if i]


def sampled_values(spec: ExperimentSpec, store_uri: str) -> list[dict]:
    """The configurations a search already ran (their ``search.json``), in a fixed order."""
    store = ExperimentStore(store_uri)
    folder = "lineages" if spec.kind == "imp" else "runs"
    paths = set(spec.search.space) if spec.search is not None else set()
    seen: dict[str, dict] = {}
    for name in store.list(folder):
        rel = f"{folder}/{name}/{SEARCH_KEY}.json"
        if not store.exists(rel + ".sha256"):
            continue
        values = store.read_json(rel)
        if not isinstance(values, dict) or set(values) != paths:
            raise StoreError(
                f"{store.url(rel)} does not hold values of the search space {sorted(paths)}"
            )
        seen.setdefault(canonical_json(values), values)
    return [seen[key] for key in sorted(seen)]


def search_options(
    spec: ExperimentSpec,
    runs: list[dict] | None = None,
    groups: list[list[dict]] | None = None,
    store_uri: str | None = None,
    fence: str | None = None,
) -> dict:
    """TuneConfig arguments of the spec's search: searcher, samples, early stopping.

    With ``store_uri`` of a resumed search, Optuna first suggests the configurations already
    run there, and ASHA's stops are recorded in that store (fenced by ``fence``)."""
    search = spec.search if runs is None else None
    options: dict = {"max_concurrent_trials": spec.run.max_concurrent_trials or None}
    if search is None:
        return options
    if search.algorithm == "optuna":
        grid = grid_points(spec, groups=groups)
        space = {SEARCH_KEY: {p: tune_domain(d) for p, d in search.space.items()}}
        earlier = sampled_values(spec, store_uri) if store_uri else []
        searcher = OptunaSearch(
            space=OptunaSearch.convert_search_space(space),
            metric=search.metric,
            mode=search.mode,
            seed=search.seed,
            points_to_evaluate=[
                {f"{SEARCH_KEY}/{path}": value for path, value in values.items()}
                for values in earlier
            ]
            or None,
        )
        trials = search.num_samples * len(grid)
        # the limiter also tells Tune how many trials may wait for resources at once: without
        # it Tune asks a custom searcher for one trial at a time
        options["search_alg"] = ConcurrencyLimiter(
            GridRepeater(searcher, grid), max_concurrent=spec.run.max_concurrent_trials or trials
        )
        options["num_samples"] = trials
        options["max_concurrent_trials"] = None
    if search.scheduler is not None:
        asha = search.scheduler.asha
        scheduler = RecordedASHA if store_uri else ASHAScheduler
        extra = {"store_uri": store_uri, "fence": fence} if store_uri else {}
        options["scheduler"] = scheduler(
            **extra,
            time_attr="training_iteration",
            metric=asha.metric or search.metric,
            mode=asha.mode or search.mode,
            max_t=asha.max_t or spec.max_trial_iterations(),
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
    return options


def _run_config(
    spec: ExperimentSpec, storage_root: str, name: str, lease: ExperimentLease | None = None
) -> tune.RunConfig:
    """Storage, failures and console of the Tune run; with ``lease``, it stops once that is lost."""
    storage_path, filesystem = tune_storage(storage_root)
    return tune.RunConfig(
        **lease_watch(lease),
        name=name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        # a retried trial starts from its state in the store: Tune keeps no checkpoint
        failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False),
        verbose=1,
        progress_reporter=progress_reporter(spec),
    )


def progress_reporter(spec: ExperimentSpec) -> tune.CLIReporter:
    """Tune's console table: readable columns (a group's size and first lineage, not its
    list; round or epoch, sparsity, accuracy) instead of the raw trial config."""
    if spec.kind == "pai":
        params = {
            "run/method": "method",
            "run/density": "density",
            "run/rounds": "T",
            "run/dataset": "data",
            "run/seed": "seed",
        }
        metrics = {"epoch": "epoch", "train_loss": "loss", "test_accuracy": "accuracy"}
    else:
        params = {"lineages/0/dataset": "data"}  # of the first lineage, as its id says
        metrics = {
            "group_size": "lineages",
            "first_lineage": "first lineage",
            "imp_round": "round",
            "sparsity_first_layer": "sparsity (1st layer)",
            "test_accuracy": "accuracy",
        }
    if spec.search is not None:
        params.update({f"{SEARCH_KEY}/{path}": path for path in spec.search.space})
    return tune.CLIReporter(
        metric_columns=metrics,
        parameter_columns=params,
        max_column_length=48,
        print_intermediate_tables=True,
    )


def _legacy_console() -> None:
    """Tune's newer console output ignores a progress reporter; the classic one honours it."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def trial_dirname_for(spec: ExperimentSpec):
    def trial_dirname(trial) -> str:
        run_spec = trial_spec(spec, trial.config)
        if spec.kind == "pai":
            return f"trial-{pai_config(run_spec, spec.name, trial.config['run']).run_id}"
        members = trial_members(trial.config)
        first = members[0]
        lineage = LineageConfig(spec.name, first["dataset"], first["seed"], run_spec).lineage_id
        if len(members) == 1:
            return f"trial-{lineage}"
        return f"trial-{lineage}-group-of-{len(members)}"

    return trial_dirname


def new_tuner(
    spec: ExperimentSpec,
    datasets: dict[str, ImageDataset],
    storage_root: str,
    store_uri: str,
    name: str | None = None,
    runs: list[dict] | None = None,
    fence: str | None = None,
    lease: ExperimentLease | None = None,
) -> tune.Tuner:
    """A Tuner over the spec's grid (or over ``runs``, for branches) named ``name``.

    Ray must be connected: ``batch_lineages: auto`` sizes the groups to the cluster. The trials
    write through stores fenced by ``fence``; the run stops once ``lease`` is lost.
    """
    _legacy_console()
    groups = None
    if spec.kind == "imp":
        groups = lineage_groups(spec, datasets, trial_slots(spec))
    return tune.Tuner(
        trainable_for(spec, datasets, store_uri, fence=fence),
        param_space=param_space(spec, runs, groups),
        tune_config=tune.TuneConfig(
            trial_dirname_creator=trial_dirname_for(spec),
            reuse_actors=False,
            **search_options(spec, runs, groups, store_uri, fence),
        ),
        run_config=_run_config(spec, storage_root, name or spec.name, lease),
    )


def new_imp_branch_tuner(
    spec: ExperimentSpec,
    datasets: dict[str, ImageDataset],
    store_uri: str,
    name: str,
    branches: list[dict],
    fence: str | None = None,
    lease: ExperimentLease | None = None,
) -> tune.Tuner:
    """Lottery-ticket branches of IMP lineages, one trial each, in the parent's folder."""

    def trial_dirname(trial) -> str:
        return f"trial-{imp_branch_config(spec, spec.name, trial.config['branch']).branch_id}"

    return tune.Tuner(
        trainable_for(spec, datasets, store_uri, IMPBranchTrainable, fence),
        param_space={"branch": tune.grid_search(branches)},
        tune_config=tune.TuneConfig(
            trial_dirname_creator=trial_dirname,
            reuse_actors=False,
            max_concurrent_trials=spec.run.max_concurrent_trials or None,
        ),
        run_config=_run_config(spec, store_uri, name, lease),
    )
