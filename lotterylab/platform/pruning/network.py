"""One private copy of a network, run functionally under substituted weights.

Every scorer works on a ``ScoringNet``: the model is copied once, and each forward pass hands
``torch.func.functional_call`` the tensors it should use (masked weights, random weights,
squared or unit weights), so no scorer ever writes into a module. Path-based methods (SynFlow,
SynFlow-L2, PX) run a *path network*: batch norm in eval mode folded into one per-channel
scale and shift, transformed like the weights, so that the network computes sums over paths.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
RELUS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})

Batch = tuple[torch.Tensor, torch.Tensor]


def prunable_names(model: nn.Module) -> list[str]:
    """Weights of every Conv and Linear layer (stem, 1x1 shortcuts and classifier included)."""
    return [
        f"{prefix}.weight" if prefix else "weight"
        for prefix, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and module.weight is not None
    ]


def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def main_output(out: object) -> torch.Tensor:
    """The prediction tensor of a forward pass (``out`` of a segmentation model's dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "out" in out:
        return out["out"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the model returned {type(out).__name__}; scoring needs a tensor, a dict with 'out', "
        "or a tuple whose first item is the prediction"
    )


class ScoringNet:
    """A frozen copy of ``model``; scorers call it with the tensors to substitute."""

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.names = prunable_names(self.module)
        if not self.names:
            raise ValueError(f"model {type(model).__name__} has no Conv or Linear weight to prune")
        self.params = {n: p.detach() for n, p in self.module.named_parameters()}
        self.buffers = {n: b.detach() for n, b in self.module.named_buffers()}
        first = self.params[self.names[0]]
        self.device, self.dtype = first.device, first.dtype
        self.norms = {
            prefix: m
            for prefix, m in self.module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        }
        self.layers = {
            join_name(prefix, "weight"): m
            for prefix, m in self.module.named_modules()
            if isinstance(m, PRUNABLE_LAYERS) and m.weight is not None
        }
        self.biases = [
            join_name(prefix, "bias")
            for prefix, m in self.module.named_modules()
            if isinstance(m, PRUNABLE_LAYERS) and m.bias is not None
        ]

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: self.params[n] for n in self.names}

    def masked(
        self, masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        weights = self.weights() if weights is None else weights
        return {n: weights[n] * masks[n].to(weights[n].dtype) for n in self.names}

    def output_layer(self, name: str | None = None) -> str:
        """The classifier's weight: ``name`` if given, else the last Conv/Linear registered."""
        if name is None:
            return self.names[-1]
        if name not in self.layers:
            raise ValueError(
                f"output_layer {name!r} is not a prunable weight; allowed: {self.names}"
            )
        return name

    def __call__(
        self,
        x: torch.Tensor,
        state: Mapping[str, torch.Tensor] | None = None,
        *,
        train: bool = False,
    ) -> torch.Tensor:
        """Forward pass with ``state`` substituted; batch norm in train mode updates copies."""
        state = dict(state or {})
        if train:
            for name, b in self.buffers.items():
                state[name] = state.get(name, b).clone()
        self.module.train(train)
        return main_output(functional_call(self.module, state, (x,), strict=False))

    def running_stats(self, x: torch.Tensor, state: Mapping[str, torch.Tensor]) -> dict:
        """Batch-norm buffers holding the batch statistics of ``x`` (fresh, momentum 1)."""
        fresh = dict(state)
        saved = {}
        for prefix, bn in self.norms.items():
            if bn.running_mean is None:
                continue
            fresh[join_name(prefix, "running_mean")] = torch.zeros_like(bn.running_mean)
            fresh[join_name(prefix, "running_var")] = torch.ones_like(bn.running_var)
            fresh[join_name(prefix, "num_batches_tracked")] = torch.zeros_like(
                bn.num_batches_tracked
            )
            saved[prefix] = bn.momentum
            bn.momentum = 1.0
        try:
            self.module.train(True)
            with torch.no_grad():
                functional_call(self.module, fresh, (x,), strict=False)
        finally:
            for prefix, momentum in saved.items():
                self.norms[prefix].momentum = momentum
        return {
            name: fresh[name]
            for prefix in saved
            for name in (join_name(prefix, "running_mean"), join_name(prefix, "running_var"))
        }

    def path_state(
        self,
        kind: str,
        weights: Mapping[str, torch.Tensor],
        dtype: torch.dtype = torch.float64,
    ) -> dict[str, torch.Tensor]:
        """All tensors for a path network, in ``dtype``, with ``weights`` for the prunable ones.

        ``kind`` says what becomes of the other weights on a path: ``abs`` (SynFlow) and
        ``square`` (SynFlow-L2, PX's parameter side) transform the biases and each batch norm's
        eval-mode scale and shift; ``unit`` (PX's data side) sets the scales to one and the
        biases and shifts to zero, leaving pure path sums.
        """
        transform: Callable[[torch.Tensor], torch.Tensor] = {
            "abs": torch.abs,
            "square": torch.square,
            "unit": torch.ones_like,
        }[kind]
        state = {
            n: t.to(dtype) if t.is_floating_point() else t
            for n, t in {**self.params, **self.buffers}.items()
        }
        for name in self.biases:
            state[name] = (
                torch.zeros_like(state[name]) if kind == "unit" else transform(state[name])
            )
        for prefix, bn in self.norms.items():
            state.update(self._folded_norm(prefix, bn, state, kind, transform))
        state.update({n: w.to(dtype) for n, w in weights.items()})
        return state

    @staticmethod
    def _folded_norm(prefix, bn, state, kind, transform) -> dict[str, torch.Tensor]:
        if bn.running_mean is None:
            raise ValueError(
                f"batch norm {prefix!r} keeps no running statistics (track_running_stats=False); "
                "path-based methods need its eval-mode scale and shift"
            )
        mean = state[join_name(prefix, "running_mean")]
        var = state[join_name(prefix, "running_var")]
        gamma = state[join_name(prefix, "weight")] if bn.affine else torch.ones_like(mean)
        beta = state[join_name(prefix, "bias")] if bn.affine else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        shift = beta - mean * scale
        scale = transform(scale)
        shift = torch.zeros_like(shift) if kind == "unit" else transform(shift)
        if bn.affine:
            return {
                join_name(prefix, "weight"): scale * math.sqrt(1.0 + bn.eps),
                join_name(prefix, "bias"): shift,
                join_name(prefix, "running_mean"): torch.zeros_like(mean),
                join_name(prefix, "running_var"): torch.ones_like(var),
            }
        new_var = 1.0 / scale.square() - bn.eps
        if not bool((new_var > 0).all()):
            raise ValueError(
                f"batch norm {prefix!r} (affine=False) has a scale that a non-affine module "
                "cannot express in a path network"
            )
        return {
            join_name(prefix, "running_mean"): -shift / scale,
            join_name(prefix, "running_var"): new_var,
        }


class Relus(TorchFunctionMode):
    """Overrides every ReLU call (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not).

    ``record``: run ReLU and keep its on/off pattern; ``replay``: multiply by the patterns
    recorded on another network, in call order; ``linear``: identity.
    """

    def __init__(self, how: str, gates: list[torch.Tensor] | None = None):
        super().__init__()
        self.how = how
        self.gates = [] if gates is None else gates
        self.index = 0
        self.peak = 0.0  # largest |input| seen by a linear ReLU: a bound on the activations

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in RELUS:
            return func(*args, **kwargs)
        x = args[0]
        if self.how == "linear":
            self.peak = max(self.peak, float(x.detach().abs().max()))
            return x
        if self.how == "record":
            self.gates.append(x > 0)
            return func(*args, **kwargs)
        if self.index >= len(self.gates) or self.gates[self.index].shape != x.shape:
            raise RuntimeError(
                f"ReLU call {self.index} of the replayed network does not match the recorded "
                f"pattern ({len(self.gates)} calls recorded)"
            )
        gate = self.gates[self.index]
        self.index += 1
        return x * gate.to(x.dtype)


def path_gradients(
    net: ScoringNet,
    kind: str,
    leaves: Mapping[str, torch.Tensor],
    sample_shape: Sequence[int],
    output_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """dR/d(leaves) for R = sum of the outputs of the path network on an all-ones input.

    ``leaves`` (float64, requires_grad) stand in for the prunable weights; activations are
    linear; ``output_weights`` weights each output entry (PX's data factor), ones if None.
    """
    state = net.path_state(kind, leaves)
    ones = torch.ones((1, *sample_shape), dtype=torch.float64, device=net.device)
    with Relus("linear"):
        out = net(ones, state)
    total = out.sum() if output_weights is None else (out * output_weights).sum()
    grads = torch.autograd.grad(total, [leaves[n] for n in net.names], allow_unused=True)
    return {
        n: torch.zeros_like(leaves[n]) if g is None else g
        for n, g in zip(net.names, grads, strict=True)
    }


def sample_shape(
    method: str, data: Sequence[Batch] | None, input_shape: Sequence[int] | None
) -> tuple[int, ...]:
    """Shape of one input sample: from the data if given, else the method's ``input_shape``."""
    if data:
        return tuple(data[0][0].shape[1:])
    if input_shape is not None:
        return tuple(input_shape)
    raise ValueError(
        f"method {method!r} needs the input shape: pass data=[(x, y), ...] or "
        "hparams={'input_shape': [C, H, W]}"
    )


def require_data(method: str, data: Sequence[Batch] | None) -> Sequence[Batch]:
    if not data:
        raise ValueError(
            f"method {method!r} scores with data: pass data=[(x, y), ...] "
            "(see lotterylab.platform.pruning.scoring_batches); got none"
        )
    return data


def on_device(net: ScoringNet, batch: Batch) -> Batch:
    x, y = batch
    return x.to(net.device, net.dtype), y.to(net.device)
