"""Analysis of stored results: the experiment API, statistics over seeds, figures and reports.

Everything reads the experiment store only (any fsspec URI), so figures can be redrawn anywhere::

    from lotterylab.analysis import open_experiment, seed_stats
    exp = open_experiment("s3://bucket/results/paper1")
    kurt = exp.kurtosis()                      # rows + spec columns (imp.fraction, data.type ...)
    seed_stats(kurt, ["kurtosis_mean"], ["dataset", "method", "round"])
"""

from lotterylab.analysis.aggregate import aggregate_over_seeds, seed_stats
from lotterylab.analysis.experiment import (
    Experiment,
    ExperimentSet,
    MissingArtifactError,
    open_experiment,
    open_experiments,
)
from lotterylab.analysis.report import write_report
from lotterylab.analysis.tables import load_rounds

__all__ = [
    "Experiment",
    "ExperimentSet",
    "MissingArtifactError",
    "aggregate_over_seeds",
    "load_rounds",
    "open_experiment",
    "open_experiments",
    "seed_stats",
    "write_report",
]
