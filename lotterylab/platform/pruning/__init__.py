"""Pruning at initialisation (paper 2): scores, global top-k masks over rounds, sanity branches.

``METHODS`` maps a name to its scorer and hyper-parameter class; each method is one module.
"""

from lotterylab.platform.pruning.api import prune_at_init, score
from lotterylab.platform.pruning.base import Method, Scorer
from lotterylab.platform.pruning.batches import scoring_batches
from lotterylab.platform.pruning.network import prunable_names
from lotterylab.platform.pruning.registry import METHODS, hparams_class, method_names
from lotterylab.platform.pruning.select import (
    SCHEDULES,
    keep_top,
    kept_count,
    round_densities,
    shuffle_masks,
)

__all__ = [
    "METHODS",
    "SCHEDULES",
    "Method",
    "Scorer",
    "hparams_class",
    "keep_top",
    "kept_count",
    "method_names",
    "prunable_names",
    "prune_at_init",
    "round_densities",
    "score",
    "scoring_batches",
    "shuffle_masks",
]
