"""``lotterylab analyze``: the analyses of a stored experiment on a pool of Ray actors.

The driver lists the units of the experiment (``platform.analysis_units``) and verifies which
outputs are already stored (a unit's output path is a function of its inputs; checksums are
checked), so nothing finished is computed twice and a complete experiment starts no actor. For
the rest it starts one actor per worker, each with 1 CPU, or a share of a GPU when the cluster
has GPUs, and hands out units one at a time to whichever actor is free, with a progress bar
over units. An actor checks the output again before computing: a retried unit may have
finished just before its worker died.

A worker that dies (its process killed, its node lost) is Ray's to replace: actors restart
without limit (``max_restarts=-1``) and the unit in flight is retried on the restarted actor
(``max_task_retries``); a unit that kills its worker ``MAX_UNIT_ATTEMPTS`` times is reported as
failed and the others go on. The pool is a few lines over ``ray.wait`` rather than
``ray.util.ActorPool``, which drops an actor from the pool after one lost task even though Ray
restarts it, and does not say which unit a lost task belonged to.

Trials may still be training: the analyses take no lease on the experiment, only on its
``analysis/`` folder, so a second analyzer of the same experiment is refused while a run or
resume writes on.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
import torch
from tqdm import tqdm

from lotterylab.cluster.connection import connect, disconnect
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.post_run import (
    COMPUTED,
    DEFAULT_SAMPLES,
    NTK,
    SKIPPED,
    WHATS,
    AnalysisUnit,
    UnitResult,
    UnitRunner,
    list_units,
    parse_what,
)
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.lease import ExperimentLease, LeaseError, LeaseHeldError

FAILED = "failed"
ANALYSIS_FOLDER = "analysis"
WORKERS_PER_GPU = 4  # default packing of workers on each GPU of the cluster
MAX_UNIT_ATTEMPTS = 3  # a unit whose worker dies this often is reported failed
CHECK_THREADS = 8  # driver threads verifying stored outputs


@dataclass(frozen=True)
class PoolSize:
    workers: int
    num_cpus: float
    num_gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


def pool_size(resources: Mapping[str, float], units: int, workers: int | None = None) -> PoolSize:
    """Workers and each one's resources, from ``--workers`` or the cluster's resources.

    Without ``--workers``: ``WORKERS_PER_GPU`` per GPU when the cluster has GPUs, else one per
    CPU; never more than there are units. With GPUs each worker takes an equal share of one
    (1/k for k workers per GPU); CPUs are 1 per worker, or an equal share where workers
    outnumber them, so every worker can start.
    """
    check_workers(workers)
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 0.0))
    if workers is None:
        workers = int(gpus * WORKERS_PER_GPU) if gpus >= 1 else max(1, int(cpus))
    workers = max(1, min(workers, units))
    num_gpus = 0.0
    if gpus >= 1:
        per_gpu = math.ceil(workers / int(gpus))
        num_gpus = 1.0 / per_gpu
    num_cpus = min(1.0, cpus / workers) if cpus > 0 else 0.0
    return PoolSize(workers=workers, num_cpus=num_cpus, num_gpus=num_gpus)


def check_workers(workers: int | None) -> None:
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers!r}")


class AnalysisWorker:
    """One actor of the pool: a ``UnitRunner`` on this worker's device.

    Threaded (two threads), so ``busy`` and ``pid`` answer while a unit computes.
    """

    def __init__(self, store_uri: str, spec_json: str, gpu_share: float, threads: int):
        torch.set_num_threads(threads)
        spec = ExperimentSpec.model_validate_json(spec_json)
        self.runner = UnitRunner(ExperimentStore(store_uri), spec, None, trial_device(gpu_share))
        self._current: tuple[str, float] | None = None  # unit key, start time

    def offer(self, datasets: dict) -> None:
        """Data sets built once by the driver; a restarted worker rebuilds what it needs."""
        self.runner.datasets.update(datasets)

    def run(self, unit: AnalysisUnit) -> UnitResult:
        start = time.perf_counter()
        self._current = (unit.key, start)
        try:
            return self.runner.run(unit, os.getpid())
        except StoreError as exc:  # a corrupt or missing input: computing again cannot help
            return UnitResult(
                unit.key,
                unit.what,
                FAILED,
                time.perf_counter() - start,
                os.getpid(),
                str(exc),
                bad_input=True,
            )
        except Exception as exc:  # reported with the unit; the other units go on
            return UnitResult(
                unit.key, unit.what, FAILED, time.perf_counter() - start, os.getpid(), repr(exc)
            )
        finally:
            self._current = None

    def busy(self) -> tuple[str, float] | None:
        """The unit this worker is computing, if any: its key and seconds since it started."""
        current = self._current
        return None if current is None else (current[0], time.perf_counter() - current[1])

    def pid(self) -> int:
        return os.getpid()


class AnalysisPool:
    """Actors over units, one unit per free actor; Ray restarts dead actors and retries."""

    def __init__(
        self,
        store_uri: str,
        spec: ExperimentSpec,
        size: PoolSize,
        datasets: Mapping | None = None,
    ):
        self.size = size
        worker = ray.remote(AnalysisWorker).options(
            num_cpus=size.num_cpus,
            num_gpus=size.num_gpus,
            max_restarts=-1,
            max_task_retries=MAX_UNIT_ATTEMPTS - 1,
            max_concurrency=2,
        )
        self.actors = [
            worker.remote(store_uri, spec.model_dump_json(), size.num_gpus, size.threads)
            for _ in range(size.workers)
        ]
        if datasets:  # one copy in the object store for every actor
            shared = ray.put(dict(datasets))
            ray.get([actor.offer.remote(shared) for actor in self.actors])

    def pids(self) -> list[int]:
        return ray.get([actor.pid.remote() for actor in self.actors])

    def busy(self) -> list[tuple[str, float] | None]:
        return ray.get([actor.busy.remote() for actor in self.actors])

    def run(
        self,
        units: Iterable[AnalysisUnit],
        on_result: Callable[[UnitResult], None] | None = None,
    ) -> list[UnitResult]:
        """Every unit once, in order of submission; results in order of completion."""
        queue = deque(units)
        idle = list(reversed(self.actors))
        in_flight: dict[ray.ObjectRef, tuple[AnalysisUnit, object]] = {}
        results: list[UnitResult] = []
        while queue or in_flight:
            while queue and idle:
                actor, unit = idle.pop(), queue.popleft()
                in_flight[actor.run.remote(unit)] = (unit, actor)
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            unit, actor = in_flight.pop(ready)
            try:
                result = ray.get(ready)
            except ray.exceptions.RayError as exc:  # the worker died on every attempt
                result = UnitResult(
                    unit.key,
                    unit.what,
                    FAILED,
                    0.0,
                    0,
                    f"worker lost {MAX_UNIT_ATTEMPTS} times on this unit: {exc!r}",
                )
            idle.append(actor)  # restarted by Ray if it died
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


@dataclass
class AnalysisOutcome:
    uri: str
    units: int
    workers: int
    computed: dict[str, int]
    skipped: dict[str, int]  # already stored
    failed: list[str]
    not_applicable: dict[str, str]
    figures: list[str]
    wall_time_s: float
    results: list[UnitResult] = field(default_factory=list)

    @property
    def bad_inputs(self) -> list[str]:
        """Failures caused by stored inputs that are corrupt or missing (not by the code)."""
        return [f"{r.key}: {r.error}" for r in self.results if r.status == FAILED and r.bad_input]


def shared_datasets(spec: ExperimentSpec, units: Sequence[AnalysisUnit]) -> dict:
    """Data sets that the units need, built once here for every actor."""
    names = sorted({u.dataset for u in units if u.needs_data})
    return {name: build_dataset(spec.datasets, name) for name in names}


def stored_units(
    store: ExperimentStore, spec: ExperimentSpec, units: Sequence[AnalysisUnit]
) -> list[bool]:
    """Whether each unit's output is stored and verified; read in parallel threads (I/O and
    sha256, which release the GIL), so a complete experiment starts no actor at all."""
    checker = UnitRunner(store, spec)
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as threads:
        return list(threads.map(checker.done, units))


def analyze_experiment(
    uri: str,
    what: str | Sequence[str] = WHATS,
    workers: int | None = None,
    address: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    progress: bool = True,
) -> AnalysisOutcome:
    """Compute every missing unit of ``what`` for the experiment at ``uri`` on a Ray pool."""
    start = time.perf_counter()
    whats = parse_what(what)
    check_workers(workers)
    # imported here: workers import this module, and need neither Tune nor the figures
    from lotterylab.cluster.launch import load_stored_spec

    store = ExperimentStore(uri)
    spec = load_stored_spec(store)
    lease = _analysis_lease(store)
    try:
        listing = list_units(store, spec, whats, samples)
        stored = stored_units(store, spec, listing.units)
        results = [
            UnitResult(u.key, u.what, SKIPPED, 0.0, os.getpid())
            for u, done in zip(listing.units, stored, strict=True)
            if done
        ]
        missing = [u for u, done in zip(listing.units, stored, strict=True) if not done]
        size = 0
        with tqdm(
            total=len(listing.units),
            initial=len(results),
            desc="analyze",
            unit="unit",
            disable=not progress,
        ) as bar:
            if missing:
                computed, size = _run_pool(store, spec, missing, workers, address, lease, bar)
                results += computed
        figures = []
        if NTK in whats and listing.count(NTK):
            from lotterylab.analysis.spectra import write_ntk_figures

            figures = write_ntk_figures(store)
    finally:
        lease.release()
    return AnalysisOutcome(
        uri=store.uri,
        units=len(listing.units),
        workers=size,
        computed=_count(results, whats, COMPUTED),
        skipped=_count(results, whats, SKIPPED),
        failed=[f"{r.key}: {r.error}" for r in results if r.status == FAILED],
        not_applicable=listing.not_applicable,
        figures=figures,
        wall_time_s=time.perf_counter() - start,
        results=results,
    )


def _analysis_lease(store: ExperimentStore) -> ExperimentLease:
    """The lease of the experiment's ``analysis/`` folder, taken; refused while another holds it."""
    lease = ExperimentLease(ExperimentStore(store.uri + "/" + ANALYSIS_FOLDER))
    try:
        return lease.acquire()
    except LeaseHeldError as exc:
        info = exc.info
        raise LeaseError(
            f"experiment {store.uri} is being analysed by {info.holder} (command: "
            f"{info.command!r}, since {info.acquired}); its lease {lease.where} expires at "
            f"{info.expires} unless the holder renews it. Wait for that analysis to finish, then "
            f"run `lotterylab analyze {store.uri}` again: it computes only what is missing."
        ) from exc


def _run_pool(
    store: ExperimentStore,
    spec: ExperimentSpec,
    units: Sequence[AnalysisUnit],
    workers: int | None,
    address: str | None,
    lease: ExperimentLease,
    bar: tqdm,
) -> tuple[list[UnitResult], int]:
    owned = not ray.is_initialized()  # else the caller's Ray, left as it is
    if owned:
        connect(address)
    pool = None
    try:
        size = pool_size(ray.cluster_resources(), len(units), workers)
        pool = AnalysisPool(store.uri, spec, size, shared_datasets(spec, units))
        counts = {COMPUTED: 0, SKIPPED: bar.n, FAILED: 0}

        def on_result(result: UnitResult) -> None:
            lease.check()  # a lost lease stops the analysis at the next unit
            counts[result.status] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update()

        return pool.run(units, on_result), size.workers
    finally:
        if pool is not None:
            pool.close()
        if owned:
            disconnect()


def _count(results: Sequence[UnitResult], whats: Sequence[str], status: str) -> dict[str, int]:
    return {w: sum(r.what == w and r.status == status for r in results) for w in whats}
