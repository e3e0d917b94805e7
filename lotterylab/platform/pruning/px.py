"""PX, Path eXclusion (Iurada et al. 2024): each weight's share in a bound on the NTK trace.

R = sum_n sum_k g^k(x_n^2, 1, a_n) * h^k(1, theta^2, 1). h is the path network with squared
weights on an all-ones input (batch norm in eval mode: in train mode, as in the public code,
an all-ones input makes h constant and every score rounding noise). g has unit weights, the
squared data as input and the ReLU on/off pattern of the real network (eval mode) on x_n.
h does not see the data, so the data enter only through G_k = sum_n g^k, one factor per
output; score = |dR/d(theta^2)| * theta^2.

``px`` keeps the classifier's own weights in g, as the public code does, so G_k (and the mask)
depend on the data; ``px_literal`` uses unit weights everywhere, where all G_k of a dense
classifier are equal and PX reduces to SynFlow-L2.

g is computed in float32 when it fits: gates only remove non-negative terms, so the ungated
g on an all-ones input, times max x^2, bounds every activation, and a power-of-two input scale
(exact) keeps them in range. Deeper networks fall back to float64.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from lotterylab.platform.pruning.network import Relus, on_device, require_data
from lotterylab.platform.pruning.synflow_l2 import squared_path_scores
from lotterylab.platform.schema import Strict

TARGET_EXPONENT = 100  # scaled activations stay below 2**101, far from float32's 2**128
FLOAT32_RANGE = 200  # bounds up to 2**200 fit above float32's smallest normal numbers


class PXHParams(Strict):
    output_layer: str | None = Field(
        None,
        description="classifier weight kept as is in g; default: the last Conv/Linear registered",
    )


def data_factor(net, masks, data, output_layer: str | None) -> torch.Tensor:
    """G = sum_n g(x_n^2) (one entry per output), in float64."""
    real = net.masked(masks)
    unit = {n: masks[n].to(torch.float64) for n in net.names}
    if output_layer is not None:
        unit[output_layer] = real[output_layer].to(torch.float64)
    shape = tuple(data[0][0].shape[1:])
    with torch.no_grad():
        probe = Relus("linear")
        ones = torch.ones((1, *shape), dtype=torch.float64, device=net.device)
        with probe:
            out = net(ones, net.path_state("unit", {n: u.abs() for n, u in unit.items()}))
        x2max = max(float(x.square().max()) for x, _ in data)
        bound = max(probe.peak, float(out.abs().max())) * x2max
        if bound == 0.0 or not math.isfinite(bound) or math.log2(bound) > FLOAT32_RANGE:
            return _gated_sum(net, real, unit, data, torch.float64, 0)
        shift = TARGET_EXPONENT - max(math.floor(math.log2(bound)), math.floor(math.log2(x2max)))
        total = _gated_sum(net, real, unit, data, torch.float32, shift)
        if not bool(torch.isfinite(total).all()):
            total = _gated_sum(net, real, unit, data, torch.float64, 0)
        return total


def _gated_sum(net, real, unit, data, dtype, shift) -> torch.Tensor:
    state = net.path_state("unit", unit, dtype)
    total = torch.zeros((), dtype=torch.float64, device=net.device)
    for batch in data:
        x, _ = on_device(net, batch)
        gates: list[torch.Tensor] = []
        with Relus("record", gates):
            net(x, real)
        scaled = (x.to(torch.float64).square() * 2.0**shift).to(dtype)
        with Relus("replay", gates):
            out = net(scaled, state)
        total = total + out.to(torch.float64).sum(0)
    return total * 2.0**-shift


def path_exclusion_scores(net, masks, data, output_layer: str | None) -> dict[str, torch.Tensor]:
    factor = data_factor(net, masks, data, output_layer)
    return squared_path_scores(net, masks, tuple(data[0][0].shape[1:]), factor)


def px_scores(net, masks, data, generator, hparams: PXHParams) -> dict[str, torch.Tensor]:
    data = require_data("px", data)
    return path_exclusion_scores(net, masks, data, net.output_layer(hparams.output_layer))
