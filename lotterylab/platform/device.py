"""Where a trial computes: the one place that chooses between CUDA and the CPU.

A trial runs on CUDA only when it reserved a GPU share and one is visible; everything else,
tests and CI included, stays on the CPU, whose results are bit-reproducible.
"""

from __future__ import annotations

import torch


def trial_device(gpu_share: float) -> torch.device:
    """CUDA when ``gpu_share`` > 0 and a GPU is visible to this process, else the CPU."""
    if gpu_share > 0 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
