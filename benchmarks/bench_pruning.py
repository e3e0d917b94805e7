"""Benchmark of pruning-at-initialisation scoring (``lotterylab.platform.pruning``).

Part 1: one scoring round of each method on ResNet-20 (CIFAR-10 shapes, 2 batches of 128
random inputs, 10 classes), against a plain reference written here the way public PaI code is
written: a deepcopy of the model per step, weights rewritten in place, forward hooks on the ReLU
modules for PX's activation patterns. Both run in the same process, so the ratio ours /
reference holds on a shared machine even when the absolute times do not.

Part 2: every method scores VGG-16-bn (32x32, 100 classes), ResNet-18 for 64x64 inputs
(200 classes) and ResNet-50 (64x64, batch 8, 1000 classes) once, then the global top-k is
taken at every density of paper 2's grid (0.8^(2k), k = 1..9); the kept counts are checked
and the scoring times recorded.

Times are wall-clock seconds, best and median of N. Run from the repository root:

    .venv/bin/python benchmarks/bench_pruning.py [--quick] [--out benchmarks/results/pruning.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import TypeAdapter
from torch import nn
from torch.nn.utils import parametrize

from lotterylab.platform.models import build_model
from lotterylab.platform.pruning import keep_top, method_names, prunable_names, score
from lotterylab.platform.spec import ModelSpec

GRID = [0.8 ** (2 * k) for k in range(1, 10)]


def make_model(name, image_shape, classes):
    spec = TypeAdapter(ModelSpec).validate_python({"name": name})
    return build_model(spec, image_shape, classes, 0)


BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def timings(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def random_batches(n, size, shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((size, *shape), generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


# -- the reference: copies, in-place rewrites, hooks --------------------------------------


def prunable(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def apply_masks_(model, masks):
    with torch.no_grad():
        for n, m in prunable(model):
            m.weight.mul_(masks[f"{n}.weight"])


def collect(model, fn):
    return {f"{n}.weight": fn(m.weight) for n, m in prunable(model)}


def ref_random(model, masks, data):
    return collect(model, lambda w: torch.rand_like(w))


def ref_magnitude(model, masks, data):
    return collect(model, lambda w: w.detach().abs())


def ref_snip(model, masks, data):
    net = copy.deepcopy(model).train()
    apply_masks_(net, masks)
    for x, y in data:
        F.cross_entropy(net(x), y).backward()
    return collect(net, lambda w: (w.grad * w).detach().abs())


def ref_grasp(model, masks, data, temp=200.0):
    net = copy.deepcopy(model).train()
    apply_masks_(net, masks)
    weights = [m.weight for _, m in prunable(net)]
    g = None
    for x, y in data:
        grads = torch.autograd.grad(F.cross_entropy(net(x) / temp, y), weights)
        g = list(grads) if g is None else [a + b for a, b in zip(g, grads, strict=True)]
    for x, y in data:
        grads = torch.autograd.grad(F.cross_entropy(net(x) / temp, y), weights, create_graph=True)
        sum((a * b.detach()).sum() for a, b in zip(grads, g, strict=True)).backward()
    return collect(net, lambda w: (w.grad * w).detach())


def _linear_net(model, masks, transform):
    net = copy.deepcopy(model).double().eval()
    apply_masks_(net, masks)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(transform(t))
    return net


def ref_synflow(model, masks, data):
    net = _linear_net(model, masks, torch.abs)
    net(torch.ones((1, *data[0][0].shape[1:]), dtype=torch.float64)).sum().backward()
    return collect(net, lambda w: (w.grad * w).detach().abs())


def ref_synflow_l2(model, masks, data):
    net = _linear_net(model, masks, torch.square)
    net(torch.ones((1, *data[0][0].shape[1:]), dtype=torch.float64)).sum().backward()
    return collect(net, lambda w: (w.grad * w).detach().abs())


class MaskBy(nn.Module):
    """weight -> weight * mask, with the mask a leaf that collects gradients."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, weight):
        return weight * self.mask


def ref_ntksap(model, masks, data, eps=0.01):
    net, moved = copy.deepcopy(model), copy.deepcopy(model)
    leaves = {n: masks[n].float().requires_grad_(True) for n in masks}
    for copy_ in (net, moved):
        for n, m in prunable(copy_):
            parametrize.register_parametrization(m, "weight", MaskBy(leaves[f"{n}.weight"]))
            m.parametrizations.weight.original.requires_grad_(False)
    for x, _ in data:
        with torch.no_grad():
            for _, m in prunable(net):
                nn.init.kaiming_normal_(m.parametrizations.weight.original)
            for m in net.modules():
                if isinstance(m, BN):
                    m.reset_running_stats()
                    m.momentum = 1.0
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        inp = torch.randn_like(x)
        net.train()
        with torch.no_grad():
            net(inp)
        net.eval()
        out = net(inp)
        with torch.no_grad():
            for (_, a), (_, b) in zip(prunable(net), prunable(moved), strict=True):
                w = a.parametrizations.weight.original
                b.parametrizations.weight.original.copy_(w + eps * torch.randn_like(w))
            for a, b in zip(net.modules(), moved.modules(), strict=True):
                if isinstance(a, BN):
                    b.running_mean.copy_(a.running_mean)
                    b.running_var.copy_(a.running_var)
                    b.weight.copy_(a.weight)
                    b.bias.copy_(a.bias)
        moved.eval()
        (out - moved(inp)).square().sum().backward()
    return {n: (leaf.grad * leaf).detach().abs() for n, leaf in leaves.items()}


def ref_px(model, masks, data, keep_classifier=True):
    last = prunable(model)[-1][0]
    h = copy.deepcopy(model).double().eval()
    g = copy.deepcopy(model).double().eval()
    f = copy.deepcopy(model).eval()
    for net in (h, g, f):
        apply_masks_(net, masks)
    with torch.no_grad():
        for _, m in prunable(h):
            m.weight.square_()
        for n, m in prunable(g):
            if not (keep_classifier and n == last):
                m.weight.copy_((m.weight != 0).double())
        for net in (h, g):
            for m in net.modules():
                if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                    m.bias.zero_() if net is g else m.bias.square_()
    relus = lambda net: [m for m in net.modules() if isinstance(m, nn.ReLU)]  # noqa: E731
    for m in relus(h):
        m.register_forward_hook(lambda mod, inp, out: inp[0])
    total = 0.0
    for x, _ in data:
        gates = []
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, gates=gates: gates.append(out > 0))
            for m in relus(f)
        ]
        with torch.no_grad():
            f(x)
        for hk in hooks:
            hk.remove()
        queue = iter(gates)
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, queue=queue: inp[0] * next(queue))
            for m in relus(g)
        ]
        with torch.no_grad():
            total = total + g(x.double().square()).sum(0)
        for hk in hooks:
            hk.remove()
    (h(torch.ones((1, *data[0][0].shape[1:]), dtype=torch.float64)) * total).sum().backward()
    return collect(h, lambda w: (w.grad * w).detach().abs())


REFERENCES = {
    "random": ref_random,
    "magnitude": ref_magnitude,
    "snip": ref_snip,
    "grasp": ref_grasp,
    "synflow": ref_synflow,
    "synflow_l2": ref_synflow_l2,
    "ntksap": ref_ntksap,
    "px": ref_px,
    "px_literal": lambda model, masks, data: ref_px(model, masks, data, keep_classifier=False),
}


# -- the runs -----------------------------------------------------------------------------


def dense(model):
    return {
        n: torch.ones_like(p, dtype=torch.bool)
        for n, p in model.named_parameters()
        if n in prunable_names(model)
    }


def resnet20_table(repeats, batch):
    model = make_model("resnet20", (3, 32, 32), 10)
    data = random_batches(2, batch, (3, 32, 32), 10)
    masks = dense(model)
    rows = {}
    for name in method_names():
        ours = timings(lambda name=name: score(model, name, masks, data, seed=0), repeats)
        ref_fn = REFERENCES[name]
        ref = timings(lambda ref_fn=ref_fn: ref_fn(model, masks, data), repeats)
        rows[name] = {"ours": ours, "reference": ref, "ratio": ours["best_s"] / ref["best_s"]}
        print(
            f"resnet20 {name:11s} ours {ours['best_s']:.3f}s  ref {ref['best_s']:.3f}s  "
            f"ratio {rows[name]['ratio']:.2f}",
            flush=True,
        )
    return rows


def grid_table(label, spec_name, image_shape, classes, batch):
    model = make_model(spec_name, image_shape, classes)
    data = random_batches(2, batch, image_shape, classes)
    masks = dense(model)
    total = sum(m.numel() for m in masks.values())
    rows = {}
    for name in method_names():
        start = time.perf_counter()
        scores = score(model, name, masks, data, seed=0)
        elapsed = time.perf_counter() - start
        kept = [
            sum(int(m.sum()) for m in keep_top(scores, masks, round(d * total)).values())
            for d in GRID
        ]
        ok = kept == [round(d * total) for d in GRID]
        rows[name] = {"scoring_s": elapsed, "kept_counts_exact": ok}
        print(f"{label} {name:11s} {elapsed:.3f}s exact={ok}", flush=True)
        if not ok:
            raise SystemExit(f"{label} {name}: kept counts {kept} do not match the grid")
    return {
        "model": spec_name,
        "input": list(image_shape),
        "classes": classes,
        "batches": [2, batch],
        "prunable_weights": total,
        "methods": rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, one repeat")
    parser.add_argument("--out", default="benchmarks/results/pruning.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = os.getloadavg()[0]
    batch, repeats = (16, 1) if args.quick else (128, 3)
    result = {
        "date": started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_start": load,
        "resnet20": {
            "input": [3, 32, 32],
            "classes": 10,
            "batches": [2, batch],
            "methods": resnet20_table(repeats, batch),
        },
        "grid": GRID,
        "models": [
            grid_table("vgg16_bn", "vgg16_bn", (3, 32, 32), 100, 8 if args.quick else 16),
            grid_table("resnet18", "resnet18", (3, 64, 64), 200, 8 if args.quick else 16),
            grid_table("resnet50", "resnet50", (3, 64, 64), 1000, 8),
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
