"""Cavity-guided pruning (paper 1's closing suggestion): remove, in the first layer, the
weights whose removal most raises the non-Gaussianity of the pre-activations.

In the first layer the alive weights with the highest cavity score at θ(t_rewind) ⊙ the current
mask go; in the other layers the smallest of the method's own trained weights, as IMP does.
"""

from __future__ import annotations

import torch

from lotterylab.platform.imp.siblings.base import RoundContext, Sibling
from lotterylab.platform.metrics import cavity_scores


def cavity_guided_scores(ctx: RoundContext) -> dict[str, torch.Tensor]:
    if ctx.trained is None or ctx.first_layer is None:
        raise ValueError("cavity-guided pruning needs a trained network with a dense first layer")
    scores = {name: w.abs() for name, w in ctx.trained.items()}
    first = ctx.first_layer
    weight = ctx.rewind_weights[first] * ctx.alive[first]
    cavity = cavity_scores(weight, ctx.first_layer_inputs()).to("cpu")
    # keep the lowest cavity scores; removed and exactly-zero weights (NaN) go first
    scores[first] = torch.nan_to_num(-cavity, nan=-1e300)
    return scores


CAVITY = Sibling(
    cavity_guided_scores,
    "first layer by the highest cavity score, other layers by trained magnitude",
    always_trains=True,  # its other layers are pruned by its own trained magnitudes
    needs_dense_first_layer=True,
)
