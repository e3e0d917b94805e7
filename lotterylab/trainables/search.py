"""The Tune search of an experiment: the grid, resources, storage and restore, for either kind.

``imp`` experiments search data sets × seeds (the methods live inside each lineage); ``pai``
experiments search data sets × seeds × methods × densities × scoring rounds, one trial per run.
Sanity-check branches are their own small Tune experiments inside the parent's folder.
"""

from __future__ import annotations

import fsspec
import pyarrow.fs
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.imp import LineageConfig
from lotterylab.platform.pai import pai_grid
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store import normalise_uri
from lotterylab.trainables.imp_lineage import IMPLineageTrainable
from lotterylab.trainables.pai_run import PaIRunTrainable, pai_config

TRAINABLES = {"imp": IMPLineageTrainable, "pai": PaIRunTrainable}


def tune_storage(uri: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Tune's ``storage_path`` and ``storage_filesystem`` for any fsspec URI."""
    uri = normalise_uri(uri)
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://"), None
    fs, path = fsspec.core.url_to_fs(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def trainable_for(spec: ExperimentSpec, datasets: dict[str, ImageDataset], store_uri: str):
    """The trainable with the data sets put in the object store once, for every trial."""
    trainable = tune.with_parameters(
        TRAINABLES[spec.kind],
        spec_json=spec.model_dump_json(),
        datasets=datasets,
        store_uri=store_uri,
    )
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def param_space(spec: ExperimentSpec, runs: list[dict] | None = None) -> dict:
    if spec.kind == "pai":
        return {"run": tune.grid_search(runs if runs is not None else pai_grid(spec))}
    return {
        "dataset": tune.grid_search([data.name for data in spec.datasets]),
        "seed": tune.grid_search(list(spec.seeds)),
    }


def _run_config(spec: ExperimentSpec, storage_root: str, name: str) -> tune.RunConfig:
    storage_path, filesystem = tune_storage(storage_root)
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
        # num_to_keep also makes Tune snapshot its experiment state after every trial
        # checkpoint, so a driver killed early still leaves something to resume from
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=2),
        verbose=1,  # Tune's console table: status and the metrics each round reports
    )


def trial_dirname_for(spec: ExperimentSpec):
    def trial_dirname(trial) -> str:
        if spec.kind == "pai":
            return f"trial-{pai_config(spec, spec.name, trial.config['run']).run_id}"
        config = LineageConfig(spec.name, trial.config["dataset"], trial.config["seed"], spec)
        return f"trial-{config.lineage_id}"

    return trial_dirname


def new_tuner(
    spec: ExperimentSpec,
    datasets: dict[str, ImageDataset],
    storage_root: str,
    store_uri: str,
    name: str | None = None,
    runs: list[dict] | None = None,
) -> tune.Tuner:
    """A Tuner over the spec's grid (or over ``runs``, for branches) named ``name``."""
    return tune.Tuner(
        trainable_for(spec, datasets, store_uri),
        param_space=param_space(spec, runs),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.run.max_concurrent_trials or None,
            trial_dirname_creator=trial_dirname_for(spec),
            reuse_actors=False,
        ),
        run_config=_run_config(spec, storage_root, name or spec.name),
    )


def can_restore(experiment_uri: str) -> bool:
    path, filesystem = tune_storage(experiment_uri)
    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


def restored_tuner(
    spec: ExperimentSpec, datasets: dict[str, ImageDataset], experiment_uri: str, store_uri: str
) -> tune.Tuner:
    path, filesystem = tune_storage(experiment_uri)
    return tune.Tuner.restore(
        path,
        trainable=trainable_for(spec, datasets, store_uri),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=filesystem,
    )
