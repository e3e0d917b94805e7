"""Pruning at initialisation: scores against closed forms, selection, schedules, sanity branches.

The networks of the device-aware tests live on the test device (``--device``); the closed
forms are computed on the CPU.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lotterylab.platform.pruning import (
    hparams_class,
    keep_top,
    method_names,
    prunable_names,
    prune_at_init,
    round_densities,
    score,
    scoring_batches,
    shuffle_masks,
)


class TwoLayer(nn.Module):
    """x (D) -> W1 (H x D) -> ReLU -> W2 (K x H); small enough to list every path."""

    def __init__(self, d=3, h=4, k=2):
        super().__init__()
        self.fc1 = nn.Linear(d, h, bias=False)
        self.fc2 = nn.Linear(h, k, bias=False)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class SmallResNet(nn.Module):
    """Stem, one residual block with a 1x1 shortcut, batch norm, pooling, classifier."""

    def __init__(self, width=6, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.short = nn.Conv2d(width, 2 * width, 1, stride=2, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.short(x)
        out = torch.relu(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def batches(n=2, size=20, shape=(3, 8, 8), classes=5, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn((size, *shape), generator=g) + shift,
            torch.randint(0, classes, (size,), generator=g),
        )
        for _ in range(n)
    ]


def two_layer(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return TwoLayer().to(device)


def on_cpu(tensors: dict) -> dict:
    return {name: t.cpu() for name, t in tensors.items()}


def test_paper_hyper_parameters_are_the_defaults():
    assert hparams_class("grasp")().temperature == 200.0
    assert hparams_class("ntksap")().epsilon == 0.01


def test_prunable_names_cover_every_conv_and_linear_weight():
    assert prunable_names(SmallResNet()) == [
        "stem.weight",
        "conv1.weight",
        "conv2.weight",
        "short.weight",
        "fc.weight",
    ]


# -- closed forms on a two-layer net ------------------------------------------------------


def path_values(w1, w2):
    """v[i, j, k] = w1[j, i] * w2[k, j]: the path input i -> hidden j -> output k."""
    return w1.T[:, :, None] * w2.T[None, :, :]


def test_synflow_equals_the_path_sum_through_each_weight(device):
    net = two_layer(device=device)
    w1, w2 = net.fc1.weight.detach().cpu().double(), net.fc2.weight.detach().cpu().double()
    v = path_values(w1.abs(), w2.abs())  # input all ones: each path counts its |product|
    s = score(net, "synflow", data=batches(shape=(3,)))
    assert s["fc1.weight"].device.type == device.type
    s = on_cpu(s)
    # SynFlow score of a weight = sum of the values of the paths through it
    torch.testing.assert_close(s["fc1.weight"], v.sum(2).T, rtol=1e-12, atol=0)
    torch.testing.assert_close(s["fc2.weight"], v.sum(0).T, rtol=1e-12, atol=0)


def test_synflow_l2_equals_the_squared_path_sum_through_each_weight():
    net = two_layer(1)
    w1, w2 = net.fc1.weight.detach().double(), net.fc2.weight.detach().double()
    v = path_values(w1.square(), w2.square())
    s = score(net, "synflow_l2", hparams={"input_shape": (3,)})
    torch.testing.assert_close(s["fc1.weight"], v.sum(2).T, rtol=1e-12, atol=0)
    torch.testing.assert_close(s["fc2.weight"], v.sum(0).T, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["px", "px_literal"])
def test_px_equals_the_closed_form_path_sums(method, device):
    net = two_layer(2, device)
    data = batches(n=2, size=7, shape=(3,), seed=3)
    w1, w2 = net.fc1.weight.detach().cpu().double(), net.fc2.weight.detach().cpu().double()
    x = torch.cat([b[0] for b in data]).double()
    a = (x @ w1.T > 0).double()  # a[n, j]: hidden unit j on for sample n
    c = w2 if method == "px" else torch.ones_like(w2)  # classifier weights in g
    # g^k(x_n^2) = sum over paths i -> j -> k of a_nj * c_kj * x_ni^2, summed over n
    G = torch.einsum("ni,nj,kj->k", x.square(), a, c)
    # R = sum_k G_k h^k with h^k = sum_ij w1_ji^2 w2_kj^2; score = |dR/d theta^2| theta^2
    v = path_values(w1.square(), w2.square())  # [i, j, k]
    expected_w1 = (v * G[None, None, :]).sum(2).T.abs()
    expected_w2 = (v * G[None, None, :]).sum(0).T.abs()
    s = on_cpu(score(net, method, data=data))
    torch.testing.assert_close(s["fc1.weight"], expected_w1, rtol=1e-5, atol=0)
    torch.testing.assert_close(s["fc2.weight"], expected_w2, rtol=1e-5, atol=0)
    if method == "px_literal":
        assert torch.allclose(G, G[0].expand_as(G))  # every output gets the same data factor


def test_snip_equals_finite_differences_of_the_loss():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    data = [(x.double(), y) for x, y in batches(n=2, size=6, shape=(5,), classes=3)]

    def loss(model):
        return sum(F.cross_entropy(model(x), y) for x, y in data)

    s = score(net, "snip", data=data)
    h = 1e-6
    for name in ("0.weight", "2.weight"):
        weight = dict(net.named_parameters())[name]
        fd = torch.zeros_like(weight)
        for idx in range(weight.numel()):
            plus, minus = copy.deepcopy(net), copy.deepcopy(net)
            dict(plus.named_parameters())[name].data.view(-1)[idx] += h
            dict(minus.named_parameters())[name].data.view(-1)[idx] -= h
            fd.view(-1)[idx] = (loss(plus) - loss(minus)) / (2 * h)
        torch.testing.assert_close(s[name], (fd * weight.detach()).abs(), rtol=1e-6, atol=1e-12)


def test_grasp_equals_theta_times_hessian_gradient():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    data = [(x.double(), y) for x, y in batches(n=2, size=6, shape=(4,), classes=3)]
    params = {n: p.detach() for n, p in net.named_parameters()}
    names = ["0.weight", "2.weight"]

    def loss(w1, w2):
        state = {**params, "0.weight": w1, "2.weight": w2}
        return sum(
            F.cross_entropy(torch.func.functional_call(net, state, (x,)) / 200.0, y)
            for x, y in data
        )

    w = tuple(params[n] for n in names)
    g = torch.func.grad(loss, argnums=(0, 1))(*w)
    hess = torch.func.hessian(loss, argnums=(0, 1))(*w)
    s = score(net, "grasp", data=data)
    for a, name in enumerate(names):
        hg = sum(
            (hess[a][b].reshape(w[a].numel(), w[b].numel()) @ g[b].reshape(-1)).reshape(w[a].shape)
            for b in range(2)
        )
        torch.testing.assert_close(s[name], w[a] * hg, rtol=1e-8, atol=1e-14)


def test_ntksap_equals_the_finite_difference_ntk_estimate_on_a_linear_layer():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 3, bias=False)).double()  # f - f' cancels in float32
    x_shape = (5, 4)
    masks = {"0.weight": torch.rand(3, 4) > 0.3}
    s = score(net, "ntksap", masks=masks, seed=11, hparams={"input_shape": x_shape})
    # the draws in order: fresh weights, input, perturbation
    g = torch.Generator().manual_seed(11)
    torch.randn((3, 4), generator=g, dtype=torch.float64)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    delta = torch.randn((3, 4), generator=g, dtype=torch.float64)
    m = masks["0.weight"].double()
    # f - f' = -eps (delta * m) x, so d||f - f'||^2 / dm = 2 eps^2 (sum_n r_n x_n^T) * delta
    r = x @ (0.01 * delta * m).T  # (n, out)
    expected = (2 * 0.01 * (r.T @ x) * delta * m).abs()
    torch.testing.assert_close(s["0.weight"], expected, rtol=1e-7, atol=1e-15)


# -- selection, schedules, determinism ----------------------------------------------------


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_schedules_hit_the_exact_density(schedule):
    net = SmallResNet()
    total = sum(w.numel() for n, w in net.named_parameters() if n in prunable_names(net))
    for density in (0.64, 0.1, 0.018):
        masks = prune_at_init(net, "magnitude", density, rounds=4, schedule=schedule)
        assert sum(int(m.sum()) for m in masks.values()) == round(density * total)
    d = round_densities(0.1, 4, schedule)
    if schedule == "exponential":
        assert d == pytest.approx([0.1**0.25, 0.1**0.5, 0.1**0.75, 0.1])
    else:
        assert d == pytest.approx([0.775, 0.55, 0.325, 0.1])
    assert d[-1] == 0.1


def test_rounds_are_nested_and_rescore_the_masked_network(device):
    net, data = SmallResNet().to(device), batches()
    one = prune_at_init(net, "synflow", 0.05, data=data, rounds=1)
    many = prune_at_init(net, "synflow", 0.05, data=data, rounds=10)
    half = prune_at_init(net, "synflow", 0.05**0.5, data=data, rounds=5)
    assert any(not torch.equal(one[n], many[n]) for n in one)  # iteration changes the mask
    assert all(bool((many[n] <= half[n]).all()) for n in many)  # later rounds prune inside


def test_keep_top_breaks_ties_by_index_and_skips_pruned_weights():
    scores = {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([1.0, 5.0])}
    alive = {"a": torch.tensor([True, True, True]), "b": torch.tensor([True, False])}
    kept = keep_top(scores, alive, 3)
    assert kept["a"].tolist() == [True, True, True] and kept["b"].tolist() == [False, False]
    low = keep_top({"a": torch.tensor([3.0, -1.0, 2.0])}, {"a": torch.ones(3, dtype=bool)}, 1, True)
    assert low["a"].tolist() == [False, True, False]


def test_invert_keeps_the_lowest_scores():
    net = SmallResNet()
    masks = prune_at_init(net, "magnitude", 0.3, invert=True)
    params = dict(net.named_parameters())
    kept = torch.cat([params[n].detach().abs()[m] for n, m in masks.items()])
    dropped = torch.cat([params[n].detach().abs()[~m] for n, m in masks.items()])
    assert kept.max() <= dropped.min()


@pytest.mark.parametrize("method", ["random", "ntksap", "px"])
def test_masks_are_deterministic_for_a_seed(method, device):
    net, data = SmallResNet().to(device), batches()
    a = prune_at_init(net, method, 0.2, data=data, rounds=2, seed=3)
    b = prune_at_init(net, method, 0.2, data=data, rounds=2, seed=3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    if method != "px":
        c = prune_at_init(net, method, 0.2, data=data, rounds=2, seed=4)
        assert any(not torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("make", [lambda: TwoLayer(8, 16, 4), SmallResNet])
def test_px_literal_masks_equal_synflow_l2_masks(make):
    torch.manual_seed(7)
    net = make()
    shape = (8,) if isinstance(net, TwoLayer) else (3, 8, 8)
    data = batches(shape=shape, classes=4)
    for density in (0.5, 0.2, 0.05):
        lit = prune_at_init(net, "px_literal", density, data=data)
        l2 = prune_at_init(net, "synflow_l2", density, data=data)
        assert all(torch.equal(lit[n], l2[n]) for n in lit)


def test_px_masks_depend_on_the_data():
    torch.manual_seed(8)
    net = SmallResNet()
    a = prune_at_init(net, "px", 0.1, data=batches(seed=0))
    b = prune_at_init(net, "px", 0.1, data=batches(seed=1, shift=0.5))
    assert any(not torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(a[n], prune_at_init(net, "px", 0.1, data=batches(seed=0))[n]) for n in a)


# -- the model handed in ------------------------------------------------------------------


def test_the_model_handed_in_is_left_exactly_as_it_was():
    torch.manual_seed(9)
    net = SmallResNet()
    net(torch.randn(4, 3, 8, 8))  # non-default running statistics
    net.bn1.eval()  # a mixed train/eval state
    net.stem.weight.requires_grad_(False)
    state = copy.deepcopy(net.state_dict())
    modes = {n: m.training for n, m in net.named_modules()}
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    data = batches()
    for method in method_names():
        prune_at_init(net, method, 0.2, data=data, rounds=2)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert modes == {n: m.training for n, m in net.named_modules()}
    assert grads == {n: p.requires_grad for n, p in net.named_parameters()}
    assert all(p.grad is None for p in net.parameters())


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"method": "snipp"}, ["method", "'snipp'", "px_literal"]),
        ({"density": 0.0}, ["density", "0.0", "(0, 1]"]),
        ({"density": 1.5}, ["density", "1.5", "(0, 1]"]),
        ({"density": math.nan}, ["density", "nan"]),
        ({"rounds": 0}, ["rounds", "0", ">= 1"]),
        ({"schedule": "cosine"}, ["schedule", "'cosine'", "exponential", "linear"]),
        ({"method": "snip", "data": None}, ["snip", "data"]),
        ({"method": "px", "data": None}, ["px", "data"]),
        ({"method": "synflow", "data": None}, ["synflow", "input_shape"]),
        ({"method": "grasp", "hparams": {"temperature": -1}}, ["temperature"]),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, words):
    args = {"model": SmallResNet(), "method": "magnitude", "density": 0.5, "data": batches()}
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        prune_at_init(**args)
    for word in words:
        assert word in str(err.value)


def test_data_free_methods_run_without_data():
    net = SmallResNet()
    total = sum(p.numel() for n, p in net.named_parameters() if n in prunable_names(net))
    for method, hp in [
        ("random", None),
        ("magnitude", None),
        ("synflow", {"input_shape": (3, 8, 8)}),
        ("synflow_l2", {"input_shape": (3, 8, 8)}),
        ("ntksap", {"input_shape": (4, 3, 8, 8)}),
    ]:
        masks = prune_at_init(net, method, 0.25, hparams=hp)
        assert sum(int(m.sum()) for m in masks.values()) == round(0.25 * total)


# -- shuffle and scoring batches ----------------------------------------------------------


def test_shuffle_keeps_each_layers_count_and_moves_weights():
    masks = prune_at_init(SmallResNet(), "magnitude", 0.3)
    shuffled = shuffle_masks(masks, seed=1)
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {
        n: int(m.sum()) for n, m in masks.items()
    }
    assert all(not torch.equal(shuffled[n], masks[n]) for n in masks)
    assert all(torch.equal(shuffled[n], shuffle_masks(masks, seed=1)[n]) for n in masks)


def test_scoring_batches_are_class_balanced_and_distinct():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(600, dtype=torch.float32)[:, None].repeat(1, 12)
    y = torch.randint(0, 10, (600,), generator=g)
    out = scoring_batches(x, y, 10, batches=3, batch_size=25, seed=1, image_shape=(3, 2, 2))
    assert [b[0].shape for b in out] == [torch.Size([25, 3, 2, 2])] * 3
    counts = torch.stack([torch.bincount(b[1], minlength=10) for b in out])
    assert counts.min() == 2 and counts.max() == 3
    assert (counts.sum(0) - counts.sum(0).min()).max() <= 1
    ids = torch.cat([b[0][:, 0, 0, 0] for b in out]).long()
    assert len(set(ids.tolist())) == 75
    assert torch.equal(y[ids], torch.cat([b[1] for b in out]))  # labels stay with their images
    with pytest.raises(ValueError, match="class 3 has 1 samples"):
        y2 = y.clone()
        y2[y2 == 3] = 4
        y2[0] = 3
        scoring_batches(x, y2, 10, batches=3, batch_size=25)


def test_scores_and_masks_follow_the_model_to_its_device(device):
    net = SmallResNet().to(device)
    data = batches()
    total = sum(p.numel() for n, p in net.named_parameters() if n in prunable_names(net))
    for method in method_names():
        s = score(net, method, data=data)
        assert all(t.device.type == device.type for t in s.values())
        masks = prune_at_init(net, method, 0.2, data=data, rounds=2)
        assert all(m.device.type == device.type and m.dtype == torch.bool for m in masks.values())
        assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total), method


def test_layer_widths_count_active_units_and_spot_a_collapsed_layer():
    from lotterylab.platform.metrics.width import layer_widths

    conv = torch.zeros(4, 2, 3, 3, dtype=torch.bool)
    conv[0, 1, 2, 2] = True  # channel 0 keeps one weight
    conv[2] = True  # channel 2 keeps its whole kernel
    fc = torch.tensor([[True, False, False, False], [False, False, False, False]])
    dead = torch.zeros(3, 5, dtype=torch.bool)
    w = layer_widths({"conv.weight": conv, "fc.weight": fc})
    assert w.active_units == {"conv.weight": 2, "fc.weight": 1}
    assert w.total_units == {"conv.weight": 4, "fc.weight": 2}
    assert w.layer_density == pytest.approx({"conv.weight": 19 / 72, "fc.weight": 1 / 8})
    assert w.density == pytest.approx(20 / 80)
    assert not w.collapsed
    w = layer_widths({"conv.weight": conv, "fc.weight": fc, "out.weight": dead})
    assert w.active_units["out.weight"] == 0 and w.collapsed
    assert w.density == pytest.approx(20 / 95)
    with pytest.raises(AttributeError):
        w.density = 1.0  # frozen
