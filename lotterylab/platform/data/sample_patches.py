"""Natural image patches without a download: the two photos scikit-learn ships.

PCA and ICA of natural patches (paper 1, Fig. 2) need real images; when no ImageNet32 is at
hand, patches cut from ``china.jpg`` and ``flower.jpg`` give the same Gabor-like components.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_sample_images

LUMINANCE = np.array([0.299, 0.587, 0.114])


def sample_image_patches(
    size: int, count: int, seed: int, channels: int = 1
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``count`` random ``size``×``size`` patches, values in [0, 1], rows flattened CHW."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    images = [np.asarray(image, dtype=np.float32) / 255.0 for image in load_sample_images().images]
    if channels == 1:
        images = [(image @ LUMINANCE.astype(np.float32))[..., None] for image in images]
    smallest = min(min(image.shape[:2]) for image in images)
    if not 1 <= size <= smallest:
        raise ValueError(f"patch size must be in [1, {smallest}], got {size}")
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(images), count)
    patches = np.empty((count, channels, size, size), dtype=np.float32)
    offsets = np.arange(size)
    for k, image in enumerate(images):  # one vectorised gather per photo
        rows = np.flatnonzero(which == k)
        top = rng.integers(0, image.shape[0] - size + 1, len(rows))
        left = rng.integers(0, image.shape[1] - size + 1, len(rows))
        ys = (top[:, None] + offsets)[:, :, None]
        xs = (left[:, None] + offsets)[:, None, :]
        patches[rows] = image[ys, xs].transpose(0, 3, 1, 2)
    return torch.from_numpy(patches.reshape(count, -1)), (channels, size, size)
