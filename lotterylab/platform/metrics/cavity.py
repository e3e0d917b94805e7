"""Cavity scores of first-layer weights (paper 1, eq. 5-6), and their means by removal round.

The cavity score of W_ij asks how the kurtosis of λ_i changes when W_ij x_j is taken out of it.
Recomputing the kurtosis once per weight would cost a pass over the data per weight. Instead,
with c_i the centred pre-activation and u_j the centred input, removing W_ij gives
c' = c − W_ij u_j, whose second and fourth moments expand into

    m2' = E[c²] − 2W E[cu] + W² E[u²]
    m4' = E[c⁴] − 4W E[c³u] + 6W² E[c²u²] − 4W³ E[cu³] + W⁴ E[u⁴]

so every weight's score follows from four (H, D) moment matrices, each one matmul per chunk of
samples, accumulated in float64 over a stream of chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lotterylab.platform.imp.masks import ALIVE
from lotterylab.platform.metrics._layer import check_layer, input_means, kurtosis_from_moments

CAVITY_CHUNK_SIZE = 2048
# below this fraction of its terms' size, m2' is lost to cancellation and no score is given
MIN_REMAINING_VARIANCE = 1e-6


def cavity_scores(
    weight: torch.Tensor, inputs: torch.Tensor, chunk_size: int = CAVITY_CHUNK_SIZE
) -> torch.Tensor:
    """Cavity score of every weight of ``weight`` (H, D) on ``inputs`` (N, D): (H, D) float64.

    score = (kurt' − kurt) / kurt where kurt(λ_i) > 3 and (kurt − kurt') / kurt where it is
    below 3 (0 at exactly 3), kurt' being the kurtosis without W_ij: positive means removing
    the weight makes λ_i less Gaussian. Computed on the inputs' device. NaN for pruned (exactly
    zero) weights, for every weight of a unit whose λ has zero variance, and where removing
    the weight leaves (next to) no variance: the unit's only nonzero weight, or one that
    carries all but a 1e-6 fraction of the variance, where the moments cannot resolve kurt'.
    The bias plays no part: removing a weight never touches it, and kurtosis ignores shifts.
    """
    check_layer(weight, inputs, chunk_size)
    device = inputs.device
    w = weight.detach().to(device=device, dtype=torch.float64)
    mean, mean_abs = input_means(inputs, chunk_size)
    h, d = w.shape
    s2 = torch.zeros(h, dtype=torch.float64, device=device)
    s4 = torch.zeros_like(s2)
    cu = torch.zeros(h, d, dtype=torch.float64, device=device)
    c3u = torch.zeros_like(cu)
    c2u2 = torch.zeros_like(cu)
    cu3 = torch.zeros_like(cu)
    u2 = torch.zeros(d, dtype=torch.float64, device=device)
    u4 = torch.zeros_like(u2)
    for chunk in inputs.split(chunk_size):
        u = chunk.to(torch.float64) - mean
        c = u @ w.T
        c2 = c.square()
        s2 += c2.sum(dim=0)
        s4 += c2.square().sum(dim=0)
        cu.addmm_(c.T, u)
        c3u.addmm_((c2 * c).T, u)
        u_sq = u.square()
        c2u2.addmm_(c2.T, u_sq)
        cu3.addmm_(c.T, u_sq * u)
        u2 += u_sq.sum(dim=0)
        u4 += u_sq.square().sum(dim=0)
    n = len(inputs)
    for total in (s2, s4, cu, c3u, c2u2, cu3, u2, u4):
        total /= n

    m2 = s2[:, None]
    kurt = kurtosis_from_moments(s2, s4, mean_abs @ w.abs().T)[:, None]
    # changes of the centred moments when W_ij u_j is taken out, in Horner form
    delta2 = w * (w * u2 - 2 * cu)
    delta4 = w * (-4 * c3u + w * (6 * c2u2 + w * (-4 * cu3 + w * u4)))
    m2_new = m2 + delta2
    # kurt' − kurt = [Δ4 − kurt·Δ2·(2 m2 + Δ2)] / m2'², free of the cancellation in m4'/m2'² − kurt
    change = (delta4 - kurt * delta2 * (2 * m2 + delta2)) / m2_new.square()
    scores = torch.sign(kurt - 3) * change / kurt
    terms = m2 + 2 * (w * cu).abs() + w.square() * u2
    lone = (w != 0).sum(dim=1, keepdim=True) == 1
    undefined = (w == 0) | lone | ~(m2_new > MIN_REMAINING_VARIANCE * terms)
    return scores.masked_fill(undefined, torch.nan)


@dataclass(frozen=True)
class CavityByRound:
    """Cavity scores of the weights alive at one round, grouped by their removal round.

    ``n_alive`` is N_W, the number of weights alive at the evaluated round. ``groups`` is one
    dict per removal round present among them, sorted by it: ``removed_at_round`` (-1 for
    weights never removed), ``count`` (weights in the group, NaN scores included) and
    ``mean``, the mean of N_W · score over the group's non-NaN scores (NaN if it has none).
    """

    n_alive: int
    groups: list[dict]


def cavity_by_removal_round(
    scores: torch.Tensor, removal_round: torch.Tensor, evaluated_at_round: int
) -> CavityByRound:
    """N_W · cavity averaged by removal round over the weights alive at ``evaluated_at_round``.

    As in :mod:`lotterylab.platform.imp.masks`, ``removal_round`` n means pruned at the end of round
    n and -1 never; round n trains under the mask after round n-1, so the weights evaluated at
    round n are those with removal round -1 or >= n. Paper 1, Fig. 5B (round 0) and 5C.
    NaN scores (weights that are exactly zero, see :func:`cavity_scores`) are counted in
    ``count`` and in N_W but left out of the group means.
    """
    if scores.shape != removal_round.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and removal_round {tuple(removal_round.shape)} "
            "must have the same shape"
        )
    if removal_round.is_floating_point() or removal_round.is_complex():
        raise ValueError(f"removal_round must be an integer tensor, got {removal_round.dtype}")
    if isinstance(evaluated_at_round, bool) or not isinstance(evaluated_at_round, int):
        raise ValueError(f"evaluated_at_round must be an integer, got {evaluated_at_round!r}")
    if evaluated_at_round < 0:
        raise ValueError(f"evaluated_at_round must be >= 0, got {evaluated_at_round}")
    rr = removal_round.reshape(-1).to(device=scores.device, dtype=torch.int64)
    if bool((rr < ALIVE).any()):
        raise ValueError(
            f"removal_round values must be {ALIVE} (never removed) or >= 0, got {int(rr.min())}"
        )
    values = scores.reshape(-1).to(torch.float64)
    alive = (rr == ALIVE) | (rr >= evaluated_at_round)
    rr, values = rr[alive], values[alive]
    n_alive = len(rr)
    slot = rr + 1  # -1 → 0 so that bincount can index it
    counts = torch.bincount(slot)
    finite = ~values.isnan()
    finite_counts = torch.bincount(slot, weights=finite.to(torch.float64), minlength=len(counts))
    sums = torch.bincount(slot, weights=torch.where(finite, values, 0.0), minlength=len(counts))
    means = n_alive * sums / finite_counts  # 0/0 = NaN for a group of NaN scores only
    present = counts.nonzero().reshape(-1).tolist()
    counts, means = counts.tolist(), means.tolist()
    groups = [
        {"removed_at_round": s - 1, "mean": float(means[s]), "count": int(counts[s])}
        for s in present
    ]
    return CavityByRound(n_alive=n_alive, groups=groups)
