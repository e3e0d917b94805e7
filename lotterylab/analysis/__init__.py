"""Analysis of an experiment's stored results: tables, statistics over seeds, figures, report."""

from lotterylab.analysis.aggregate import aggregate_over_seeds
from lotterylab.analysis.report import write_report
from lotterylab.analysis.tables import load_rounds

__all__ = ["aggregate_over_seeds", "load_rounds", "write_report"]
