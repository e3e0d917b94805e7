"""MLflow: one run per tracker key, found again by its id tag, each (metric, step) logged once.

Imported only when a spec asks for MLflow, so the platform imports without it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from lotterylab.platform.store.tracking.rows import TrackedStep, external_id
from lotterylab.platform.store.tracking.spec import MLflowSpec

ID_TAG = "lotterylab.id"
KEY_TAG = "lotterylab.key"
EXPERIMENT_TAG = "lotterylab.experiment"
FIELD = "tracking.mlflow.tracking_uri"
PARAM_CHUNK = 100
METRIC_CHUNK = 1000
PARAM_LENGTH = 6000


class MLflowBackend:
    def __init__(self, spec: MLflowSpec, experiment_uri: str):
        self.spec, self.experiment_uri = spec, experiment_uri
        self.client = MlflowClient(tracking_uri=spec.tracking_uri)
        self.experiment_id = ensure_experiment(self.client, spec)
        self._runs: dict[str, str] = {}  # key -> MLflow run id
        self._logged: dict[tuple[str, str], set[int]] = {}  # (run id, metric) -> steps
        self._new: set[str] = set()  # runs this process created: nothing logged before

    def log(self, step: TrackedStep) -> None:
        run_id = self._run(step.key, step.params)
        fresh = [(k, v) for k, v in step.metrics.items() if step.step not in self._steps(run_id, k)]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step.step) for k, v in fresh]
        for i in range(0, len(metrics), METRIC_CHUNK):
            self.client.log_batch(run_id, metrics=metrics[i : i + METRIC_CHUNK])
        for k, _ in fresh:
            self._logged[(run_id, k)].add(step.step)
        if step.final:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def summary(self, key: str, params: Mapping[str, str], files: Mapping[str, bytes]) -> None:
        run_id = self._run(key, params)
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                path = os.path.join(folder, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as handle:
                    handle.write(data)
            self.client.log_artifacts(run_id, folder, artifact_path="figures")
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def close(self) -> None:
        self._runs.clear()

    def _run(self, key: str, params: Mapping[str, str]) -> str:
        if key in self._runs:
            return self._runs[key]
        ident = external_id(self.experiment_uri, key)
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ID_TAG}` = '{ident}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {ID_TAG: ident, KEY_TAG: key, EXPERIMENT_TAG: self.experiment_uri}
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=key).info.run_id
            pairs = [Param(k, str(v)[:PARAM_LENGTH]) for k, v in sorted(params.items())]
            for i in range(0, len(pairs), PARAM_CHUNK):
                self.client.log_batch(run_id, params=pairs[i : i + PARAM_CHUNK])
            self._new.add(run_id)
        self._runs[key] = run_id
        return run_id

    def _steps(self, run_id: str, metric: str) -> set[int]:
        """The steps of ``metric`` the run holds, read once per process (a resumed trial's
        replayed round finds what its first attempt logged)."""
        if (run_id, metric) not in self._logged and run_id in self._new:
            self._logged[(run_id, metric)] = set()
        elif (run_id, metric) not in self._logged:
            history = self.client.get_metric_history(run_id, metric)
            self._logged[(run_id, metric)] = {m.step for m in history}
        return self._logged[(run_id, metric)]


@contextmanager
def _no_retries():
    """Fail at once on an unreachable server instead of MLflow's minutes of back-off."""
    saved = {k: os.environ.get(k) for k in _CHECK_ENV}
    os.environ.update(_CHECK_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def ensure_experiment(client: MlflowClient, spec: MLflowSpec) -> str:
    """The id of the spec's experiment, created when missing (a concurrent creator wins)."""
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        try:
            return client.create_experiment(spec.experiment, spec.artifact_location)
        except Exception:  # created by another process in between
            experiment = client.get_experiment_by_name(spec.experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"tracking.mlflow.experiment: {spec.experiment!r} is deleted on "
            f"{spec.tracking_uri}; restore it or pick another name"
        )
    return experiment.experiment_id


def check(spec: MLflowSpec) -> None:
    """Reach the tracking store and make sure the experiment exists, before any trial runs."""
    with _no_retries():
        try:
            ensure_experiment(MlflowClient(tracking_uri=spec.tracking_uri), spec)
        except ValueError:
            raise
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise ValueError(
                f"{FIELD}: cannot use MLflow at {spec.tracking_uri!r}: {first} "
                "(allowed: a reachable http(s):// server or a writable sqlite:///path.db; "
                "credentials come from MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/"
                "PASSWORD)"
            ) from error
