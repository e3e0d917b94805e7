"""Empirical neural tangent kernel of a (pruned) network at fixed weights, and its spectrum.

Θ = J Jᵀ, where J is the Jacobian of the logits (N samples × K outputs, rows sample-major) with
respect to the weights that are still alive. A pruned weight is held at zero and is no longer a
degree of freedom, so it must neither act in the forward pass nor contribute a column to J: the
functional call multiplies every masked tensor by its mask, and the chain rule then zeroes that
tensor's Jacobian entries outside the mask, which is the same as leaving those columns out.
Tensors without a mask (biases, batch-norm affine) count in full.

J itself is never held for all samples: for N·K rows and P weights that is N·K·P floats (about
1 GB in float32 for ResNet-20 on 100 CIFAR images). Samples are taken in chunks of
``chunk_size``; for each pair of chunks (a, b), b ≥ a, the per-sample Jacobians of both are
computed with ``vmap(jacrev(...))`` and the block Θ[a, b] is accumulated in float64 as
Σ_p J_a,p J_b,pᵀ, one parameter tensor at a time. Beyond Θ itself (N·K × N·K float64), peak
memory is two chunks' Jacobians in float64, 2 · chunk_size · K · P · 8 bytes, plus one chunk's
vmapped backward pass (chunk_size · K cotangents) and its Jacobian in the model's dtype. The
price is recomputing chunk b's Jacobian for every a ≤ b: n(n+1)/2 Jacobian evaluations for n
chunks, so fewer, larger chunks are faster as long as they fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

NTK_CHUNK_SIZE = 16
PRODUCT_TILE = 160  # rows of Θ per GEMM; smaller tiles skip more of the lower triangle


def ntk_matrix(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    inputs: torch.Tensor,
    chunk_size: int = NTK_CHUNK_SIZE,
) -> torch.Tensor:
    """Θ = J Jᵀ (N·K, N·K), float64, for ``inputs`` (N, ...) and the model's current weights.

    ``masks`` maps parameter names (as in ``named_parameters``) to boolean tensors of the same
    shape; only entries where the mask is True are differentiated. None means dense. The model
    is evaluated in eval mode (batch norm on its running statistics, so each sample's logits
    depend on that sample alone and the per-sample ``vmap`` is exact); every submodule's
    training flag is restored afterwards and no parameter or buffer is changed. A model may
    return the logits as a tensor or as a dict's ``"out"`` entry (segmentation); each sample's
    logits are flattened to K values. Computed on the parameters' device; see the module
    docstring for the memory bound.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if inputs.dim() < 1 or len(inputs) == 0:
        raise ValueError(f"inputs must hold at least one sample, got shape {tuple(inputs.shape)}")
    params = dict(model.named_parameters())
    if not params:
        raise ValueError("the model has no parameters to differentiate")
    masks = _check_masks(params, masks)
    device = next(iter(params.values())).device
    inputs = inputs.to(device)

    # fully pruned tensors have no columns in J: hold them at zero instead of differentiating
    alive = {n: p.detach() for n, p in params.items() if n not in masks or bool(masks[n].any())}
    fixed = {n: p.detach() * masks[n] for n, p in params.items() if n not in alive}
    float_masks = {n: m.to(params[n].dtype) for n, m in masks.items() if n in alive}

    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        if not alive:  # everything pruned: J has no columns
            with torch.no_grad():
                out = functional_call(model, fixed, (inputs[:1],))
            k = (out["out"] if isinstance(out, Mapping) else out).numel()
            return torch.zeros(len(inputs) * k, len(inputs) * k, dtype=torch.float64, device=device)
        jacobian = _per_sample_jacobian(model, alive, fixed, float_masks)
        return _accumulate(jacobian, inputs.split(chunk_size))
    finally:
        for module, training in flags:
            module.training = training


def ntk_spectrum(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    inputs: torch.Tensor,
    chunk_size: int = NTK_CHUNK_SIZE,
) -> torch.Tensor:
    """Eigenvalues (N·K,) of ``ntk_matrix``, float64, in descending order.

    Θ is symmetric positive semi-definite, so ``eigvalsh`` applies; eigenvalues that should be
    zero (rank below N·K) come out as rounding-sized values of either sign.
    """
    theta = ntk_matrix(model, masks, inputs, chunk_size)
    return torch.linalg.eigvalsh(theta).flip(0)


def _check_masks(
    params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    if masks is None:
        return {}
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name tensors the model does not have: {unknown}")
    checked = {}
    for name, mask in masks.items():
        if mask.dtype != torch.bool or mask.shape != params[name].shape:
            raise ValueError(
                f"mask {name!r} must be a bool tensor of shape {tuple(params[name].shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        checked[name] = mask.to(params[name].device)
    return checked


def _per_sample_jacobian(
    model: nn.Module,
    alive: dict[str, torch.Tensor],
    fixed: dict[str, torch.Tensor],
    float_masks: dict[str, torch.Tensor],
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A function of a chunk (c, ...) returning its Jacobians, one (c·K, n_p) matrix per tensor."""

    def logits(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # multiplying by the mask zeroes the pruned entries' Jacobian columns by the chain rule
        masked = {n: w * float_masks[n] if n in float_masks else w for n, w in weights.items()}
        out = functional_call(model, {**fixed, **masked}, (x.unsqueeze(0),))
        if isinstance(out, Mapping):
            out = out["out"]
        return out.reshape(-1)

    batched = vmap(jacrev(logits), in_dims=(None, 0))

    def jacobian(chunk: torch.Tensor) -> list[torch.Tensor]:
        per_tensor = batched(alive, chunk)  # name -> (c, K, *shape)
        return [j.reshape(j.shape[0] * j.shape[1], -1) for j in per_tensor.values()]

    return jacobian


def _accumulate(
    jacobian: Callable[[torch.Tensor], list[torch.Tensor]], chunks: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Θ from its blocks Σ_p J_a,p J_b,pᵀ with b ≥ a, each mirrored into Θ[b, a]."""
    bounds = torch.tensor([0] + [len(c) for c in chunks]).cumsum(0).tolist()
    theta: torch.Tensor | None = None
    for a, chunk_a in enumerate(chunks):
        jac_a = [j.double() for j in jacobian(chunk_a)]  # float64 once, reused for every b
        k = jac_a[0].shape[0] // len(chunk_a)
        if theta is None:
            theta = torch.zeros(
                bounds[-1] * k, bounds[-1] * k, dtype=torch.float64, device=jac_a[0].device
            )
        for b in range(a, len(chunks)):
            jac_b = jac_a if b == a else [j.double() for j in jacobian(chunks[b])]
            _add_block(theta, jac_a, jac_b, bounds[a] * k, bounds[b] * k, diagonal=b == a)
    assert theta is not None
    return theta


def _add_block(
    theta: torch.Tensor,
    jac_a: list[torch.Tensor],
    jac_b: list[torch.Tensor],
    row: int,
    col: int,
    diagonal: bool,
) -> None:
    """Θ[a, b] = Σ_p J_a,p J_b,pᵀ at (``row``, ``col``), and its transpose at (``col``, ``row``).

    Worked in tiles of ``PRODUCT_TILE`` rows so that a diagonal block, symmetric, costs only
    its tiles on and above the diagonal: this product is most of the time for large N·K.
    """
    rows, cols = jac_a[0].shape[0], jac_b[0].shape[0]
    for i in range(0, rows, PRODUCT_TILE):
        for j in range(i if diagonal else 0, cols, PRODUCT_TILE):
            r = slice(row + i, row + min(i + PRODUCT_TILE, rows))
            c = slice(col + j, col + min(j + PRODUCT_TILE, cols))
            tile = theta[r, c]
            for ja, jb in zip(jac_a, jac_b, strict=True):
                tile.addmm_(ja[i : i + PRODUCT_TILE], jb[j : j + PRODUCT_TILE].T)
            if diagonal and i == j:
                tile.copy_((tile + tile.T) / 2)  # rounding may leave it slightly asymmetric
            else:
                theta[c, r] = tile.T
