"""Oneshot magnitude pruning: the largest weights of the dense trained net θ(T)."""

from __future__ import annotations

import torch

from lotterylab.platform.imp.siblings.base import RoundContext, Sibling


def oneshot_scores(ctx: RoundContext) -> dict[str, torch.Tensor]:
    # fixed scores make the masks of successive rounds nested
    return {n: w.abs() for n, w in ctx.dense_final.items()}


ONESHOT = Sibling(oneshot_scores, "the largest weights of the dense trained net")
