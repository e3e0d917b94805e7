"""Do pruning-at-initialisation masks localise? First-layer RF widths of every PaI method.

Prunes paper 1's FCN on the data set of a spec (default: ``experiments/paper1_cpu.yaml``) with
each registered method at one global density, and prints the median and mean RF width (σ_x) of
the first-layer masks over seeds, next to a dense layer's width. Compare with IMP's widths in
the spec's report (``lotterylab figures``).

    python examples/pai_rf_width.py [--spec SPEC] [--dataset NAME] [--density D] [--rounds T]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.metrics import rf_width_summary
from lotterylab.platform.models import build_model, first_layer_name
from lotterylab.platform.pruning import method_names, prune_at_init, scoring_batches
from lotterylab.platform.spec import load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="experiments/paper1_cpu.yaml")
    parser.add_argument("--dataset", help="data set of the spec (default: its first)")
    parser.add_argument("--density", type=float, default=0.6**6, help="fraction of weights kept")
    parser.add_argument("--rounds", type=int, default=10, help="scoring rounds (all methods)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    spec, _ = load_spec(args.spec)
    name = args.dataset or spec.datasets[0].name
    data = build_dataset(spec.datasets, name)
    count = min(data.size("train"), 4096)
    x, y = data.batch("train", torch.arange(count)), data.train_y[:count]
    print(f"{name}: FCN {spec.model.hidden}, density {args.density:.4f}, T = {args.rounds}")
    print(f"{'method':12s} {'RF median':>10s} {'RF mean':>10s} {'1st-layer density':>18s}")
    for method in ["dense", *method_names()]:
        medians, means, densities = [], [], []
        for seed in args.seeds:
            model = build_model(spec.model, data.image_shape, data.num_classes, seed)
            first = first_layer_name(model)
            if method == "dense":
                mask = torch.ones_like(dict(model.named_parameters())[first], dtype=torch.bool)
            else:
                batches = scoring_batches(
                    x, y, data.num_classes, seed=seed, image_shape=data.image_shape
                )
                masks = prune_at_init(
                    model, method, args.density, batches, rounds=args.rounds, seed=seed
                )
                mask = masks[first]
            summary = rf_width_summary(mask, data.image_shape)
            medians.append(summary.median_x)
            means.append(summary.mean_x)
            densities.append(float(mask.float().mean()))
        print(
            f"{method:12s} {statistics.fmean(medians):10.2f} {statistics.fmean(means):10.2f} "
            f"{statistics.fmean(densities):18.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
