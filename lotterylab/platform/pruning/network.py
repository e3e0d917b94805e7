"""One private copy of a network, run functionally under substituted weights.

Every scorer works on a ``ScoringNet``: the model is copied once, and each forward pass runs
the copy with the tensors it should use (masked weights, random weights, squared or unit
weights) swapped in for the call, as ``torch.func.functional_call`` does, so no scorer ever
writes into a module's tensors. Path-based methods (SynFlow, SynFlow-L2, PX) run a *path
network*: batch norm in eval mode folded into one per-channel scale and shift, transformed like
the weights, so that the network computes sums over paths.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from lotterylab.platform.models.masking import PRUNABLE_LAYERS

RELUS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})

Batch = tuple[torch.Tensor, torch.Tensor]


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


def private_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` with frozen parameters, built with less Python work per module.

    Parameters and plain buffers are cloned up front into deepcopy's memo, and modules of plain
    classes are rebuilt the way deepcopy rebuilds them (``__new__``, a copy of
    ``__getstate__()``, ``__setstate__``), except that their empty hook tables are made afresh
    rather than deep-copied one by one: most of the time a small network takes to copy.
    Anything else (other attributes, modules of classes with their own copy or pickling
    methods, tensor subclasses) goes through ``copy.deepcopy`` with the same memo.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if type(p) is nn.Parameter and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
        for b in module._buffers.values():
            if type(b) is torch.Tensor and not b.requires_grad and id(b) not in memo:
                memo[id(b)] = b.clone()
    copied = _copy_module(model, memo)
    copied.requires_grad_(False)
    return copied


def _copy_module(module: nn.Module, memo: dict[int, object]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    if not (
        getattr(cls, "__deepcopy__", None) is None
        and cls.__reduce_ex__ is object.__reduce_ex__
        and cls.__reduce__ is object.__reduce__
        and not hasattr(cls, "__getnewargs_ex__")
        and not hasattr(cls, "__getnewargs__")
    ):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {}
    for key, value in module.__getstate__().items():
        if key in ("_parameters", "_buffers", "_modules") and type(value) is dict:
            state[key] = {
                k: _copy_module(v, memo) if isinstance(v, nn.Module) else copy.deepcopy(v, memo)
                for k, v in value.items()
            }
        elif type(value) in (OrderedDict, dict, set) and not value:
            state[key] = type(value)()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


def tensor_slots(module: nn.Module) -> dict[str, tuple[dict, str]] | None:
    """Each parameter and buffer's table (``_parameters`` or ``_buffers`` of its module) and key.

    None when a tensor has more than one name (tied weights, a module used twice) or the
    module is scripted: those calls go through ``functional_call``.
    """
    if isinstance(module, torch.jit.ScriptModule | nn.DataParallel):
        return None
    slots: dict[str, tuple[dict, str]] = {}
    seen: set[int] = set()
    for prefix, m in module.named_modules(remove_duplicate=False):
        for table in (m._parameters, m._buffers):
            for key, tensor in table.items():
                if tensor is None:
                    continue
                if id(tensor) in seen:
                    return None
                seen.add(id(tensor))
                slots[join_name(prefix, key)] = (table, key)
    return slots


class ScoringNet:
    """A frozen copy of ``model``; scorers call it with the tensors to substitute."""

    def __init__(self, model: nn.Module):
        self.module = private_copy(model)
        self.names: list[str] = []
        self.layers: dict[str, nn.Module] = {}
        self.biases: list[str] = []
        self.norms: dict[str, nn.modules.batchnorm._BatchNorm] = {}
        for prefix, m in self.module.named_modules():  # one walk for all four
            if isinstance(m, PRUNABLE_LAYERS):
                if m.weight is not None:
                    self.names.append(join_name(prefix, "weight"))
                    self.layers[join_name(prefix, "weight")] = m
                if m.bias is not None:
                    self.biases.append(join_name(prefix, "bias"))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                self.norms[prefix] = m
        if not self.names:
            raise ValueError(f"model {type(model).__name__} has no Conv or Linear weight to prune")
        self.params = {n: p.detach() for n, p in self.module.named_parameters()}
        self.buffers = {n: b.detach() for n, b in self.module.named_buffers()}
        first = self.params[self.names[0]]
        self.device, self.dtype = first.device, first.dtype
        self._slots = tensor_slots(self.module)
        self._training: bool | None = None  # the mode all modules were last set to

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: self.params[n] for n in self.names}

    def masked(
        self, masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        weights = self.weights() if weights is None else weights
        factors = [
            masks[n] if masks[n].dtype == torch.bool else masks[n].to(weights[n].dtype)
            for n in self.names
        ]
        # one call for all layers; w * bool mask is w * 1.0 or w * 0.0, as w * mask.to(w.dtype)
        products = torch._foreach_mul([weights[n] for n in self.names], factors)
        return dict(zip(self.names, products, strict=True))

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
        self._set_mode(train)
        return main_output(self._run(state, x))

    def _set_mode(self, train: bool) -> None:
        if self._training is not train:
            self.module.train(train)
            self._training = train

    def _run(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> object:
        """``functional_call(self.module, state, (x,), strict=False)``, swapping the tensors
        straight into the modules' tables when every name in ``state`` has one place."""
        slots = self._slots
        if slots is None or torch.jit.is_tracing() or not all(n in slots for n in state):
            return functional_call(self.module, state, (x,), strict=False)
        saved = []
        try:
            for name, tensor in state.items():
                table, key = slots[name]
                saved.append((name, table, key, table[key]))
                table[key] = tensor
            return self.module(x)
        finally:
            for name, table, key, original in reversed(saved):
                if table[key] is not state[name]:  # replaced during the call, not updated in place
                    state[name] = table[key]
                table[key] = original

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
            self._set_mode(True)
            with torch.no_grad():
                self._run(fresh, x)
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
            if n not in weights  # replaced below: not converted twice
        }
        for name in self.biases:
            state[name] = (
                torch.zeros_like(state[name]) if kind == "unit" else transform(state[name])
            )
        state.update(self._folded_norms(state, kind))
        state.update({n: w.to(dtype) for n, w in weights.items()})
        return state

    def _folded_norms(self, state, kind) -> dict[str, torch.Tensor]:
        """Each batch norm's eval-mode scale and shift, transformed, as its new tensors.

        The same element-wise operations as one norm at a time, run on all norms at once.
        """
        for prefix, bn in self.norms.items():
            if bn.running_mean is None:
                raise ValueError(
                    f"batch norm {prefix!r} keeps no running statistics "
                    "(track_running_stats=False); path-based methods need its eval-mode scale "
                    "and shift"
                )
        if not self.norms:
            return {}
        prefixes, norms = list(self.norms), list(self.norms.values())
        mean = [state[join_name(p, "running_mean")] for p in prefixes]
        var = [state[join_name(p, "running_var")] for p in prefixes]
        gamma = [
            state[join_name(p, "weight")] if bn.affine else torch.ones_like(m)
            for p, bn, m in zip(prefixes, norms, mean, strict=True)
        ]
        beta = [
            state[join_name(p, "bias")] if bn.affine else torch.zeros_like(m)
            for p, bn, m in zip(prefixes, norms, mean, strict=True)
        ]
        if kind == "unit":
            scale = [torch.ones_like(m) for m in mean]
            shift = [torch.zeros_like(m) for m in mean]
        else:
            # scale = gamma / sqrt(var + eps); shift = beta - mean * scale
            scale = torch._foreach_sqrt(torch._foreach_add(var, [bn.eps for bn in norms]))
            scale = torch._foreach_div(gamma, scale)
            shift = torch._foreach_sub(beta, torch._foreach_mul(mean, scale))
            if kind == "abs":
                scale, shift = torch._foreach_abs(scale), torch._foreach_abs(shift)
            else:  # square: torch.square(t) is t * t
                scale, shift = torch._foreach_mul(scale, scale), torch._foreach_mul(shift, shift)
        # an affine norm's weight times sqrt(1 + eps) undoes the unit variance's eps
        weight = torch._foreach_mul(scale, [math.sqrt(1.0 + bn.eps) for bn in norms])
        out: dict[str, torch.Tensor] = {}
        rows = zip(prefixes, norms, mean, var, scale, shift, weight, strict=True)
        for p, bn, m, v, a, b, w in rows:
            if bn.affine:
                out[join_name(p, "weight")] = w
                out[join_name(p, "bias")] = b
                out[join_name(p, "running_mean")] = torch.zeros_like(m)
                out[join_name(p, "running_var")] = torch.ones_like(v)
                continue
            new_var = 1.0 / a.square() - bn.eps
            if not bool((new_var > 0).all()):
                raise ValueError(
                    f"batch norm {p!r} (affine=False) has a scale that a non-affine module "
                    "cannot express in a path network"
                )
            out[join_name(p, "running_mean")] = -b / a
            out[join_name(p, "running_var")] = new_var
        return out


class Relus(TorchFunctionMode):
    """Overrides every ReLU call (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not).

    ``record``: run ReLU and keep its on/off pattern; ``replay``: multiply by the patterns
    recorded on another network, in call order; ``linear``: identity, noting the largest
    |input| in ``peak`` unless ``track_peak`` is False.
    """

    def __init__(
        self, how: str, gates: list[torch.Tensor] | None = None, *, track_peak: bool = True
    ):
        super().__init__()
        self.how = how
        self.gates = [] if gates is None else gates
        self.index = 0
        self.track_peak = track_peak
        self.peak = 0.0  # largest |input| seen by a linear ReLU: a bound on the activations

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in RELUS:
            return func(*args, **kwargs)
        x = args[0]
        if self.how == "linear":
            if self.track_peak:
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
    with Relus("linear", track_peak=False):
        out = net(ones, state)
    total = out.sum() if output_weights is None else (out * output_weights).sum()
    grads = torch.autograd.grad(total, [leaves[n] for n in net.names], allow_unused=True)
    return {
        n: torch.zeros_like(leaves[n]) if g is None else g
        for n, g in zip(net.names, grads, strict=True)
    }


def path_scores(
    net: ScoringNet, grads: Mapping[str, torch.Tensor], leaves: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """|grad * leaf| for every prunable weight, all layers in one call."""
    with torch.no_grad():
        scores = torch._foreach_mul([grads[n] for n in net.names], [leaves[n] for n in net.names])
        torch._foreach_abs_(scores)
    return dict(zip(net.names, scores, strict=True))


def sample_shape(
    method: str,
    data: Sequence[Batch] | None,
    input_shape: Sequence[int] | None,
    net: ScoringNet | None = None,
) -> tuple[int, ...]:
    """Shape of one input sample: from the data if given, else the method's ``input_shape``,
    else (D,) when the first prunable layer registered is ``nn.Linear(D, ...)`` (an MLP)."""
    if data:
        return tuple(data[0][0].shape[1:])
    if input_shape is not None:
        return tuple(input_shape)
    if net is not None and isinstance(first := net.layers[net.names[0]], nn.Linear):
        return (first.in_features,)
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
