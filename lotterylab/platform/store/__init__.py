"""The experiment store and its neighbours: everything that writes or names what an experiment
keeps.

``experiment_store``: atomic, checksummed artifacts, tables and JSON on any fsspec URI;
``lease``: the one live writer; ``fence``: the lease file as every fenced write reads it;
``tables``: the Parquet schemas; ``tensorboard``: event files; ``ids`` and ``identity``: how
lineages and runs are named; ``data_artifacts``: the examples and components a run stores;
``tracking``: MLflow / W&B mirrors of the rows.
"""

from lotterylab.platform.store.experiment_store import (
    ExperimentStore,
    StoreError,
    WriterFencedError,
    credentials_problem,
    normalise_uri,
)

__all__ = [
    "ExperimentStore",
    "StoreError",
    "WriterFencedError",
    "credentials_problem",
    "normalise_uri",
]
