"""The Tune search of an experiment: the grid (data sets × seeds), resources, storage, restore."""

from __future__ import annotations

import fsspec
import pyarrow.fs
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.imp import LineageConfig
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store import normalise_uri
from lotterylab.trainables.imp_lineage import IMPLineageTrainable


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
        IMPLineageTrainable,
        spec_json=spec.model_dump_json(),
        datasets=datasets,
        store_uri=store_uri,
    )
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def param_space(spec: ExperimentSpec) -> dict:
    return {
        "dataset": tune.grid_search([data.name for data in spec.datasets]),
        "seed": tune.grid_search(list(spec.seeds)),
    }


def _run_config(spec: ExperimentSpec, storage_root: str) -> tune.RunConfig:
    storage_path, filesystem = tune_storage(storage_root)
    return tune.RunConfig(
        name=spec.name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
        # num_to_keep also makes Tune snapshot its experiment state after every trial
        # checkpoint, so a driver killed early still leaves something to resume from
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=2),
        verbose=1,  # Tune's console table: status and the metrics each round reports
    )


def new_tuner(
    spec: ExperimentSpec, datasets: dict[str, ImageDataset], storage_root: str, store_uri: str
) -> tune.Tuner:
    def trial_dirname(trial) -> str:
        config = LineageConfig(spec.name, trial.config["dataset"], trial.config["seed"], spec)
        return f"trial-{config.lineage_id}"

    return tune.Tuner(
        trainable_for(spec, datasets, store_uri),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.run.max_concurrent_trials or None,
            trial_dirname_creator=trial_dirname,
            reuse_actors=False,
        ),
        run_config=_run_config(spec, storage_root),
    )


def can_restore(experiment_uri: str) -> bool:
    path, filesystem = tune_storage(experiment_uri)
    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


def restored_tuner(
    spec: ExperimentSpec, datasets: dict[str, ImageDataset], experiment_uri: str
) -> tune.Tuner:
    path, filesystem = tune_storage(experiment_uri)
    return tune.Tuner.restore(
        path,
        trainable=trainable_for(spec, datasets, experiment_uri),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=filesystem,
    )
