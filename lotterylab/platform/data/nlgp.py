"""NLGP images and their analytic Gaussian clone (Ingrosso & Goldt 2022).

Class k is a Gaussian field with correlation length ``xi[k]`` pushed through ``erf(g z / sqrt 2)``:
large gain ``g`` gives sharp-edged, strongly non-Gaussian images, ``g -> 0`` Gaussian ones. The
clone has exactly the same mean (0) and covariance but is Gaussian, so comparing the two isolates
what a network learns from higher-order statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.schema import NAME_PATTERN, Strict


def nlgp_gain_gamma(gain: float) -> float:
    """``E[erf(g z / sqrt 2)^2]`` for z ~ N(0, 1); dividing erf by its root gives variance 1."""
    _check_gain(gain)
    return (2.0 / math.pi) * math.asin(gain**2 / (1.0 + gain**2))


def sample_nlgp(
    n: int, grid: int, channels: int, xi: Sequence[float], gain: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` balanced, shuffled NLGP images ``(n, channels * grid**2)`` float32 and labels."""
    xi = _check_args(grid, channels, xi, gain)
    _check_count("n", n, len(xi))
    roots = torch.stack([_psd_sqrt(_field_correlation_1d(grid, x)) for x in xi]).float()
    counts = _class_counts(n, len(xi))
    noise = torch.randn(n, channels, grid, grid, generator=generator)
    fields = torch.cat([r @ z @ r for z, r in zip(noise.split(counts), roots, strict=True)])
    x = torch.erf(fields * (gain / math.sqrt(2.0))) / math.sqrt(nlgp_gain_gamma(gain))
    return _shuffled(x.reshape(n, -1), counts, generator)


def nlgp_covariance(grid: int, xi: float, gain: float) -> torch.Tensor:
    """Exact pixel covariance ``(grid**2, grid**2)`` float64 of one NLGP channel (unit diagonal)."""
    _check_args(grid, 1, [xi], gain)
    c1 = _field_correlation_1d(grid, xi)
    rho = torch.kron(c1, c1)
    scale = gain**2 / (1.0 + gain**2)
    return (2.0 / math.pi) * torch.asin(rho * scale) / nlgp_gain_gamma(gain)


def sample_nlgp_clone(
    n: int, grid: int, channels: int, xi: Sequence[float], gain: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` balanced, shuffled Gaussian images with the NLGP's exact per-class covariance."""
    xi = _check_args(grid, channels, xi, gain)
    _check_count("n", n, len(xi))
    roots = torch.stack([_psd_sqrt(nlgp_covariance(grid, x, gain)) for x in xi]).float()
    counts = _class_counts(n, len(xi))
    noise = torch.randn(n, channels, grid * grid, generator=generator)
    x = torch.cat([z @ r for z, r in zip(noise.split(counts), roots, strict=True)])
    return _shuffled(x.reshape(n, -1), counts, generator)


class NLGPData(Strict):
    """Ingrosso & Goldt's non-linear Gaussian process images, one correlation length per class."""

    type: Literal["nlgp"] = Field(description="data source name in the registry")
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(description="data set name")
    grid: Annotated[int, Field(ge=2, le=256)] = Field(16, description="image side Np (pixels)")
    channels: Annotated[int, Field(ge=1, le=16)] = Field(1, description="image channels")
    xi: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2)] = Field(
        description="correlation length of each class (pixels); one class per entry"
    )
    gain: Annotated[float, Field(gt=0)] = Field(3.0, description="gain g of the erf")
    n_train: Annotated[int, Field(ge=2)] = Field(8000, description="training images")
    n_test: Annotated[int, Field(ge=2)] = Field(2000, description="test images")
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="after")
    def _one_of_each_class(self) -> NLGPData:
        classes = len(self.xi)
        for split in ("n_train", "n_test"):
            n = getattr(self, split)
            if n < classes:
                raise ValueError(
                    f"{split}: {n} images cannot hold one of each of the {classes} classes "
                    f"(one per entry of xi); make it at least {classes}"
                )
        return self

    def generator_args(self) -> dict:
        return dict(
            grid=self.grid,
            channels=self.channels,
            xi=list(self.xi),
            gain=self.gain,
            n_train=self.n_train,
            n_test=self.n_test,
        )


def build_nlgp(spec: NLGPData, context) -> ImageDataset:
    return make_nlgp(**spec.generator_args(), seed=spec.seed, name=spec.name)


def make_nlgp(
    grid: int,
    channels: int,
    xi: Sequence[float],
    gain: float,
    n_train: int,
    n_test: int,
    seed: int,
    name: str = "nlgp",
) -> ImageDataset:
    """NLGP train and test sets drawn (train first) from one generator seeded with ``seed``."""
    return _make(sample_nlgp, grid, channels, xi, gain, n_train, n_test, seed, name)


def make_nlgp_clone(
    grid: int,
    channels: int,
    xi: Sequence[float],
    gain: float,
    n_train: int,
    n_test: int,
    seed: int,
    name: str = "nlgp_clone",
) -> ImageDataset:
    """Analytic Gaussian clone of :func:`make_nlgp` with the same arguments."""
    return _make(sample_nlgp_clone, grid, channels, xi, gain, n_train, n_test, seed, name)


def _make(
    sampler: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    grid: int,
    channels: int,
    xi: Sequence[float],
    gain: float,
    n_train: int,
    n_test: int,
    seed: int,
    name: str,
) -> ImageDataset:
    xi = _check_args(grid, channels, xi, gain)
    _check_count("n_train", n_train, len(xi))
    _check_count("n_test", n_test, len(xi))
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = sampler(n_train, grid, channels, xi, gain, generator)
    test_x, test_y = sampler(n_test, grid, channels, xi, gain, generator)
    return ImageDataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        image_shape=(channels, grid, grid),
        num_classes=len(xi),
    )


def _field_correlation_1d(grid: int, xi: float) -> torch.Tensor:
    """``C1[i, j] = exp(-(i - j)^2 / xi^2)`` float64; the 2-D field correlation is ``C1 (x) C1``."""
    idx = torch.arange(grid, dtype=torch.float64)
    return torch.exp(-((idx[:, None] - idx[None, :]) ** 2) / xi**2)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix, with round-off negative eigenvalues clamped to 0."""
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    return (eigvecs * eigvals.clamp(min=0.0).sqrt()) @ eigvecs.T


def _class_counts(n: int, num_classes: int) -> list[int]:
    """Round-robin class sizes: the first ``n % K`` classes get one extra sample."""
    return [n // num_classes + (k < n % num_classes) for k in range(num_classes)]


def _shuffled(
    x: torch.Tensor, counts: list[int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attach class-sorted labels to class-sorted rows of ``x``, then shuffle both together."""
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    perm = torch.randperm(x.shape[0], generator=generator)
    return x[perm].contiguous(), y[perm]


def _check_args(grid: int, channels: int, xi: Sequence[float], gain: float) -> list[float]:
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an int >= 2, got {grid!r}")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an int >= 1, got {channels!r}")
    if isinstance(xi, str) or not hasattr(xi, "__iter__"):
        raise ValueError(f"xi must be a sequence of correlation lengths, got {xi!r}")
    xi = [float(x) for x in xi]
    if not xi or not all(math.isfinite(x) and x > 0 for x in xi):
        raise ValueError(f"xi must be a non-empty sequence of finite positive floats, got {xi!r}")
    _check_gain(gain)
    return xi


def _check_gain(gain: float) -> None:
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be a finite float > 0, got {gain!r}")


def _check_count(name: str, n: int, num_classes: int) -> None:
    if not isinstance(n, int) or n < num_classes:
        raise ValueError(
            f"{name} must be an int >= the number of classes ({num_classes}), got {n!r}"
        )
