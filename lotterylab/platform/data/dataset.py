"""The in-memory labelled image set every data source produces.

One container for NLGP, its Gaussian clones and real images, so trainers never care where the
data came from. Images are flattened in CIFAR layout: index ``c * Np**2 + y * Np + x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageDataset:
    """Train and test splits of flattened float32 images with int64 labels in ``[0, K)``."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, int, int]
    num_classes: int

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(
                f"image_shape must be three positive ints (C, Np, Np), got {self.image_shape!r}"
            )
        object.__setattr__(self, "image_shape", shape)
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        for split in ("train", "test"):
            self._check_split(split)

    @property
    def input_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def _check_split(self, split: str) -> None:
        x_name, y_name = f"{split}_x", f"{split}_y"
        x, y = getattr(self, x_name), getattr(self, y_name)
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 2:
            raise ValueError(f"{x_name} must be a 2-D float32 tensor, got {_describe(x)}")
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"{x_name} must have {self.input_dim} columns for image_shape "
                f"{self.image_shape}, got shape {tuple(x.shape)}"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
            raise ValueError(f"{y_name} must be a 1-D int64 tensor, got {_describe(y)}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{y_name} must have one label per row of {x_name} ({x.shape[0]}), got {y.shape[0]}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"{y_name} must lie in [0, {self.num_classes}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
