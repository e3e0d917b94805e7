"""Random pruning at IMP's per-layer counts: the sparsity alone, without any structure."""

from __future__ import annotations

import torch

from lotterylab.platform.imp.siblings.base import RoundContext, Sibling
from lotterylab.platform.seeds import derived_seed


def random_scores(ctx: RoundContext) -> dict[str, torch.Tensor]:
    # the same noise every round (seeded by the lineage seed only) nests the masks, and
    # pairs lineages of different data sets with the same seed
    generator = torch.Generator().manual_seed(derived_seed(ctx.seed, "random-mask"))
    return {n: torch.rand(w.shape, generator=generator) for n, w in ctx.dense_final.items()}


RANDOM = Sibling(random_scores, "uniformly random weights")
