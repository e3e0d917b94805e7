"""Checks and streamed input statistics shared by the first-layer activation measurements."""

from __future__ import annotations

import torch


def check_layer(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    chunk_size: int,
    bias: torch.Tensor | None = None,
) -> None:
    """Fail early, naming the argument, when ``weight`` (H, D) and ``inputs`` (N, D) don't fit."""
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (units H, inputs D), got {weight.dim()}-D shape "
            f"{tuple(weight.shape)}"
        )
    if inputs.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise ValueError(
            f"inputs must be (N, D) with D = {weight.shape[1]} inputs per unit as in weight "
            f"{tuple(weight.shape)}, got shape {tuple(inputs.shape)}"
        )
    if len(inputs) < 1:
        raise ValueError("inputs must hold at least one sample, got N = 0")
    if not (weight.is_floating_point() and inputs.is_floating_point()):
        raise ValueError(
            f"weight and inputs must be floating point, got {weight.dtype} and {inputs.dtype}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(
            f"bias must be (H,) = ({weight.shape[0]},) like weight's rows, got {tuple(bias.shape)}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def input_means(inputs: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and mean absolute value (D,) of ``inputs``, float64, streamed over chunks.

    The absolute means size the pre-activations' terms, against which a variance is judged
    zero up to rounding.
    """
    total = torch.zeros(inputs.shape[1], dtype=torch.float64, device=inputs.device)
    total_abs = torch.zeros_like(total)
    for chunk in inputs.split(chunk_size):
        x = chunk.to(torch.float64)
        total += x.sum(dim=0)
        total_abs += x.abs().sum(dim=0)
    return total / len(inputs), total_abs / len(inputs)


# a variance below (RESOLUTION * the size of the terms summed into λ)^2 is rounding, not signal
RESOLUTION = 1e-12


def kurtosis_from_moments(m2: torch.Tensor, m4: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """m4 / m2^2, NaN where m2 is zero up to rounding relative to ``scale``, the terms' size."""
    resolved = m2 > (RESOLUTION * scale).square()
    return torch.where(resolved, m4 / m2.square(), torch.nan)
