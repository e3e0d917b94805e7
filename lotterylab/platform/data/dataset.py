"""The labelled image set every data source produces.

One container for NLGP, its Gaussian clones and real images, so trainers never care where the
data came from. Images are flattened in CIFAR layout: index ``c * Np**2 + y * Np + x``.
Synthetic sets hold float32 rows; real sets hold their uint8 pixels, memory-mapped from a
cache file, and preprocess each batch as it is drawn, so a 3.9 GB set is never copied.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

SPLITS = ("train", "test")
IGNORE_LABEL = 255  # label-map pixels without a class


@dataclass(frozen=True)
class ImageDataset:
    """Train and test splits of flattened images (float32, or uint8 with a preprocessing) and
    int64 labels in ``[0, K)``: one per image, or one per pixel (``IGNORE_LABEL`` = no class)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, int, int]
    num_classes: int
    pixel_mean: torch.Tensor | None = None  # uint8 storage: batch = (x - mean) / scale
    pixel_scale: torch.Tensor | None = None
    files: dict[str, str] | None = None  # field name -> memory-mapped .npy file behind it

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

    def size(self, split: str) -> int:
        return len(getattr(self, f"{_split(split)}_y"))

    def batch(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Preprocessed float32 rows ``index`` of a split."""
        x = getattr(self, f"{_split(split)}_x")
        if x.dtype == torch.float32:
            return x[index]
        rows = torch.from_numpy(x.numpy()[index.numpy()])  # reads only these rows of a memmap
        return (rows.float() - self.pixel_mean) / self.pixel_scale

    def features(self, split: str) -> torch.Tensor:
        """Every preprocessed row of a split (small sets and fits only)."""
        return self.batch(split, torch.arange(self.size(split)))

    def __reduce__(self):
        """Cache-backed sets travel as their file paths and reopen the maps where unpickled."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in self.files or {}:
            del state[name]
        return (_reopen, (state,))

    def _check_split(self, split: str) -> None:
        x_name, y_name = f"{split}_x", f"{split}_y"
        x, y = getattr(self, x_name), getattr(self, y_name)
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"{x_name} must be a float32 or uint8 tensor, got {_describe(x)}")
        if x.ndim != 2:
            raise ValueError(f"{x_name} must be 2-D (images, pixels), got {_describe(x)}")
        if x.dtype == torch.uint8 and (self.pixel_mean is None or self.pixel_scale is None):
            raise ValueError(f"{x_name} holds uint8 pixels: pixel_mean and pixel_scale are needed")
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"{x_name} must have {self.input_dim} columns for image_shape "
                f"{self.image_shape}, got shape {tuple(x.shape)}"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim not in (1, 3):
            raise ValueError(
                f"{y_name} must be an int64 tensor of class labels (N,) or label maps (N, H, W), "
                f"got {_describe(y)}"
            )
        if y.ndim == 3 and tuple(y.shape[1:]) != self.image_shape[1:]:
            raise ValueError(
                f"{y_name} label maps must be {self.image_shape[1:]} like the images, "
                f"got {tuple(y.shape[1:])}"
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{y_name} must have one label per row of {x_name} ({x.shape[0]}), got {y.shape[0]}"
            )
        labelled = y[y != IGNORE_LABEL] if y.ndim == 3 else y
        if labelled.numel() and (
            int(labelled.min()) < 0 or int(labelled.max()) >= self.num_classes
        ):
            y = labelled
            raise ValueError(
                f"{y_name} must lie in [0, {self.num_classes}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _reopen(state: dict) -> ImageDataset:
    arrays = {}
    for name, path in (state["files"] or {}).items():
        try:
            arrays[name] = torch.from_numpy(np.load(path, mmap_mode="c"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"data cache {path} of data set {state['name']!r} is missing on this node: "
                "build the data set here (or put the cache on a shared path)"
            ) from None
    return ImageDataset(**state, **arrays)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
