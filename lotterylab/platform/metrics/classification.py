"""Classification accuracy of predicted logits."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax of ``logits`` (N, K) equals ``labels`` (N,)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(
            f"logits must be (N, K) and labels (N,) with N > 0, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    return float((logits.argmax(dim=1) == labels).double().mean())
