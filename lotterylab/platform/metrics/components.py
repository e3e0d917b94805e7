"""PCA and ICA components of image patches, as image filters (paper 1, Fig. 2).

PCA sees only the covariance of the images, so its components are spread-out oscillations;
ICA looks for projections λ = W x as non-Gaussian as possible, and its filters come out local,
Gabor-like. Both use scikit-learn, as the paper did (``PCA``, ``FastICA``, 64 components).
"""

from __future__ import annotations

import numpy as np
import torch

ICA_MAX_ITER = 1000


def image_components(
    patches: torch.Tensor, n_components: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA and ICA filters of ``patches`` (N, D), each (n_components, D) float32.

    Patches with more dimensions are flattened per sample. PCA rows are the principal axes,
    orthonormal, by decreasing variance, signs as scikit-learn fixes them. ICA rows are the
    rows of FastICA's unmixing matrix (``whiten="unit-variance"``), the filters W whose
    projections W x are the independent components, scaled to unit length with their largest
    entry made positive: the same convention whatever the sign and scale FastICA returns.
    Deterministic for a given ``seed``.
    """
    if patches.dim() < 2 or len(patches) < 2:
        raise ValueError(
            f"patches must be (N, D) with N >= 2 samples, got shape {tuple(patches.shape)}"
        )
    x = patches.detach().reshape(len(patches), -1).to("cpu", torch.float64).numpy()
    limit = min(x.shape)
    if isinstance(n_components, bool) or not isinstance(n_components, int):
        raise ValueError(f"n_components must be an integer, got {n_components!r}")
    if not 1 <= n_components <= limit:
        raise ValueError(
            f"n_components must be in [1, min(N, D)] = [1, {limit}] for patches of shape "
            f"{tuple(x.shape)}, got {n_components}"
        )
    from sklearn.decomposition import PCA, FastICA  # heavy: imported only when used

    pca = PCA(n_components=n_components, random_state=seed).fit(x).components_
    ica = FastICA(
        n_components=n_components,
        whiten="unit-variance",
        max_iter=ICA_MAX_ITER,
        random_state=seed,
    ).fit(x)
    filters = ica.components_ / np.linalg.norm(ica.components_, axis=1, keepdims=True)
    peak = np.abs(filters).argmax(axis=1)
    filters *= np.sign(filters[np.arange(len(filters)), peak])[:, None]
    return torch.from_numpy(pca).float(), torch.from_numpy(filters).float()
