"""Kurtosis of first-layer pre-activations, overall and per class (paper 1, eq. 4).

kurt(λ_i) = E[(λ_i − Eλ_i)^4] / E[(λ_i − Eλ_i)^2]^2 with λ = W x + b over the inputs x that the
first linear layer sees: 3 for a Gaussian, above 3 for peaked, heavy-tailed pre-activations,
below 3 for broad ones. This is the plain kurtosis, not the excess.

Inputs are streamed in chunks, twice: the first pass finds the means, the second accumulates
float64 moments of the exactly centred pre-activations, so no catastrophic cancellation of raw
moments creeps in and memory stays bounded by one chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lotterylab.platform.metrics._layer import check_layer, input_means, kurtosis_from_moments

KURTOSIS_CHUNK_SIZE = 4096


@dataclass(frozen=True)
class PreactivationKurtosis:
    """Kurtosis of every unit's pre-activation, float64; NaN where the variance is zero.

    ``overall`` (H,) is over all inputs; ``per_class`` (K, H) is over the inputs of each class
    (centred on that class's mean), or None when no labels were given.
    """

    overall: torch.Tensor
    per_class: torch.Tensor | None

    @property
    def mean(self) -> float:
        """Mean over units and classes of ``per_class`` (over units of ``overall`` without
        labels), NaN entries left out; NaN if every entry is NaN. Paper 1, Fig. 4B."""
        values = self.overall if self.per_class is None else self.per_class
        values = values[~values.isnan()]
        return float(values.mean()) if len(values) else math.nan


def preactivation_kurtosis(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    bias: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    chunk_size: int = KURTOSIS_CHUNK_SIZE,
) -> PreactivationKurtosis:
    """Kurtosis of λ = ``weight`` x + ``bias`` for ``weight`` (H, D) and ``inputs`` (N, D).

    Computed in float64 on the inputs' device. ``bias`` only shifts λ, which leaves every
    centred moment unchanged; it is checked and accepted so that a layer can be passed as it is.
    With ``labels`` (N,) in [0, ``num_classes``) (default: largest label + 1) the per-class
    kurtoses are returned too; a class without samples gets NaN. A variance counts as zero
    when its standard deviation is below 1e-12 of the typical size of the terms W_ij x_j summed
    into λ_i, which catches constant pre-activations blurred by rounding.
    """
    check_layer(weight, inputs, chunk_size, bias)
    device = inputs.device
    w = weight.detach().to(device=device, dtype=torch.float64)
    mean, mean_abs = input_means(inputs, chunk_size)
    if labels is None:
        s2, s4 = _centred_sums(w, inputs, mean, chunk_size)
        n = torch.tensor(float(len(inputs)), dtype=torch.float64, device=device)
        overall = kurtosis_from_moments(s2 / n, s4 / n, mean_abs @ w.abs().T)
        return PreactivationKurtosis(overall=overall, per_class=None)

    labels, k = _check_labels(labels, num_classes, len(inputs), device)
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    class_mean = torch.zeros(k, w.shape[1], dtype=torch.float64, device=device)
    class_abs = torch.zeros_like(class_mean)
    for chunk, y in zip(inputs.split(chunk_size), labels.split(chunk_size), strict=True):
        x = chunk.to(torch.float64)
        class_mean.index_add_(0, y, x)
        class_abs.index_add_(0, y, x.abs())
    class_mean /= counts.clamp_min(1.0)[:, None]
    class_abs /= counts.clamp_min(1.0)[:, None]

    h = w.shape[0]
    s2 = torch.zeros(h, dtype=torch.float64, device=device)
    s4 = torch.zeros_like(s2)
    s2k = torch.zeros(k, h, dtype=torch.float64, device=device)
    s4k = torch.zeros_like(s2k)
    for chunk, y in zip(inputs.split(chunk_size), labels.split(chunk_size), strict=True):
        x = chunk.to(torch.float64)
        # one matmul for both centrings: on the overall mean and on each sample's class mean
        c, ck = (torch.cat([x - mean, x - class_mean[y]]) @ w.T).split(len(x))
        c2, ck2 = c.square(), ck.square()
        s2 += c2.sum(dim=0)
        s4 += c2.square().sum(dim=0)
        s2k.index_add_(0, y, ck2)
        s4k.index_add_(0, y, ck2.square())
    overall = kurtosis_from_moments(s2 / len(inputs), s4 / len(inputs), mean_abs @ w.abs().T)
    n_k = counts[:, None]
    # a class without samples gives 0/0 = NaN
    per_class = kurtosis_from_moments(s2k / n_k, s4k / n_k, class_abs @ w.abs().T)
    return PreactivationKurtosis(overall=overall, per_class=per_class)


def _centred_sums(
    w: torch.Tensor, inputs: torch.Tensor, mean: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    s2 = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    s4 = torch.zeros_like(s2)
    for chunk in inputs.split(chunk_size):
        c2 = ((chunk.to(torch.float64) - mean) @ w.T).square()
        s2 += c2.sum(dim=0)
        s4 += c2.square().sum(dim=0)
    return s2, s4


def _check_labels(
    labels: torch.Tensor, num_classes: int | None, n: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be an integer tensor (N,) = ({n},) like inputs' rows, got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    labels = labels.to(device=device, dtype=torch.int64)
    lowest, highest = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = highest + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if lowest < 0 or highest >= num_classes:
        raise ValueError(
            f"labels must lie in [0, num_classes) = [0, {num_classes}), got values from "
            f"{lowest} to {highest}"
        )
    return labels, num_classes
