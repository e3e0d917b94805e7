"""Pruning at initialisation (paper 2): scores, global top-k masks over rounds, sanity branches.

``METHODS`` maps a name to its scorer, hyper-parameter class and facts; each method is one
module. ``select.keep_top`` is the one pruning core IMP and PaI share.
"""

from lotterylab.platform.models.masking import prunable_names
from lotterylab.platform.pruning.api import prune_at_init, score
from lotterylab.platform.pruning.base import Method, Scorer
from lotterylab.platform.pruning.batches import scoring_batches
from lotterylab.platform.pruning.registry import (
    METHODS,
    hparams_class,
    method,
    method_names,
    single_shot_names,
)
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
    "method",
    "method_names",
    "prunable_names",
    "prune_at_init",
    "round_densities",
    "score",
    "single_shot_names",
    "scoring_batches",
    "shuffle_masks",
]
