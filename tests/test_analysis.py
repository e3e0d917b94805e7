"""Analysis on a small synthetic experiment in a real store, with hand-checkable values.

Two data sets x three seeds x three methods x rounds 0..3. Per round r and seed s:
sparsity = 1 - 0.8**r (both overall and first layer); RF width = base + 0.5 * (s - 1) with base
4 - r (nlgp imp), 4 - 0.5 r (nlgp oneshot) and 4 otherwise; test accuracy = 0.9 - 0.01 r +
0.01 (s - 1), null for the untrained random baseline after round 0. Two extra nulls check that
nulls are skipped: oneshot seed 2 accuracy at round 3, nlgp_clone random seed 0 RF width at round 3.
"""

from __future__ import annotations

import math
import uuid

import fsspec
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from lotterylab.analysis import aggregate_over_seeds, load_rounds, write_report
from lotterylab.analysis.figures import (
    MaskPanel,
    plot_first_layer_masks,
    unit_image,
    units_with_most_weights,
)
from lotterylab.analysis.report import first_layer_mask_panels
from lotterylab.platform.imp.masks import mask_after_round
from lotterylab.platform.store.experiment_store import ExperimentStore

DATASETS = {"nlgp": [1, 4, 4], "nlgp_clone": [3, 4, 4]}
SEEDS = (0, 1, 2)
METHODS = ("imp", "oneshot", "random")
LAST_ROUND = 3
HIDDEN = 10
STD_OF_THREE_STEPS = math.sqrt(2 / 3)  # ddof=0 std of (-1, 0, 1)


def rf_width_value(dataset: str, method: str, round_: int, seed: int) -> float | None:
    if (dataset, method, round_, seed) == ("nlgp_clone", "random", 3, 0):
        return None
    base = 4.0
    if dataset == "nlgp" and method == "imp":
        base = 4.0 - round_
    elif dataset == "nlgp" and method == "oneshot":
        base = 4.0 - 0.5 * round_
    return base + 0.5 * (seed - 1)


def accuracy_value(method: str, round_: int, seed: int) -> float | None:
    if (method == "random" and round_ > 0) or (method, round_, seed) == ("oneshot", 3, 2):
        return None
    return 0.9 - 0.01 * round_ + 0.01 * (seed - 1)


def make_row(dataset: str, seed: int, method: str, round_: int) -> dict:
    sparsity = 1 - 0.8**round_
    return {
        "experiment": "exp",
        "lineage_id": f"{dataset}-s{seed}",
        "kind": "imp",
        "method": method,
        "dataset": dataset,
        "model": "fc",
        "seed": seed,
        "round": round_,
        "sparsity": sparsity,
        "sparsity_first_layer": sparsity,
        "layer_sparsity": {"layers.0.weight": sparsity, "layers.1.weight": sparsity},
        "train_accuracy": None,
        "test_accuracy": accuracy_value(method, round_, seed),
        "rf_width_median": rf_width_value(dataset, method, round_, seed),
        "rf_width_mean": None,
        "rf_width_y_median": None,
        "rf_width_y_mean": None,
        "rf_width_cross_median": None,
        "rf_width_cross_mean": None,
        "empty_units": 0,
        "wall_time_s": 1.0,
    }


def removal_rounds(image_shape: list[int]) -> torch.Tensor:
    """Removal rounds cycling -1, 0, 1, 2, 3: after round 2, 2 of 5 weights are alive."""
    inputs = math.prod(image_shape)
    return (torch.arange(HIDDEN * inputs).reshape(HIDDEN, inputs) % 5 - 1).to(torch.int64)


def build_experiment(store: ExperimentStore) -> None:
    for dataset, image_shape in DATASETS.items():
        for seed in SEEDS:
            lineage_id = f"{dataset}-s{seed}"
            for method in METHODS:
                for round_ in range(LAST_ROUND + 1):
                    rows = [make_row(dataset, seed, method, round_)]
                    store.write_rows("rounds", lineage_id, f"r{round_}-{method}", rows)
                masks = {
                    "layers.0.weight": removal_rounds(image_shape),
                    "layers.1.weight": torch.full((2, HIDDEN), -1, dtype=torch.int64),
                }
                store.write_tensors(f"lineages/{lineage_id}/masks/{method}.pt", masks)
            lineage = {
                "lineage_id": lineage_id,
                "kind": "imp",
                "dataset": dataset,
                "model": "fc",
                "seed": seed,
                "image_shape": image_shape,
                "first_layer": "layers.0.weight",
                "methods": list(METHODS),
                "last_round": LAST_ROUND,
            }
            store.write_json(f"lineages/{lineage_id}/lineage.json", lineage)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ExperimentStore:
    experiment = ExperimentStore(str(tmp_path_factory.mktemp("results") / "exp"))
    build_experiment(experiment)
    return experiment


@pytest.fixture(scope="module")
def summary(store) -> pd.DataFrame:
    return aggregate_over_seeds(load_rounds(store), ["rf_width_median", "test_accuracy"])


def summary_row(summary: pd.DataFrame, dataset: str, method: str, round_: int) -> pd.Series:
    selected = summary[
        (summary["dataset"] == dataset)
        & (summary["method"] == method)
        & (summary["round"] == round_)
    ]
    assert len(selected) == 1
    return selected.iloc[0]


# -- tables ----------------------------------------------------------------------------------
def test_load_rounds_reads_every_row_sorted(store):
    rounds = load_rounds(store)
    assert len(rounds) == len(DATASETS) * len(SEEDS) * len(METHODS) * (LAST_ROUND + 1)
    keys = list(rounds[["dataset", "method", "seed", "round"]].itertuples(index=False))
    assert keys == sorted(keys)
    assert rounds["layer_sparsity"].iloc[-1] == pytest.approx(
        {"layers.0.weight": 0.488, "layers.1.weight": 0.488}
    )


# -- aggregate -------------------------------------------------------------------------------
def test_aggregate_gives_mean_min_max_and_population_std(summary):
    row = summary_row(summary, "nlgp", "imp", 3)
    assert row["rf_width_median_mean"] == pytest.approx(1.0)
    assert row["rf_width_median_min"] == pytest.approx(0.5)
    assert row["rf_width_median_max"] == pytest.approx(1.5)
    assert row["rf_width_median_std"] == pytest.approx(0.5 * STD_OF_THREE_STEPS)
    assert row["test_accuracy_mean"] == pytest.approx(0.87)
    assert row["test_accuracy_std"] == pytest.approx(0.01 * STD_OF_THREE_STEPS)
    assert row["sparsity_mean"] == pytest.approx(0.488)
    assert row["sparsity_first_layer_mean"] == pytest.approx(0.488)
    assert row["n_seeds"] == 3


def test_aggregate_has_one_row_per_dataset_method_round(summary):
    assert len(summary) == len(DATASETS) * len(METHODS) * (LAST_ROUND + 1)
    oneshot = summary_row(summary, "nlgp", "oneshot", 2)
    assert oneshot["rf_width_median_mean"] == pytest.approx(3.0)


def test_aggregate_skips_nulls(summary):
    oneshot = summary_row(summary, "nlgp", "oneshot", 3)
    assert oneshot["test_accuracy_mean"] == pytest.approx(0.865)  # seeds 0 and 1 only
    assert oneshot["test_accuracy_min"] == pytest.approx(0.86)
    assert oneshot["test_accuracy_max"] == pytest.approx(0.87)
    assert oneshot["test_accuracy_std"] == pytest.approx(0.005)
    clone_random = summary_row(summary, "nlgp_clone", "random", 3)
    assert clone_random["rf_width_median_mean"] == pytest.approx(4.25)
    assert clone_random["rf_width_median_std"] == pytest.approx(0.25)
    assert clone_random["n_seeds"] == 3


def test_aggregate_all_null_group_is_nan_and_single_seed_std_is_zero():
    rows = pd.DataFrame(
        {
            "dataset": ["d", "d"],
            "method": ["random", "imp"],
            "round": [1, 1],
            "seed": [0, 0],
            "sparsity": [0.2, 0.2],
            "sparsity_first_layer": [0.3, 0.3],
            "test_accuracy": [None, 0.5],
        }
    )
    summary = aggregate_over_seeds(rows, ["test_accuracy"])
    imp, random = summary_row(summary, "d", "imp", 1), summary_row(summary, "d", "random", 1)
    assert imp["test_accuracy_std"] == 0.0
    assert imp["sparsity_first_layer_mean"] == pytest.approx(0.3)
    for stat in ("mean", "min", "max", "std"):
        assert math.isnan(random[f"test_accuracy_{stat}"])


# -- masks -----------------------------------------------------------------------------------
def test_units_with_most_weights_breaks_ties_by_index():
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    assert units_with_most_weights(mask, 4) == [1, 2, 0, 3]
    assert units_with_most_weights(mask, 2) == [1, 2]


def test_unit_image_grey_for_one_channel_and_rgb_by_channel_for_three():
    grey = unit_image(torch.tensor([1, 0, 0, 1], dtype=torch.bool), (1, 2, 2))
    np.testing.assert_array_equal(grey, [[1, 0], [0, 1]])
    # channel 0 and 1 survive at pixel (0, 0), channel 2 at pixel (1, 1)
    unit = torch.zeros(3, 2, 2, dtype=torch.bool)
    unit[0, 0, 0] = unit[1, 0, 0] = unit[2, 1, 1] = True
    rgb = unit_image(unit.reshape(-1), (3, 2, 2))
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], [1, 1, 0])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 1])
    np.testing.assert_array_equal(rgb[0, 1], [0, 0, 0])


def test_mask_panels_use_the_mask_of_the_last_round_for_the_lowest_seed(store):
    panels = first_layer_mask_panels(store, load_rounds(store))
    assert [(p.dataset, p.method, p.seed) for p in panels] == [
        (dataset, method, 0) for dataset in DATASETS for method in METHODS
    ]
    for panel in panels:
        expected = mask_after_round(removal_rounds(DATASETS[panel.dataset]), LAST_ROUND - 1)
        assert torch.equal(panel.mask, expected)
        assert panel.round == LAST_ROUND
        assert panel.sparsity == pytest.approx(0.6)


def test_three_channel_mask_figure_is_coloured(tmp_path):
    mask = torch.zeros(HIDDEN, 3 * 4 * 4, dtype=torch.bool)
    mask[:, :16] = True  # only the red channel survives
    panel = MaskPanel("cifar", "imp", 0, 3, (3, 4, 4), mask)
    path = tmp_path / "masks.png"
    plot_first_layer_masks([panel], str(path))
    image = matplotlib.image.imread(path)[..., :3]
    red = (image[..., 0] > 0.9) & (image[..., 1] < 0.1) & (image[..., 2] < 0.1)
    assert red.sum() > 100


# -- report ----------------------------------------------------------------------------------
REPORT_FILES = (
    "figures/rf_width_vs_sparsity.png",
    "figures/accuracy_vs_sparsity.png",
    "figures/first_layer_masks.png",
    "figures/fig1_masks.png",
    "figures/fig3_gaussian_clone.png",  # masks and RF widths; no example images in this store
    "figures/summary.md",
    "figures/report.md",  # Figs. 2, 4 and 5 are skipped: no components, RF means, cavity
)


@pytest.fixture(scope="module")
def written(store) -> list[str]:
    return write_report(store)


def test_report_returns_the_uris_written(store, written):
    assert written == [store.url(rel) for rel in REPORT_FILES]


@pytest.mark.parametrize("name", ["rf_width_vs_sparsity", "accuracy_vs_sparsity"])
def test_report_writes_two_panel_line_figures(written, store, name):
    image = matplotlib.image.imread(store.path(f"figures/{name}.png"))
    height, width = image.shape[:2]
    assert width > 1.5 * height > 500  # two panels side by side


def test_report_writes_one_mask_row_per_dataset_and_method(written, store):
    image = matplotlib.image.imread(store.path("figures/first_layer_masks.png"))
    height, width = image.shape[:2]
    assert height > 1000 and width > 1000  # six rows of eight units


def test_summary_md_has_a_table_per_dataset_with_the_aggregates(written, store):
    text = store.read_bytes("figures/summary.md").decode()
    assert "# Experiment `exp`" in text
    assert "6 lineages on nlgp, nlgp_clone" in text
    assert "## nlgp\n" in text and "## nlgp_clone\n" in text
    assert "| imp | 3 | 48.8% | 48.8% | 1.00 ± 0.41 (0.50–1.50) | 0.870 ± 0.008 | 3 |" in text
    assert "| oneshot | 3 | 48.8% | 48.8% | 2.50 ± 0.41 (2.00–3.00) | 0.865 ± 0.005 | 3 |" in text
    assert "| random | 3 | 48.8% | 48.8% | 4.25 ± 0.25 (4.00–4.50) | — | 3 |" in text
    assert "| random | 0 | 0.0% | 0.0% | 4.00 ± 0.41 (3.50–4.50) | 0.900 ± 0.008 | 3 |" in text


def test_report_works_on_a_non_local_fsspec_uri():
    uri = f"memory://lotterylab-test-{uuid.uuid4().hex}/exp"
    remote = ExperimentStore(uri)
    try:
        build_experiment(remote)
        written = write_report(remote)
        assert written[0] == f"{uri}/figures/rf_width_vs_sparsity.png"
        assert all(remote.exists(rel) for rel in REPORT_FILES)
    finally:
        fsspec.filesystem("memory").rm(remote.root, recursive=True)


def test_report_on_an_empty_store_names_the_experiment(tmp_path):
    empty = ExperimentStore(str(tmp_path / "never-ran"))
    with pytest.raises(ValueError, match="no results in .*never-ran: has the experiment run"):
        write_report(empty)
