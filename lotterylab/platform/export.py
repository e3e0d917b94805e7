"""Pruned models in layouts other code loads: ``torch.nn.utils.prune``'s own, or plain dense.

``torch_prune`` is the state dict a model has after ``prune.identity(module, "weight")`` on each
pruned tensor: ``<name>_orig`` (the weights) and ``<name>_mask`` (the mask, in the weights'
dtype) in place of ``<name>``, every other entry as it is. ``dense`` is the model's own state
dict with the pruned weights zero. Both hold tensors only, so ``torch.load(weights_only=True)``
reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import prune

EXPORT_FORMATS = ("torch_prune", "dense")

__all__ = ["EXPORT_FORMATS", "export_state", "prune_identity"]


def export_state(
    model: nn.Module, masks: Mapping[str, torch.Tensor], format: str = "torch_prune"
) -> dict[str, torch.Tensor]:
    """The masked model's state in ``format`` (see the module docstring)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"export format {format!r} is not one of {list(EXPORT_FORMATS)}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise ValueError(f"masks name {unknown}, which the model's state does not hold")
    for name, mask in masks.items():
        weight = state.pop(name)
        mask = mask.to(weight.dtype).cpu()
        if format == "dense":
            state[name] = weight * mask
        else:
            state[f"{name}_orig"] = weight * mask
            state[f"{name}_mask"] = mask
    return state


def prune_identity(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """``prune.identity`` on each named parameter: the model then loads a ``torch_prune`` state."""
    for name in names:
        prefix, _, attr = name.rpartition(".")
        prune.identity(model.get_submodule(prefix) if prefix else model, attr)
    return model
