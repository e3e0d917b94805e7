"""Oneshot magnitude pruning: the largest weights of the dense trained net θ(T)."""

from __future__ import annotations

import torch

from lotterylab.platform.imp_methods.base import RoundContext, keep_by_scores


class Oneshot:
    def trains(self, train_baselines: bool) -> bool:
        return train_baselines

    def keep(self, ctx: RoundContext) -> dict[str, torch.Tensor]:
        # fixed scores make the masks of successive rounds nested
        return keep_by_scores({n: w.abs() for n, w in ctx.dense_final.items()}, ctx)
