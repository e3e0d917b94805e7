"""Mirror the platform's result rows to MLflow and/or Weights & Biases.

The store stays the only truth: rows are written first, then copied to each tracker named by
the spec's ``tracking:`` section (``TrackedStore.write_rows``, the one place rows are written).
A tracker run per IMP lineage × method (step = round) and per PaI run (step = epoch; the mask
row is step 0), named after the lineage or run id, is found again by a resumed trial, and a
replayed round or epoch logs nothing its first attempt already logged. The back ends import
lazily: without a ``tracking:`` section neither package is needed.
"""

from __future__ import annotations

import io
import posixpath
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.tracking.rows import (
    SUMMARY_KEY,
    TRACKED_TABLES,
    flatten,
    tracked_steps,
)
from lotterylab.platform.store.tracking.spec import (
    MLflowSpec,
    TrackingSpec,
    WandbSpec,
)

if TYPE_CHECKING:
    from lotterylab.platform.spec import ExperimentSpec

__all__ = [
    "MLflowSpec",
    "TrackedStore",
    "Tracker",
    "TrackingSpec",
    "WandbSpec",
    "check_tracking",
    "track_stored_summary",
    "track_summary",
    "tracked_store",
]

SUMMARY_SUFFIXES = (".png", ".pdf", ".svg", ".md")


def _backends(tracking: TrackingSpec, experiment_uri: str) -> list[Any]:
    backends = []
    if tracking.mlflow is not None:
        from lotterylab.platform.store.tracking.mlflow_backend import MLflowBackend

        backends.append(MLflowBackend(tracking.mlflow, experiment_uri))
    if tracking.wandb is not None:
        from lotterylab.platform.store.tracking.wandb_backend import WandbBackend

        backends.append(WandbBackend(tracking.wandb, experiment_uri))
    return backends


def _missing(package: str, extra: str = "tracking") -> ValueError:
    return ValueError(
        f"tracking: the spec asks for {package}, which is not installed "
        f"(pip install 'lotterylab[{extra}]')"
    )


def check_tracking(spec: ExperimentSpec) -> None:
    """Reach every tracker of the spec (creating the MLflow experiment), or fail naming the
    field: called by ``validate`` and before Ray starts any trial."""
    tracking = spec.tracking
    if tracking is None:
        return
    if tracking.mlflow is not None:
        try:
            from lotterylab.platform.store.tracking import mlflow_backend
        except ImportError as error:
            raise _missing("mlflow") from error
        mlflow_backend.check(tracking.mlflow)
    if tracking.wandb is not None:
        try:
            from lotterylab.platform.store.tracking import wandb_backend
        except ImportError as error:
            raise _missing("wandb") from error
        wandb_backend.check(tracking.wandb)


def spec_params(spec: ExperimentSpec) -> dict[str, str]:
    """The resolved spec as flat parameters (the tracking section itself left out)."""
    dump = spec.model_dump(mode="json")
    dump.pop("tracking", None)
    return flatten(dump)


class Tracker:
    """Copies the rows of one trial's lineages or run to the spec's trackers.

    The first row of a tracker run in a process (a new trial, or one resumed after a crash)
    first back-fills the steps the store holds for that run: a killed trial may have written
    rows its trackers never received, and the back ends skip what they already hold.
    """

    def __init__(self, spec: ExperimentSpec, store: ExperimentStore):
        self.tracking = spec.tracking
        self.store = store
        self.params = spec_params(spec)
        self.last_round = spec.imp.rounds if spec.kind == "imp" and spec.imp else None
        self._backends: list[Any] | None = None
        self._seen: set[str] = set()

    @property
    def backends(self) -> list[Any]:
        if self._backends is None:
            self._backends = _backends(self.tracking, self.store.uri)
        return self._backends

    def rows_written(self, table: str, owner: str, rows: list[dict]) -> None:
        for step in tracked_steps(table, rows, self.params, self.last_round):
            if step.key not in self._seen:
                self._seen.add(step.key)
                for earlier in self._stored_steps(owner, step.key):
                    if earlier.step < step.step:
                        self._log(earlier)
            self._log(step)

    def _log(self, step) -> None:
        for backend in self.backends:
            backend.log(step)

    def _stored_steps(self, owner: str, key: str) -> list:
        """The steps of tracker run ``key`` in the store's parts of ``owner``, in step order
        and, within a step, in the order the procedures write their tables."""
        found = []
        for order, table in enumerate(TRACKED_TABLES):
            folder = posixpath.join("tables", table, owner)
            for name in self.store.list(folder):
                if name.startswith(".") or not name.endswith(".parquet"):
                    continue  # an unfinished write
                data = self.store.read_bytes(posixpath.join(folder, name))
                rows = pq.read_table(io.BytesIO(data)).to_pylist()
                for step in tracked_steps(table, rows, self.params, self.last_round):
                    if step.key == key:
                        found.append((step.step, order, step))
        return [step for _, _, step in sorted(found, key=lambda item: item[:2])]

    def summary(self, files: dict[str, bytes]) -> None:
        for backend in self.backends:
            backend.summary(SUMMARY_KEY, self.params, files)

    def close(self) -> None:
        for backend in self._backends or []:
            backend.close()


class TrackedStore(ExperimentStore):
    """An experiment store whose result rows also reach the spec's trackers."""

    def __init__(self, uri: str, tracker: Tracker | None = None, **kwargs):
        super().__init__(uri, **kwargs)
        self.tracker = tracker

    def write_rows(self, table: str, lineage_id: str, part: str, rows: list[dict]) -> str:
        rel = super().write_rows(table, lineage_id, part, rows)
        if self.tracker is not None:  # the store first: it is what resume trusts
            self.tracker.rows_written(table, lineage_id, rows)
        return rel

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def tracked_store(uri: str, spec: ExperimentSpec, fence: str | None = None) -> TrackedStore:
    """The store a trial writes through: tracked when the spec has a ``tracking:`` section,
    fenced by the driver's lease token when given."""
    store = TrackedStore(uri, fence=fence)
    if spec.tracking is not None:
        store.tracker = Tracker(spec, store)
    return store


def track_summary(spec: ExperimentSpec, store: ExperimentStore) -> None:
    """The experiment's figures and reports as artifacts of one summary run per tracker."""
    if spec.tracking is None:
        return
    files = {
        name: store.read_bytes(posixpath.join("figures", name))
        for name in store.list("figures")
        if name.endswith(SUMMARY_SUFFIXES)
    }
    tracker = Tracker(spec, store)
    try:
        tracker.summary(files)
    finally:
        tracker.close()


def track_stored_summary(store: ExperimentStore) -> None:
    """``track_summary`` under the experiment's stored spec (``lotterylab figures``)."""
    from lotterylab.platform.spec import parse_spec

    rel = "spec.resolved.json"
    if store.exists(rel):
        track_summary(parse_spec(store.read_json(rel), store.url(rel)), store)
