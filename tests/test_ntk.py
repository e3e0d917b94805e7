"""ntk_matrix / ntk_spectrum against a plain per-sample, per-output autograd reference.

The device-aware tests compute the kernel on the test device (``--device``) and the reference
on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lotterylab.platform.metrics import ntk, ntk_matrix, ntk_spectrum


def reference_ntk(
    model: nn.Module, masks: dict, inputs: torch.Tensor, only: tuple[str, ...] | None = None
) -> torch.Tensor:
    """Θ = J Jᵀ with J built row by row by autograd: one grad call per sample and output.

    ``only`` restricts J's columns to the named tensors (one layer's share of Θ).
    """
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    rows = []
    for x in inputs:
        out = model(x.unsqueeze(0))
        out = (out["out"] if isinstance(out, dict) else out).reshape(-1)
        for k in range(len(out)):
            grads = torch.autograd.grad(out[k], list(params.values()), retain_graph=True)
            grads = [
                g * masks[name] if name in masks else g
                for name, g in zip(params, grads, strict=True)
            ]
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows).double()
    if only is not None:
        sizes = [p.numel() for p in params.values()]
        keep = [n in only for n in params]
        jac = torch.cat([j for j, k in zip(jac.split(sizes, dim=1), keep, strict=True) if k], 1)
    return jac @ jac.T


class TinyConv(nn.Module):
    """conv 2→3 3x3, BN, ReLU, global average pool, linear → 4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class DictOut(nn.Module):
    """Segmentation-style: a dict with "out" holding (N, C, H, W) logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x), "aux": x}


def mlp() -> tuple[nn.Module, torch.Tensor, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    masks = {
        "0.weight": torch.rand(5, 6, generator=g) > 0.4,
        "2.bias": torch.tensor([True, False, True]),
    }
    return model, torch.randn(7, 6, generator=g), masks


def conv() -> tuple[nn.Module, torch.Tensor, dict]:
    torch.manual_seed(0)
    model = TinyConv()
    # non-trivial running statistics and affine, as after training
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.2, 0.2)
    model.train()  # ntk_matrix must switch to eval itself and switch back
    g = torch.Generator().manual_seed(1)
    masks = {
        "conv.weight": torch.rand(3, 2, 3, 3, generator=g) > 0.5,
        "fc.weight": torch.rand(4, 3, generator=g) > 0.3,
    }
    return model, torch.randn(5, 2, 5, 5, generator=g), masks


CASES = {"mlp": mlp, "conv": conv}


def assert_close(theta: torch.Tensor, reference: torch.Tensor) -> None:
    assert theta.dtype == torch.float64
    assert theta.shape == reference.shape
    scale = reference.abs().max()
    assert float((theta - reference).abs().max() / scale) <= 1e-5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_matrix_matches_autograd_reference(case: str, masked: bool, device) -> None:
    model, inputs, masks = CASES[case]()
    masks = masks if masked else {}
    reference = reference_ntk(model, masks, inputs)
    on = {name: mask.to(device) for name, mask in masks.items()}
    theta = ntk_matrix(model.to(device), on if masked else None, inputs.to(device), chunk_size=2)
    assert theta.device.type == device.type
    theta = theta.cpu()
    assert theta.shape == (len(inputs) * (3 if case == "mlp" else 4),) * 2
    assert_close(theta, reference)
    assert torch.equal(theta, theta.T)


@pytest.mark.parametrize("case", CASES)
def test_float64_model_matches_reference_to_rounding(case: str) -> None:
    model, inputs, masks = CASES[case]()
    model, inputs = model.double(), inputs.double()
    theta = ntk_matrix(model, masks, inputs, chunk_size=2)
    reference = reference_ntk(model, masks, inputs)
    assert float((theta - reference).abs().max() / reference.abs().max()) <= 1e-12


@pytest.mark.parametrize("case", CASES)
def test_spectrum_is_eigvalsh_of_reference_descending(case: str, device) -> None:
    model, inputs, masks = CASES[case]()
    expected = torch.linalg.eigvalsh(reference_ntk(model, masks, inputs)).flip(0)
    on = {name: mask.to(device) for name, mask in masks.items()}
    eigenvalues = ntk_spectrum(model.to(device), on, inputs.to(device), chunk_size=3).cpu()
    assert eigenvalues.dtype == torch.float64
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])
    assert float((eigenvalues - expected).abs().max() / expected.abs().max()) <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_chunk_size_does_not_change_the_matrix(case: str) -> None:
    model, inputs, masks = CASES[case]()
    thetas = [ntk_matrix(model, masks, inputs, chunk_size=c) for c in (1, 3, 100)]
    # the float32 Jacobians of differently batched kernels differ by rounding only
    for theta in thetas[1:]:
        assert float((theta - thetas[0]).abs().max() / thetas[0].abs().max()) <= 1e-6


@pytest.mark.parametrize("tile", [1, 2, 5])
def test_product_tiles_do_not_change_the_matrix(monkeypatch: pytest.MonkeyPatch, tile: int) -> None:
    model, inputs, masks = mlp()
    reference = reference_ntk(model, masks, inputs)
    monkeypatch.setattr(ntk, "PRODUCT_TILE", tile)
    for chunk_size in (1, 3, 100):
        theta = ntk_matrix(model, masks, inputs, chunk_size=chunk_size)
        assert_close(theta, reference)
        assert torch.equal(theta, theta.T)


def test_masking_a_whole_layer_removes_its_contribution() -> None:
    # as IMP stores them, the pruned weights are already zero: masking them then leaves the
    # forward pass, and so every other tensor's Jacobian, unchanged
    model, inputs, _ = conv()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.fill_(2.0)  # keeps the ReLU open, so conv.weight has a gradient
    dense = ntk_matrix(model, None, inputs)
    layer_part = reference_ntk(model, {}, inputs, only=("conv.weight",))
    masked = ntk_matrix(model, {"conv.weight": torch.zeros(3, 2, 3, 3, dtype=torch.bool)}, inputs)
    assert float(layer_part.abs().max()) > 1e-3 * float(dense.abs().max())
    assert_close(masked, dense - layer_part)


def test_first_layer_masked_out_matches_reference() -> None:
    # pruning conv.weight entirely also zeroes it in the forward pass, which changes the other
    # layers' Jacobians; the reference does the same
    model, inputs, _ = conv()
    masks = {"conv.weight": torch.zeros(3, 2, 3, 3, dtype=torch.bool)}
    assert_close(ntk_matrix(model, masks, inputs), reference_ntk(model, masks, inputs))


@pytest.mark.parametrize("case", CASES)
def test_model_is_left_unchanged(case: str) -> None:
    model, inputs, masks = CASES[case]()
    model.train()
    model[0].eval() if case == "mlp" else model.bn.eval()  # mixed flags must come back as set
    flags = {n: m.training for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    ntk_spectrum(model, masks, inputs, chunk_size=2)
    assert {n: m.training for n, m in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_dict_output_uses_out_flattened_per_sample() -> None:
    torch.manual_seed(0)
    model = DictOut()
    inputs = torch.randn(3, 2, 4, 4)
    theta = ntk_matrix(model, None, inputs, chunk_size=2)
    assert theta.shape == (3 * 2 * 4 * 4,) * 2
    assert_close(theta, reference_ntk(model, {}, inputs))


def test_everything_pruned_gives_zero() -> None:
    model, inputs, _ = mlp()
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    assert torch.equal(ntk_matrix(model, masks, inputs), torch.zeros(21, 21, dtype=torch.float64))


def test_rejects_bad_masks() -> None:
    model, inputs, _ = mlp()
    with pytest.raises(ValueError, match="does not have"):
        ntk_matrix(model, {"nope": torch.ones(1, dtype=torch.bool)}, inputs)
    with pytest.raises(ValueError, match="bool tensor"):
        ntk_matrix(model, {"0.weight": torch.ones(5, 6)}, inputs)
    with pytest.raises(ValueError, match="chunk_size"):
        ntk_matrix(model, None, inputs, chunk_size=0)
