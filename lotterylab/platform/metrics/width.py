"""Layer width of a mask: how many output units still receive at least one weight.

A linear unit or a conv output channel (its kernel) is active while one incoming weight
survives; a layer with no active unit has collapsed and cuts every path through the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerWidths:
    active_units: dict[str, int]  # output units with >= 1 surviving incoming weight
    total_units: dict[str, int]  # output units of the layer (rows / output channels)
    layer_density: dict[str, float]  # surviving fraction of the layer's weights
    density: float  # surviving fraction of all weights in the masks
    collapsed: bool  # some layer has no active unit

    def columns(self) -> dict:
        """The widths as the plain values of a table row."""
        return {
            "actual_density": float(self.density),
            "layer_density": {k: float(v) for k, v in self.layer_density.items()},
            "active_units": {k: int(v) for k, v in self.active_units.items()},
            "total_units": {k: int(v) for k, v in self.total_units.items()},
            "collapsed": bool(self.collapsed),
        }


def layer_widths(masks: Mapping[str, torch.Tensor]) -> LayerWidths:
    """Widths of every masked layer; the first dimension of each mask indexes output units."""
    if not masks:
        raise ValueError("masks must hold at least one layer; got an empty mapping")
    active, total, density = {}, {}, {}
    for name, mask in masks.items():
        if mask.dim() < 1:
            raise ValueError(f"mask {name!r} is a scalar; a layer mask needs an output dimension")
        rows = mask.reshape(mask.shape[0], -1).bool()
        active[name] = int(rows.any(1).sum())
        total[name] = int(mask.shape[0])
        density[name] = float(rows.sum()) / max(rows.numel(), 1)
    kept = sum(int(m.bool().sum()) for m in masks.values())
    size = sum(m.numel() for m in masks.values())
    return LayerWidths(
        active_units=active,
        total_units=total,
        layer_density=density,
        density=kept / size if size else 0.0,
        collapsed=any(a == 0 for a in active.values()),
    )
