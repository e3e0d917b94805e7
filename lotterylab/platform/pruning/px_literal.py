"""PX taken literally: unit weights everywhere in g, the classifier included (see ``px``)."""

from __future__ import annotations

import torch

from lotterylab.platform.pruning.network import require_data
from lotterylab.platform.pruning.px import path_exclusion_scores
from lotterylab.platform.schema import Strict


class PXLiteralHParams(Strict):
    """PX taken literally has no hyper-parameters."""


def px_literal_scores(
    net, masks, data, generator, hparams: PXLiteralHParams
) -> dict[str, torch.Tensor]:
    return path_exclusion_scores(net, masks, require_data("px_literal", data), None)
