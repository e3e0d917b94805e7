"""The platform's training loops against plain PyTorch loops on the same model, data and masks.

* IMP-FCN: paper 1's net (BN-3072-1024-1024-1000, batch 40, half of each hidden layer's weights
  masked, output layer dense) trained by ``platform.training.train`` against a plain loop over
  an ``nn.Sequential`` with the same weights: data in memory, one index per step, SGD, the mask
  re-applied after each step.
* PaI ResNet-20: ``platform.training.train_epoch`` (batch 128, Nesterov SGD with momentum and
  weight decay, 90 % of the conv and linear weights masked) against the same plain loop on a
  copy of the model, both without augmentation so that only the loop differs; the platform's
  loop with its crop-and-flip augmentation is timed beside them for reference.

Both sides of a ratio run in this process with their repeats interleaved (best of N); the
matmul peak of the machine is recorded beside them. Run from the repository root:

    .venv/bin/python benchmarks/bench_training.py [--quick] [--threads 1]
        [--out benchmarks/results/training.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from common import environment, interleaved, mm_peak_gflops
from pydantic import TypeAdapter
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.models import FCNModel, build_model, prunable_names
from lotterylab.platform.models.masking import apply_masks
from lotterylab.platform.spec import ModelSpec, TrainingSpec
from lotterylab.platform.training import make_optimizer, train, train_epoch

IMAGE = (3, 32, 32)


def random_data(n: int, classes: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3 * 32 * 32, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return ImageDataset("bench", x, y, x[:100], y[:100], IMAGE, classes)


def random_masks(model: nn.Module, names: list[str], density: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) < density for n in names}


def plain_loop(model, optimizer, x_all, y_all, order, batch, masks):
    """The reference: index the in-memory data, step, re-apply the masks."""
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(params[n].dtype)) for n, m in masks.items()]
    model.train()
    for step in range(len(order) // batch):
        idx = order[step * batch : (step + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)


def fcn_as_sequential(fcn: nn.Module) -> nn.Sequential:
    """The same FCN as a plain ``nn.Sequential`` of stock modules, weights copied."""
    layers: list[nn.Module] = []
    last = len(fcn.layers) - 1
    for i, layer in enumerate(fcn.layers):
        norm = nn.BatchNorm1d(layer.in_features)
        norm.load_state_dict(fcn.norms[i].state_dict())
        linear = nn.Linear(layer.in_features, layer.out_features)
        linear.load_state_dict({"weight": layer.weight.data, "bias": layer.bias.data})
        layers += [norm, linear] + ([nn.ReLU()] if i < last else [])
    return nn.Sequential(*layers)


def bench_fcn(steps: int, repeats: int) -> dict:
    batch, classes = 40, 1000
    data = random_data(steps * batch, classes, 0)  # one epoch: both loops see every image once
    spec = TrainingSpec(lr=0.05, batch_size=batch, steps=steps, rewind_step=0)
    fcn = build_model(FCNModel(hidden=[1024, 1024]), IMAGE, classes, seed=0)
    names = prunable_names(fcn, prune_output=False)
    masks = random_masks(fcn, names, 0.5, 1)
    apply_masks(fcn, masks)
    plain = fcn_as_sequential(fcn)
    plain_masks = {f"{3 * i + 1}.weight": masks[f"layers.{i}.weight"] for i in range(len(names))}
    x_all, y_all = data.train_x, data.train_y
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(2))
    plain_opt = torch.optim.SGD(plain.parameters(), lr=spec.lr)

    runs = {
        "platform": lambda: train(fcn, data, spec, seed=3, masks=masks),
        "plain": lambda: plain_loop(plain, plain_opt, x_all, y_all, order, batch, plain_masks),
    }
    times = interleaved(runs, repeats)
    flops = 6 * batch * sum(p.numel() for p in fcn.parameters())
    return {
        "model": "fcn 3072-1024-1024-1000, batch norm",
        "batch": batch,
        "density_hidden": 0.5,
        "steps_per_repeat": steps,
        "repeats": repeats,
        **{f"{k}_steps_per_s": steps / v["best_s"] for k, v in times.items()},
        "platform_over_plain_time": times["platform"]["best_s"] / times["plain"]["best_s"],
        "platform_gflops": flops * steps / times["platform"]["best_s"] / 1e9,
        "times": times,
    }


def bench_resnet(steps: int, repeats: int) -> dict:
    batch, classes = 128, 10
    data = random_data(batch * steps, classes, 4)
    common = dict(
        optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=batch, epochs=1
    )
    plain_spec = TrainingSpec(**common)
    augmented_spec = TrainingSpec(**common, augment="crop_flip")
    model_spec = TypeAdapter(ModelSpec).validate_python({"name": "resnet20"})
    model = build_model(model_spec, IMAGE, classes, seed=0)
    masks = random_masks(model, prunable_names(model), 0.1, 5)
    apply_masks(model, masks)
    plain = copy.deepcopy(model)
    augmented = copy.deepcopy(model)
    optimizers = {m: make_optimizer(m, plain_spec) for m in (model, plain, augmented)}
    x_all = data.train_x.view(-1, *IMAGE)
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(6))
    cpu = torch.device("cpu")

    runs = {
        "platform": lambda: train_epoch(
            model, optimizers[model], data, plain_spec, 7, 0, cpu, masks
        ),
        "plain": lambda: plain_loop(
            plain, optimizers[plain], x_all, data.train_y, order, batch, masks
        ),
        "platform_crop_flip": lambda: train_epoch(
            augmented, optimizers[augmented], data, augmented_spec, 7, 0, cpu, masks
        ),
    }
    times = interleaved(runs, repeats)
    return {
        "model": "resnet20 (CIFAR), 90 % of weights masked",
        "batch": batch,
        "steps_per_repeat": steps,
        "repeats": repeats,
        **{f"{k}_steps_per_s": steps / v["best_s"] for k, v in times.items()},
        "platform_over_plain_time": times["platform"]["best_s"] / times["plain"]["best_s"],
        "times": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"mode": "quick" if args.quick else "full", "environment": environment()}
    report["mm_peak_gflops_n2048"] = mm_peak_gflops()
    fcn_steps, resnet_steps, repeats = (40, 4, 3) if args.quick else (150, 10, 5)
    print("IMP-FCN loop vs plain loop", flush=True)
    report["imp_fcn"] = bench_fcn(fcn_steps, repeats)
    print(f"  ratio {report['imp_fcn']['platform_over_plain_time']:.3f}", flush=True)
    print("PaI ResNet-20 loop vs plain loop", flush=True)
    report["pai_resnet20"] = bench_resnet(resnet_steps, repeats)
    print(f"  ratio {report['pai_resnet20']['platform_over_plain_time']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
