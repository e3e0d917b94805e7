"""K trainings of FCNs of one shape as one batched computation.

Paper 1 trains many FCNs of the same shape (seeds × data sets × methods × rounds). Stacking
their weights along a leading lineage axis turns K small matrix products per layer into one
``torch.baddbmm``, K batch norms into one, and K optimiser steps into one pass per tensor.
Nothing is shared between lineages but the shape: each keeps its own start state, masks,
batches (drawn from its own seed exactly as ``training.train`` draws them), batch-norm
statistics, momentum buffers and learning-rate schedule position, so every model ends as if
``training.train`` had trained it alone (to float rounding: a batched product may sum in
another order than a single one).

Masks are given as ``{parameter name: bool tensor}`` per lineage and enforced by zeroing the
pruned entries of the start state and again after every optimiser step; the models' own mask
buffers are not read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.models.fcn import FCN
from lotterylab.platform.spec import TrainingSpec
from lotterylab.platform.training import BatchSource, batch_indices, learning_rate

__all__ = ["BatchedFCN", "train_batched"]


class _BatchedLinear(torch.autograd.Function):
    """x (K, B, in) @ weight (K, in, out) + bias (K, out), one lineage per leading index.

    The weight gradient is written into ``grad_buffer``, the same (K, in, out) tensor every
    step: a fresh one would be a new allocation above glibc's mmap threshold once K·in·out
    floats pass 32 MB, with the cost of zeroing its pages at every step. On the CPU it runs as
    one ``mm`` per lineage, which MKL does more than twice as fast as the same long, thin
    contractions over the batch through ``bmm``; elsewhere it is one ``bmm``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, grad_buffer):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.grad_buffer = grad_buffer
        if bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = ctx.grad_buffer
            if grad.device.type == "cpu":
                for k in range(len(weight)):  # a few lineages, each a full-size product
                    torch.mm(x[k].t(), grad[k], out=grad_weight[k])
            else:
                torch.bmm(x.transpose(1, 2), grad, out=grad_weight)
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def _architecture(model: FCN) -> dict:
    """What must agree between the K models for them to stack."""
    layers = list(model.layers)
    norms = list(model.norms) if model.norms is not None else []
    return {
        "dims": [layers[0].in_features] + [layer.out_features for layer in layers],
        "bias": layers[0].bias is not None,
        "batch_norm": bool(norms),
        "norm_eps": sorted({norm.eps for norm in norms}),
        "norm_momentum": sorted({norm.momentum for norm in norms}, key=str),
        "dtype": str(layers[0].weight.dtype),
    }


def _stacked_names(model: FCN) -> tuple[list[str], list[str]]:
    """Names of the parameters and of the batch-norm statistics the stacks hold."""
    params, stats = [], []
    for i, layer in enumerate(model.layers):
        if model.norms is not None:
            params += [f"norms.{i}.weight", f"norms.{i}.bias"]
            stats += [f"norms.{i}.running_mean", f"norms.{i}.running_var"]
        params.append(f"layers.{i}.weight")
        if layer.bias is not None:
            params.append(f"layers.{i}.bias")
    return params, stats


def _check_models(models: Sequence[FCN]) -> None:
    if not models:
        raise ValueError("models: need at least one FCN to train, got an empty list")
    for k, model in enumerate(models):
        if not isinstance(model, FCN):
            raise TypeError(f"models[{k}] is a {type(model).__name__}; only FCN models stack")
    reference = _architecture(models[0])
    if reference["batch_norm"]:
        norm = models[0].norms[0]
        if norm.momentum is None or not norm.affine or not norm.track_running_stats:
            raise ValueError(
                "models[0]: batch norm must be affine with running statistics and a fixed "
                f"momentum (nn.BatchNorm1d's defaults), got affine={norm.affine}, "
                f"track_running_stats={norm.track_running_stats}, momentum={norm.momentum}"
            )
        if len(reference["norm_eps"]) > 1 or len(reference["norm_momentum"]) > 1:
            raise ValueError(
                f"models[0]: batch norms must share eps and momentum, got eps "
                f"{reference['norm_eps']} and momentum {reference['norm_momentum']}"
            )
    for k, model in enumerate(models[1:], start=1):
        other = _architecture(model)
        for key, value in reference.items():
            if other[key] != value:
                raise ValueError(
                    f"models[{k}]: {key} {other[key]} differs from models[0]'s {value}; "
                    "batched lineages must share the architecture"
                )
    params, _ = _stacked_names(models[0])
    for k, model in enumerate(models):
        names = sorted(name for name, _ in model.named_parameters())
        if names != sorted(params):
            raise ValueError(
                f"models[{k}] has parameters {names}; a batched FCN holds exactly {sorted(params)}"
            )


class BatchedFCN:
    """K FCNs of one shape as stacked tensors, trained together in train mode.

    ``params[name]`` is a (K, *shape) leaf tensor per parameter of the FCN, except that dense
    weights are held transposed, (K, in, out): the gradient of ``bmm``'s second operand then
    comes out in the parameter's own layout, where an (out, in) stack would get a transposed
    gradient that makes every optimiser pass strided (tens of times slower on the CPU).
    ``stats[name]`` is a (K, C) tensor per batch-norm running statistic, ``tracked`` (K,) the
    batch norms' step counters, ``keep_masks[name]`` a (K, *stored shape) 0/1 tensor of the
    parameters' dtype (a float multiply is several times faster than a bool one or a
    ``masked_fill_``). Activations are (K, B, features): one lineage per leading index.
    """

    def __init__(
        self,
        models: Sequence[FCN],
        masks: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
        device: torch.device | None = None,
    ):
        _check_models(models)
        masks = _check_masks(models, masks)
        first = models[0]
        self.device = torch.device(device) if device is not None else first.layers[0].weight.device
        self.num_layers = len(first.layers)
        self.batch_norm = first.norms is not None
        self.has_bias = first.layers[0].bias is not None
        if self.batch_norm:
            self.eps, self.momentum = first.norms[0].eps, first.norms[0].momentum
        self.param_names, self.stat_names = _stacked_names(first)
        states = [model.state_dict() for model in models]
        with torch.no_grad():
            self.params = {
                name: torch.stack([self._stored(name, s[name]) for s in states]).to(self.device)
                for name in self.param_names
            }
            self.stats = {
                name: torch.stack([s[name] for s in states]).to(self.device)
                for name in self.stat_names
            }
        self.tracked = torch.tensor(
            [int(s.get("norms.0.num_batches_tracked", 0)) for s in states], device=self.device
        )
        # kept entries (1 = alive) of every tensor that any lineage masks
        masked = sorted({name for m in masks if m for name in m})
        self.keep_masks = {
            name: torch.stack(
                [
                    self._stored(name, m[name]).to(self.device, self.params[name].dtype)
                    if m and name in m
                    else torch.ones_like(self.params[name][0])
                    for m in masks
                ]
            )
            for name in masked
        }
        self.enforce_masks()
        for tensor in self.params.values():
            tensor.requires_grad_(True)
        self.momentum_buffers: list[torch.Tensor] | None = None
        self.grad_buffers: dict[str, torch.Tensor] = {}  # weight gradients, reused every step

    @property
    def size(self) -> int:
        return len(self.tracked)

    @staticmethod
    def _stored(name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A model's tensor in the stack's layout (dense weights (in, out)), and back."""
        if name.startswith("layers.") and name.endswith(".weight"):
            return tensor.detach().t()
        return tensor.detach()

    def _model_layout(self, name: str, k: int) -> torch.Tensor:
        return self._stored(name, self.params[name][k])  # the transpose undoes itself

    def enforce_masks(self) -> None:
        if not self.keep_masks:
            return
        with torch.no_grad():
            names = list(self.keep_masks)
            torch._foreach_mul_([self.params[n] for n in names], list(self.keep_masks.values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, classes) of inputs (B, K, D), batch norm in train mode.

        Batch norm runs as one ``F.batch_norm`` over (B, K·C): statistics per lineage and
        channel, running statistics updated in place with nn.BatchNorm1d's rule.
        """
        batch, k = x.shape[0], x.shape[1]
        h = x.reshape(batch, k, -1)
        last = self.num_layers - 1
        for i in range(self.num_layers):
            if self.batch_norm:
                h = F.batch_norm(
                    h.reshape(batch, -1),
                    self.stats[f"norms.{i}.running_mean"].view(-1),
                    self.stats[f"norms.{i}.running_var"].view(-1),
                    self.params[f"norms.{i}.weight"].reshape(-1),
                    self.params[f"norms.{i}.bias"].reshape(-1),
                    True,
                    self.momentum,
                    self.eps,
                ).view(batch, k, -1)
            name = f"layers.{i}.weight"
            weight = self.params[name]  # (K, in, out)
            if name not in self.grad_buffers:
                self.grad_buffers[name] = torch.empty_like(weight, requires_grad=False)
            bias = self.params.get(f"layers.{i}.bias")
            out = _BatchedLinear.apply(h.transpose(0, 1), weight, bias, self.grad_buffers[name])
            if i < last:
                h = F.relu(out).transpose(0, 1)
        if self.batch_norm:
            self.tracked += 1
        return out

    def sgd_step(self, loss: torch.Tensor, spec: TrainingSpec, lr: float | torch.Tensor) -> None:
        """One step of torch.optim.SGD (dampening 0) on every stacked tensor, then the masks.

        ``lr`` is one rate for all lineages or a (K,) tensor of rates, one per lineage. With
        one rate, a masked tensor takes its step and its mask in one pass: p += -lr·(d ⊙ m)
        equals (p − lr·d) ⊙ m because its pruned entries are already 0.
        """
        params = list(self.params.values())
        # fresh tensors or the stack's own weight-gradient buffers: ours to change in place
        grads = list(torch.autograd.grad(loss, params))
        with torch.no_grad():
            if spec.weight_decay != 0:
                torch._foreach_add_(grads, params, alpha=spec.weight_decay)
            if spec.momentum != 0:
                if self.momentum_buffers is None:
                    self.momentum_buffers = [g.clone() for g in grads]
                else:
                    torch._foreach_mul_(self.momentum_buffers, spec.momentum)
                    torch._foreach_add_(self.momentum_buffers, grads)
                if spec.optimizer == "nesterov":
                    torch._foreach_add_(grads, self.momentum_buffers, alpha=spec.momentum)
                else:
                    grads = self.momentum_buffers
            if isinstance(lr, torch.Tensor):
                for p, g in zip(params, grads, strict=True):
                    p.addcmul_(g, lr.view(-1, *[1] * (p.dim() - 1)), value=-1.0)
                self.enforce_masks()
                return
            steps = dict(zip(self.params, grads, strict=True))
            for name, keep in self.keep_masks.items():
                self.params[name].addcmul_(steps.pop(name), keep, value=-lr)
            if steps:
                params = [self.params[n] for n in steps]
                torch._foreach_add_(params, list(steps.values()), alpha=-lr)

    def state_dict(self, k: int, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Lineage ``k``'s state with the keys and devices of ``like`` (a model's state_dict)."""
        state = {}
        for name, tensor in like.items():
            if name in self.params:
                value = self._model_layout(name, k)
            elif name in self.stats:
                value = self.stats[name][k]
            elif name.endswith("num_batches_tracked") and self.batch_norm:
                value = self.tracked[k]
            else:
                value = tensor.detach()
            state[name] = value.to(tensor.device, memory_format=torch.contiguous_format, copy=True)
        return state

    def write_to(self, k: int, model: FCN) -> None:
        """Copy lineage ``k``'s parameters and batch-norm state into ``model`` (left in train
        mode, as ``training.train`` leaves it)."""
        model.train()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name in self.params:
                    tensor.copy_(self._model_layout(name, k))
                elif name in self.stats:
                    tensor.copy_(self.stats[name][k])
                elif name.endswith("num_batches_tracked") and self.batch_norm:
                    tensor.fill_(int(self.tracked[k]))

    def keep(self, index: torch.Tensor) -> None:
        """Drop every lineage not in ``index`` (lineages that have finished)."""
        index = index.to(self.device)
        with torch.no_grad():
            for name, tensor in self.params.items():
                self.params[name] = tensor.index_select(0, index).requires_grad_(True)
            for group in (self.stats, self.keep_masks):
                for name, tensor in group.items():
                    group[name] = tensor.index_select(0, index)
            self.tracked = self.tracked.index_select(0, index)
            self.grad_buffers = {}
            if self.momentum_buffers is not None:
                self.momentum_buffers = [b.index_select(0, index) for b in self.momentum_buffers]


def _check_masks(
    models: Sequence[FCN], masks: Sequence[Mapping[str, torch.Tensor] | None] | None
) -> list[Mapping[str, torch.Tensor] | None]:
    if masks is None:
        return [None] * len(models)
    if len(masks) != len(models):
        raise ValueError(f"masks: {len(masks)} entries for {len(models)} models; give one each")
    params = dict(models[0].named_parameters())
    for k, lineage_masks in enumerate(masks):
        for name, mask in (lineage_masks or {}).items():
            if name not in params:
                raise ValueError(
                    f"masks[{k}] names {name!r}, not a parameter of the FCN; "
                    f"allowed: {sorted(params)}"
                )
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError(f"masks[{k}][{name!r}] must be a bool tensor, got {mask!r:.60}")
            if mask.shape != params[name].shape:
                raise ValueError(
                    f"masks[{k}][{name!r}] has shape {tuple(mask.shape)}, "
                    f"the tensor has {tuple(params[name].shape)}"
                )
    return list(masks)


def _start_steps(start_step: int | Sequence[int], count: int, spec: TrainingSpec) -> list[int]:
    starts = [start_step] * count if isinstance(start_step, int) else list(start_step)
    if len(starts) != count:
        raise ValueError(f"start_step: {len(starts)} entries for {count} models; give one each")
    for k, start in enumerate(starts):
        if not isinstance(start, int) or not 0 <= start < spec.steps:
            raise ValueError(
                f"start_step[{k}] is {start!r}; allowed: an int in [0, training.steps = "
                f"{spec.steps})"
            )
    return starts


def _check_data(models: Sequence[FCN], datasets: Sequence[ImageDataset], spec: TrainingSpec):
    if len(datasets) != len(models):
        raise ValueError(
            f"datasets: {len(datasets)} entries for {len(models)} models; give one each"
        )
    input_dim = models[0].layers[0].in_features
    classes = models[0].layers[-1].out_features
    for k, data in enumerate(datasets):
        if data.input_dim != input_dim or data.num_classes != classes:
            raise ValueError(
                f"datasets[{k}] ({data.name!r}) has {data.input_dim} inputs and "
                f"{data.num_classes} classes; the FCN takes {input_dim} and gives {classes}"
            )
        if data.train_y.dim() != 1:
            raise ValueError(
                f"datasets[{k}] ({data.name!r}) has per-pixel labels; the FCN classifies images"
            )
        if spec.batch_size > data.size("train"):
            raise ValueError(
                f"training.batch_size ({spec.batch_size}) exceeds the {data.size('train')} "
                f"training images of datasets[{k}] ({data.name!r})"
            )


def train_batched(
    models: Sequence[FCN],
    datasets: Sequence[ImageDataset],
    spec: TrainingSpec,
    seeds: Sequence[int],
    start_step: int | Sequence[int] = 0,
    masks: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    device: torch.device | None = None,
    capture_step: int | None = None,
    on_step: Callable[[int, BatchedFCN], None] | None = None,
) -> list[dict[str, torch.Tensor] | None] | None:
    """Train K FCNs in place, each as ``training.train(models[k], datasets[k], spec, seeds[k],
    start_step[k], masks=masks[k])`` would, as one batched computation.

    ``start_step`` is one step for all or one per lineage; a lineage trains from its start step
    to ``spec.steps`` at its own learning-rate schedule position, and leaves the batch when it
    is done. ``masks[k]`` (or None) zeroes pruned entries of lineage k's start state and after
    every step. ``device`` holds the stacks (default: where the first model lives); each model
    keeps its own device. With ``capture_step`` set, returns each lineage's state_dict before
    step ``capture_step`` (θ(t_rewind), as ``train_with_rewind_capture`` keeps it), or None for
    a lineage whose steps do not include it. ``on_step(offset, stack)`` runs before each
    batched step, ``offset`` counting from the earliest start.
    """
    _check_models(models)
    count = len(models)
    if len(seeds) != count:
        raise ValueError(f"seeds: {len(seeds)} entries for {count} models; give one each")
    _check_data(models, datasets, spec)
    starts = _start_steps(start_step, count, spec)
    if capture_step is not None and not (
        isinstance(capture_step, int) and 0 <= capture_step < spec.steps
    ):
        raise ValueError(
            f"capture_step is {capture_step!r}; allowed: None or an int in [0, training.steps "
            f"= {spec.steps})"
        )
    stack = BatchedFCN(models, masks, device)
    device = stack.device
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batches = [
        batch_indices(data.size("train"), spec.batch_size, spec.steps - start, generator)
        for data, start, generator in zip(datasets, starts, generators, strict=True)
    ]
    sources = [BatchSource(data, spec, device) for data in datasets]
    likes = [model.state_dict() for model in models] if capture_step is not None else None
    captured: list[dict[str, torch.Tensor] | None] = [None] * count
    active = list(range(count))  # lineage of each row of the stacks
    for offset in range(spec.steps - min(starts)):
        if capture_step is not None:
            for row, k in enumerate(active):
                if starts[k] + offset == capture_step:
                    captured[k] = stack.state_dict(row, likes[k])
        if on_step is not None:
            on_step(offset, stack)
        pairs = [sources[k].get(batches[k][offset], generators[k]) for k in active]
        x = torch.stack([xb.reshape(spec.batch_size, -1) for xb, _ in pairs], dim=1)
        y = torch.stack([yb for _, yb in pairs])
        logits = stack.forward(x)
        # summed per-lineage means: each lineage gets exactly its own loss's gradient
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        rates = [learning_rate(spec, starts[k] + offset) for k in active]
        lr = rates[0] if len(set(rates)) == 1 else torch.tensor(rates, device=device)
        stack.sgd_step(loss / spec.batch_size, spec, lr)
        done = [row for row, k in enumerate(active) if starts[k] + offset + 1 == spec.steps]
        if done:
            for row in done:
                stack.write_to(row, models[active[row]])
            remaining = [row for row in range(len(active)) if row not in done]
            if remaining:
                stack.keep(torch.tensor(remaining))
            active = [active[row] for row in remaining]
    return captured if capture_step is not None else None
