"""Gaussian clone of any labelled image set: same per-class, per-channel mean and covariance.

Training on the clone instead of the source tells how much a network relies on statistics beyond
second order. The fit streams (batch by batch, float64 sums) so large sets such as ImageNet32 fit
without holding all images at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.schema import NAME_PATTERN, Strict

FIT_CHUNK = 4096


class GaussianCloneData(Strict):
    """Same per-class, per-channel mean and covariance as another data set of the spec."""

    type: Literal["gaussian_clone"] = Field(description="data source name in the registry")
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(description="data set name")
    of: str = Field(description="name of the data set of this spec to clone")
    seed: int = Field(1, description="sampling seed")


class GaussianCloneFit:
    """Streaming accumulator of per-(class, channel) count, sum and sum of outer products."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        shape = tuple(image_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(
                f"image_shape must be three positive ints (C, Np, Np), got {image_shape!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        channels, height, width = shape
        pixels = height * width
        self.image_shape = shape
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, dtype=torch.int64)
        self.sums = torch.zeros(num_classes, channels, pixels, dtype=torch.float64)
        self.outer_sums = torch.zeros(num_classes, channels, pixels, pixels, dtype=torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of flattened images ``x`` (B, C*Np*Np) with labels ``y`` (B,)."""
        _, channels, pixels = self.sums.shape
        if x.ndim != 2 or x.shape[1] != channels * pixels or not x.is_floating_point():
            raise ValueError(
                f"x must be a float tensor of shape (B, {channels * pixels}), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
            raise ValueError(
                f"y must be an integer tensor of shape ({x.shape[0]},), "
                f"got {y.dtype} of shape {tuple(y.shape)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"y must lie in [0, {self.num_classes}), got range [{int(y.min())}, {int(y.max())}]"
            )
        y = y.long()
        images = x.detach().to(torch.float64).reshape(-1, channels, pixels)
        self.counts += torch.bincount(y, minlength=self.num_classes)
        self.sums.index_add_(0, y, images)
        order = torch.argsort(y, stable=True)
        classes, sizes = torch.unique_consecutive(y[order], return_counts=True)
        for k, block in zip(classes.tolist(), images[order].split(sizes.tolist()), strict=True):
            per_channel = block.transpose(0, 1)  # (C, B_k, Np^2)
            self.outer_sums[k] += per_channel.mT @ per_channel

    def finalize(self, ridge: float = 1e-3) -> GaussianCloneModel:
        """Means and unbiased covariances plus ``ridge * I``; every class needs >= 2 images."""
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        if int(self.counts.min()) < 2:
            few = torch.nonzero(self.counts < 2).flatten().tolist()
            raise ValueError(f"every class needs >= 2 images to fit, classes {few} have fewer")
        n = self.counts.to(torch.float64)[:, None, None]
        means = self.sums / n
        outer_means = means[..., :, None] * means[..., None, :]
        covariances = (self.outer_sums - n[..., None] * outer_means) / (n[..., None] - 1.0)
        covariances = covariances + ridge * torch.eye(means.shape[-1], dtype=torch.float64)
        return GaussianCloneModel(self.image_shape, means, covariances)


@dataclass(frozen=True)
class GaussianCloneModel:
    """Per-class, per-channel Gaussians: ``means`` (K, C, Np²), ``covariances`` (K, C, Np², Np²)."""

    image_shape: tuple[int, int, int]
    means: torch.Tensor
    covariances: torch.Tensor

    def sample(
        self, counts_per_class: torch.Tensor | Sequence[int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``counts_per_class[k]`` images of class k; returns shuffled float32 x, int64 y."""
        num_classes, channels, pixels = self.means.shape
        counts = torch.as_tensor(counts_per_class).flatten()
        if counts.shape[0] != num_classes or counts.is_floating_point() or int(counts.min()) < 0:
            raise ValueError(
                f"counts_per_class must be {num_classes} non-negative ints, "
                f"got {counts_per_class!r}"
            )
        blocks = []
        for k, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            chol = torch.linalg.cholesky(self.covariances[k])  # (C, Np², Np²), batched over C
            noise = torch.randn(channels, count, pixels, generator=generator, dtype=torch.float64)
            images = noise @ chol.mT + self.means[k][:, None, :]
            blocks.append(images.transpose(0, 1).reshape(count, channels * pixels))
        x = torch.cat(blocks).to(torch.float32) if blocks else torch.empty(0, channels * pixels)
        y = torch.repeat_interleave(torch.arange(num_classes), counts.long())
        perm = torch.randperm(x.shape[0], generator=generator)
        return x[perm], y[perm]


def gaussian_clone(dataset: ImageDataset, seed: int, name: str | None = None) -> ImageDataset:
    """Fit on ``dataset``'s train split; sample train and test with the source's class counts."""
    if dataset.train_y.ndim != 1:
        raise ValueError(
            f"a Gaussian clone needs one class label per image; {dataset.name!r} has label maps"
        )
    fit = GaussianCloneFit(dataset.image_shape, dataset.num_classes)
    for index in torch.arange(dataset.size("train")).split(FIT_CHUNK):
        fit.update(dataset.batch("train", index), dataset.train_y[index])
    model = fit.finalize()
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = model.sample(
        torch.bincount(dataset.train_y, minlength=dataset.num_classes), generator
    )
    test_x, test_y = model.sample(
        torch.bincount(dataset.test_y, minlength=dataset.num_classes), generator
    )
    return ImageDataset(
        name=name if name is not None else f"{dataset.name}_gaussian_clone",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        image_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
    )
