"""Pre-activation kurtosis, cavity scores and their grouping by removal round (paper 1).

The measured tensors go to the test device (``--device``); the references stay on the CPU.
"""

import math

import pytest
import torch
from scipy.stats import kurtosis as scipy_kurtosis

from lotterylab.platform.data.nlgp import make_nlgp
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.metrics import (
    CavityByRound,
    PreactivationKurtosis,
    cavity_by_removal_round,
    cavity_scores,
    preactivation_kurtosis,
)


def _reference_kurtosis(weight, inputs):
    """Eq. 4 by scipy (plain, not excess), one column of λ = x Wᵀ at a time."""
    lam = (inputs.double() @ weight.double().T).numpy()
    return torch.from_numpy(scipy_kurtosis(lam, axis=0, fisher=False, bias=True))


def _reference_cavity(weight, inputs):
    """Eq. 5-6 the slow way: zero each weight in turn and recompute that unit's kurtosis."""
    w, x = weight.double(), inputs.double()
    kurt = _reference_kurtosis(w, x)
    scores = torch.full(w.shape, math.nan, dtype=torch.float64)
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            if w[i, j] == 0:
                continue
            row = w[i].clone()
            row[j] = 0.0
            removed = float(_reference_kurtosis(row[None], x)[0])
            k = float(kurt[i])
            scores[i, j] = (removed - k) / k if k > 3 else (k - removed) / k
    return scores, kurt


def _mixed_inputs(n, d, generator):
    """Half uniform inputs (kurtosis 1.8), half cubed Gaussians (heavy tails, kurtosis > 3)."""
    uniform = torch.rand(n, d // 2, generator=generator, dtype=torch.float64) * 2 - 1
    heavy = torch.randn(n, d - d // 2, generator=generator, dtype=torch.float64) ** 3
    return torch.cat([uniform, heavy], dim=1)


def _assert_close_relative(got, expected, rtol):
    assert torch.equal(got.isnan(), expected.isnan())
    finite = ~expected.isnan()
    error = (got[finite] - expected[finite]).abs() / expected[finite].abs().clamp_min(1e-12)
    assert float(error.max()) < rtol, float(error.max())


# -- kurtosis -------------------------------------------------------------------------------


def test_kurtosis_matches_eq4_overall_and_per_class(device):
    g = torch.Generator().manual_seed(0)
    x = _mixed_inputs(900, 10, g)
    w = torch.randn(5, 10, generator=g, dtype=torch.float64)
    labels = torch.arange(900) % 3
    bias = torch.randn(5, dtype=torch.float64)
    on = preactivation_kurtosis(
        w.to(device), x.to(device), bias=bias.to(device), labels=labels.to(device), num_classes=3
    )
    assert on.overall.device.type == device.type
    result = PreactivationKurtosis(on.overall.cpu(), on.per_class.cpu())
    assert isinstance(on, PreactivationKurtosis)
    assert result.overall.dtype == torch.float64 and result.overall.shape == (5,)
    assert torch.allclose(result.overall, _reference_kurtosis(w, x), rtol=1e-12)
    assert result.per_class.shape == (3, 5)
    for k in range(3):
        expected = _reference_kurtosis(w, x[labels == k])
        assert torch.allclose(result.per_class[k], expected, rtol=1e-12)
    assert result.mean == pytest.approx(float(result.per_class.mean()), rel=1e-12)
    # classes differ, so per-class kurtosis is not the overall one
    assert not torch.allclose(result.per_class[0], result.overall, rtol=1e-3)


def test_kurtosis_of_known_distributions():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x = torch.stack(
        [
            torch.randn(n, generator=g),
            torch.rand(n, generator=g) * 2 - 1,
            torch.distributions.Laplace(0.0, 1.0).sample((n,)),
        ],
        dim=1,
    )
    result = preactivation_kurtosis(torch.eye(3), x, chunk_size=50_000)
    # Gaussian 3, uniform 9/5, Laplace 6
    assert result.overall.tolist() == pytest.approx([3.0, 1.8, 6.0], rel=0.05)
    assert result.per_class is None
    assert result.mean == pytest.approx(float(result.overall.mean()), rel=1e-12)


def test_kurtosis_chunked_equals_unchunked_and_ignores_bias():
    g = torch.Generator().manual_seed(2)
    x = _mixed_inputs(501, 8, g).float()
    w = torch.randn(4, 8, generator=g)
    labels = torch.randint(0, 4, (501,), generator=g)
    whole = preactivation_kurtosis(w, x, labels=labels, chunk_size=501)
    bias = torch.full((4,), 100.0)
    chunked = preactivation_kurtosis(w, x, bias=bias, labels=labels, chunk_size=7)
    assert torch.allclose(whole.overall, chunked.overall, rtol=1e-10)
    assert torch.allclose(whole.per_class, chunked.per_class, rtol=1e-10)
    assert whole.per_class.shape == (4, 4)  # num_classes defaults to the largest label + 1


def test_zero_variance_units_and_empty_classes_are_nan():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    x[:, 5] = 0.7  # a constant input
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    w[1] = 0.0  # a unit whose weights are all pruned
    w[2] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 3.0], dtype=torch.float64)  # constant λ
    labels = torch.zeros(60, dtype=torch.int64)
    labels[0] = 2  # class 2 has a single sample, class 1 none
    result = preactivation_kurtosis(w, x, labels=labels, num_classes=3)
    assert result.overall.isnan().tolist() == [False, True, True, False]
    assert result.per_class.isnan().tolist() == [
        [False, True, True, False],
        [True, True, True, True],
        [True, True, True, True],
    ]
    finite = result.per_class[0, [0, 3]]
    assert result.mean == pytest.approx(float(finite.mean()), rel=1e-12)
    assert math.isnan(PreactivationKurtosis(torch.full((2,), math.nan), None).mean)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"weight": torch.zeros(3)}, ["weight", "1-D"]),
        ({"inputs": torch.zeros(10, 5)}, ["inputs", "D = 4", "(10, 5)"]),
        ({"bias": torch.zeros(2)}, ["bias", "(3,)", "(2,)"]),
        ({"labels": torch.zeros(9, dtype=torch.int64)}, ["labels", "(10,)", "(9,)"]),
        ({"labels": torch.zeros(10)}, ["labels", "integer", "float32"]),
        ({"labels": torch.arange(10), "num_classes": 5}, ["labels", "[0, 5)", "9"]),
        ({"chunk_size": 0}, ["chunk_size", "0"]),
    ],
)
def test_kurtosis_rejects_bad_arguments(kwargs, names):
    args = {"weight": torch.ones(3, 4), "inputs": torch.randn(10, 4)} | kwargs
    with pytest.raises(ValueError) as error:
        preactivation_kurtosis(**args)
    assert all(name in str(error.value) for name in names), str(error.value)


# -- cavity scores --------------------------------------------------------------------------


def test_cavity_scores_match_the_reference_on_mixed_inputs(device):
    g = torch.Generator().manual_seed(4)
    x = _mixed_inputs(1500, 10, g)
    w = torch.randn(6, 10, generator=g, dtype=torch.float64)
    w[0, 5:] = 0.0  # uniform inputs only: kurtosis < 3
    w[1, :5] = 0.0  # heavy-tailed inputs only: kurtosis > 3
    w[2, 3] = 0.0
    got = cavity_scores(w.to(device), x.to(device))
    assert got.device.type == device.type
    got = got.cpu()
    expected, kurt = _reference_cavity(w, x)
    assert bool((kurt < 3).any()) and bool((kurt > 3).any())
    assert got.dtype == torch.float64 and got.shape == w.shape
    _assert_close_relative(got, expected, 1e-5)
    assert got[0, 5:].isnan().all() and got[2, 3].isnan()
    # both signs occur, so the sign convention is exercised
    assert bool((got > 0).any()) and bool((got < 0).any())


def test_cavity_scores_match_the_reference_on_nlgp_images(device):
    data = make_nlgp(grid=4, channels=1, xi=[2.0, 4.0], gain=5.0, n_train=2000, n_test=2, seed=0)
    x = data.train_x.reshape(len(data.train_x), -1)
    g = torch.Generator().manual_seed(5)
    w = 0.05 * torch.randn(6, 16, generator=g)
    w[0, 5] = 1.0  # one pixel of near-binary images: broad, kurtosis < 3
    w[1, 5], w[1, 6] = 1.0, -1.0  # an edge detector on sharp edges: peaked, kurtosis > 3
    w[3, ::2] = 0.0  # half pruned
    got = cavity_scores(w.to(device), x.to(device)).cpu()
    expected, kurt = _reference_cavity(w, x)
    assert float(kurt[0]) < 3 < float(kurt[1])
    _assert_close_relative(got, expected, 1e-5)
    assert got[3, ::2].isnan().all() and not got[3, 1::2].isnan().any()


def test_cavity_scores_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(6)
    x = _mixed_inputs(777, 12, g).float()
    w = torch.randn(5, 12, generator=g)
    whole = cavity_scores(w, x, chunk_size=777)
    chunked = cavity_scores(w, x, chunk_size=50)
    assert torch.allclose(whole, chunked, rtol=1e-9, atol=0.0)


def test_cavity_scores_of_pruned_weights_and_degenerate_units_are_nan():
    g = torch.Generator().manual_seed(7)
    x = _mixed_inputs(400, 6, g)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    w[0, [1, 4]] = 0.0  # pruned weights
    w[1] = 0.0  # all pruned
    w[2, 1:] = 0.0  # one weight left: removing it leaves nothing to measure
    got = cavity_scores(w, x)
    assert got.isnan().tolist() == [
        [False, True, False, False, True, False],
        [True] * 6,
        [True] * 6,
        [False] * 6,
    ]


def test_cavity_scores_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"inputs must be \(N, D\) with D = 4"):
        cavity_scores(torch.ones(3, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got -1"):
        cavity_scores(torch.ones(3, 4), torch.randn(10, 4), chunk_size=-1)
    with pytest.raises(ValueError, match="floating point"):
        cavity_scores(torch.ones(3, 4, dtype=torch.int64), torch.randn(10, 4))


def test_kurtosis_and_cavity_on_the_test_device_equal_cpu(device):
    """Float32 inputs: the moments accumulate in float64 on every device."""
    g = torch.Generator().manual_seed(8)
    x = _mixed_inputs(3000, 20, g).float()
    w = torch.randn(8, 20, generator=g)
    w[0, :4] = 0.0
    labels = torch.randint(0, 3, (3000,), generator=g)
    cpu_scores = cavity_scores(w, x, chunk_size=512)
    gpu_scores = cavity_scores(w.to(device), x.to(device), chunk_size=512)
    assert gpu_scores.device.type == device.type
    _assert_close_relative(gpu_scores.cpu(), cpu_scores, 1e-8)
    cpu_k = preactivation_kurtosis(w, x, labels=labels)
    gpu_k = preactivation_kurtosis(w.to(device), x.to(device), labels=labels.to(device))
    assert torch.allclose(gpu_k.overall.cpu(), cpu_k.overall, rtol=1e-10)
    assert torch.allclose(gpu_k.per_class.cpu(), cpu_k.per_class, rtol=1e-10)


# -- grouping by removal round --------------------------------------------------------------


def _reference_groups(scores, rr, n):
    """Group means written out weight by weight."""
    flat_scores, flat_rr = scores.reshape(-1).tolist(), rr.reshape(-1).tolist()
    alive = [(s, r) for s, r in zip(flat_scores, flat_rr, strict=True) if r == -1 or r >= n]
    groups = {}
    for s, r in alive:
        groups.setdefault(r, []).append(s)
    out = []
    for r in sorted(groups):
        finite = [s for s in groups[r] if not math.isnan(s)]
        mean = len(alive) * sum(finite) / len(finite) if finite else math.nan
        out.append({"removed_at_round": r, "mean": mean, "count": len(groups[r])})
    return len(alive), out


def test_grouping_by_removal_round_matches_a_direct_count():
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(30, 40, generator=g, dtype=torch.float64)
    rr = torch.randint(-1, 5, (30, 40), generator=g)
    scores[rr == 3] = math.nan  # a group with no finite score
    scores[0, :5] = math.nan  # and some NaN scattered elsewhere
    for n in range(6):
        grouped = cavity_by_removal_round(scores, rr, n)
        assert isinstance(grouped, CavityByRound)
        n_alive, expected = _reference_groups(scores, rr, n)
        assert grouped.n_alive == n_alive == int(mk.mask_after_round(rr, n - 1).sum())
        assert [(x["removed_at_round"], x["count"]) for x in grouped.groups] == [
            (x["removed_at_round"], x["count"]) for x in expected
        ]
        for got, want in zip(grouped.groups, expected, strict=True):
            if math.isnan(want["mean"]):
                assert math.isnan(got["mean"])
            else:
                assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)
    assert [x["removed_at_round"] for x in cavity_by_removal_round(scores, rr, 2).groups] == [
        -1,
        2,
        3,
        4,
    ]


def test_grouping_small_example_by_hand():
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, math.nan, -6.0]])
    rr = torch.tensor([[0, -1, 1], [1, 1, -1]])
    at_zero = cavity_by_removal_round(scores, rr, 0)
    assert at_zero.n_alive == 6
    assert at_zero.groups == [
        {"removed_at_round": -1, "mean": 6 * (2.0 - 6.0) / 2, "count": 2},
        {"removed_at_round": 0, "mean": 6 * 1.0, "count": 1},
        {"removed_at_round": 1, "mean": 6 * (3.0 + 4.0) / 2, "count": 3},
    ]
    at_two = cavity_by_removal_round(scores, rr, 2)
    assert at_two.n_alive == 2
    assert at_two.groups == [{"removed_at_round": -1, "mean": 2 * (2.0 - 6.0) / 2, "count": 2}]


def test_grouping_rejects_bad_arguments():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        cavity_by_removal_round(scores, torch.zeros(3, 2, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match="integer tensor"):
        cavity_by_removal_round(scores, torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="evaluated_at_round must be >= 0, got -1"):
        cavity_by_removal_round(scores, torch.zeros(2, 3, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match="-1 .* or >= 0, got -2"):
        cavity_by_removal_round(scores, torch.full((2, 3), -2), 0)


def test_grouping_accepts_int32_fates():
    scores = torch.tensor([1.0, 2.0, 4.0])
    grouped = cavity_by_removal_round(scores, torch.tensor([2, 2, -1], dtype=torch.int32), 1)
    assert grouped.groups == [
        {"removed_at_round": -1, "mean": 3 * 4.0, "count": 1},
        {"removed_at_round": 2, "mean": 3 * 1.5, "count": 2},
    ]
