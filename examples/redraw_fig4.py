"""Redraw paper 1 Fig. 4B (pre-activation kurtosis vs sparsity) from stored tables alone.

    python examples/redraw_fig4.py ./results/paper1 s3://bucket/results/paper1-clone -o fig4b.png

Several experiments are drawn side by side as ``<experiment>/<method>`` lines.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lotterylab.analysis import open_experiments, seed_stats  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", help="experiment URI(s)")
    parser.add_argument("-o", "--output", default="fig4b.png", help="PNG to write")
    args = parser.parse_args(argv)

    group = open_experiments(args.experiments)
    rows = group.kurtosis()
    if rows.empty:
        parser.error(f"no kurtosis rows in {', '.join(args.experiments)}")
    if len(group) > 1:
        rows["method"] = rows["experiment"] + "/" + rows["method"]
    stats = seed_stats(
        rows, ["kurtosis_mean"], ["dataset", "method", "round"], means=["sparsity_first_layer"]
    )

    datasets = sorted(stats["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method, line in stats[stats["dataset"] == dataset].groupby("method"):
            x = 100 * line["sparsity_first_layer_mean"]
            ax.plot(x, line["kurtosis_mean_mean"], marker="o", ms=3, label=method)
            ax.fill_between(x, line["kurtosis_mean_min"], line["kurtosis_mean_max"], alpha=0.2)
        ax.axhline(3.0, color="grey", linestyle=":")
        ax.set(title=dataset, xlabel="first-layer sparsity (%)")
        ax.legend(fontsize="small")
    axes[0, 0].set_ylabel("pre-activation kurtosis (mean over units, classes)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
