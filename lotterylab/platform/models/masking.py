"""Which tensors of a network are prunable, and installing masks on any network.

Works on every module made of standard Conv2d / Linear layers, so the registered models and a
user's own ``nn.Module`` are pruned the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (prefix, module)
        for prefix, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and module.weight is not None
    ]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def first_layer_name(model: nn.Module) -> str:
    """The weight of the first Conv2d / Linear layer (the one that sees the pixels)."""
    layers = _layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer")
    return _join(layers[0][0], "weight")


def output_layer_name(model: nn.Module) -> str:
    """The weight of the last Conv2d / Linear layer: the classifier."""
    layers = _layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer")
    return _join(layers[-1][0], "weight")


def prunable_names(
    model: nn.Module, prune_biases: bool = False, prune_output: bool = True
) -> list[str]:
    """Every convolution / Linear weight (and bias when ``prune_biases``), in module order: the
    one definition of what IMP and PaI may prune (stem, 1x1 shortcuts and classifier included).

    ``prune_output=False`` leaves the classifier dense, as paper 1 does for the FCN.
    """
    layers = _layers(model)
    if not prune_output:
        layers = layers[:-1]
    names = []
    for prefix, module in layers:
        names.append(_join(prefix, "weight"))
        if prune_biases and module.bias is not None:
            names.append(_join(prefix, "bias"))
    return names


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned stored weights; training keeps them at zero after every step."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(
            f"masks name {unknown}, which are not parameters of {type(model).__name__}; "
            f"allowed: {sorted(params)}"
        )
    with torch.no_grad():
        for name, mask in masks.items():
            if mask.shape != params[name].shape:
                raise ValueError(
                    f"mask for {name} has shape {tuple(mask.shape)}, "
                    f"the tensor has {tuple(params[name].shape)}"
                )
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
