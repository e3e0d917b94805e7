"""Paper 1 analysis: the experiment API on an IMP store, Figs. 1–5 and their numbers."""

from __future__ import annotations

import math

import matplotlib.image
import pandas as pd
import pytest
import torch

from lotterylab.analysis import (
    MissingArtifactError,
    open_experiment,
    open_experiments,
    seed_stats,
    write_report,
)
from lotterylab.analysis.paper1 import cavity_summary, fig4_summaries, last_round_rows
from lotterylab.platform.imp.masks import mask_after_round
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError

SEEDS = (0, 1, 2)
METHODS = ("imp", "oneshot", "random")
LAST_ROUND = 2
HIDDEN = 6
SHAPES = {"nlgp": [3, 4, 4], "nlgp_clone": [1, 4, 4]}
SLOPE = {"imp": 1.0, "oneshot": 0.5, "random": 0.0}
DPI = 120

SPEC = {
    "name": "p1",
    "kind": "imp",
    "storage": "./results",
    "seeds": list(SEEDS),
    "datasets": [
        {"name": "nlgp", "type": "nlgp", "grid": 4, "channels": 3, "xi": [1.0, 3.0]},
        {"name": "nlgp_clone", "type": "gaussian_clone", "of": "nlgp", "seed": 1},
    ],
    "model": {"name": "fcn", "hidden": [HIDDEN, 4], "batch_norm": True},
    "training": {"lr": 0.1, "batch_size": 50, "steps": 60, "rewind_step": 5},
    "imp": {"rounds": LAST_ROUND, "fraction": 0.3, "scope": "layer"},
    "resources": {"cpu": 1, "gpu": 0},
    "run": {"max_failures": 0},
}


def sparsity(round_: int) -> float:
    return 1 - 0.7**round_


def rf_width(dataset: str, method: str, round_: int, seed: int) -> float:
    drop = SLOPE[method] if dataset == "nlgp" else 0.0
    return 5.0 - drop * round_ + 0.2 * (seed - 1)


def kurtosis(method: str, round_: int, seed: int) -> float:
    return 3.0 + SLOPE[method] * round_ + 0.1 * (seed - 1)


def cavity(removed: int, evaluated: int, seed: int) -> float:
    group = 2 if removed < 0 else removed
    return (group - 0.5) * (evaluated + 1) + 0.01 * (seed - 1)


def identity(dataset: str, seed: int, method: str) -> dict:
    return {
        "experiment": "p1",
        "lineage_id": f"{dataset}-s{seed}",
        "kind": "imp",
        "method": method,
        "dataset": dataset,
        "model": "fcn",
        "seed": seed,
    }


def rounds_row(dataset: str, seed: int, method: str, round_: int) -> dict:
    width = rf_width(dataset, method, round_, seed)
    return {
        **identity(dataset, seed, method),
        "round": round_,
        "sparsity": sparsity(round_),
        "sparsity_first_layer": sparsity(round_),
        "layer_sparsity": {"layers.0.weight": sparsity(round_)},
        "train_accuracy": 0.95,
        "test_accuracy": 0.9 - 0.01 * round_ + 0.01 * (seed - 1),
        "rf_width_median": width - 0.5,
        "rf_width_mean": width,
        "rf_width_y_median": None,
        "rf_width_y_mean": None,
        "rf_width_cross_median": None,
        "rf_width_cross_mean": None,
        "empty_units": 0,
        "wall_time_s": 1.0,
    }


def removal_rounds(image_shape: list[int]) -> torch.Tensor:
    """Cycling -1, 0, 1: round 2 (after one pruning... two) keeps one weight in three."""
    inputs = math.prod(image_shape)
    return (torch.arange(HIDDEN * inputs).reshape(HIDDEN, inputs) % 3 - 1).to(torch.int64)


def build_imp_store(store: ExperimentStore, with_artifacts: bool = True) -> None:
    store.write_json("spec.resolved.json", SPEC)
    for dataset, shape in SHAPES.items():
        for seed in SEEDS:
            lineage_id = f"{dataset}-s{seed}"
            for method in METHODS:
                for n in range(LAST_ROUND + 1):
                    part = f"round-{n:04d}-{method}"
                    store.write_rows(
                        "rounds", lineage_id, part, [rounds_row(dataset, seed, method, n)]
                    )
                    kurt = {
                        **identity(dataset, seed, method),
                        "round": n,
                        "sparsity_first_layer": sparsity(n),
                        "kurtosis_mean": kurtosis(method, n, seed),
                        "kurtosis_all_mean": None,
                        "kurtosis_median": None,
                    }
                    store.write_rows("kurtosis", lineage_id, part, [kurt])
                if method != "oneshot":
                    rows = [
                        {
                            **identity(dataset, seed, method),
                            "evaluated_at_round": n,
                            "removed_at_round": r,
                            "mean": cavity(r, n, seed),
                            "count": 10,
                            "n_alive": 30,
                        }
                        for n in range(LAST_ROUND + 1)
                        for r in (0, 1, -1)
                        if r < 0 or r >= n
                    ]
                    store.write_rows("cavity", lineage_id, f"cavity-{method}", rows)
                if with_artifacts:
                    masks = {"layers.0.weight": removal_rounds(shape)}
                    store.write_tensors(f"lineages/{lineage_id}/masks/{method}.pt", masks)
            if with_artifacts:
                lineage = {
                    "lineage_id": lineage_id,
                    "kind": "imp",
                    "dataset": dataset,
                    "model": "fcn",
                    "seed": seed,
                    "image_shape": shape,
                    "first_layer": "layers.0.weight",
                    "methods": list(METHODS),
                    "last_round": LAST_ROUND,
                }
                store.write_json(f"lineages/{lineage_id}/lineage.json", lineage)
    if not with_artifacts:
        return
    for dataset, shape in SHAPES.items():
        dim = math.prod(shape)
        store.write_tensors(
            f"data/{dataset}/examples.pt",
            {
                "x": torch.linspace(-1, 1, 16 * dim).reshape(16, dim),
                "y": torch.arange(16) % 2,
                "image_shape": torch.tensor(shape),
            },
        )
    store.write_tensors(
        "data/components/sample_patches.pt",
        {
            "pca": torch.randn(9, 48, generator=torch.Generator().manual_seed(0)),
            "ica": torch.randn(9, 48, generator=torch.Generator().manual_seed(1)),
            "image_shape": torch.tensor([3, 4, 4]),
        },
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ExperimentStore:
    experiment = ExperimentStore(str(tmp_path_factory.mktemp("p1") / "p1"))
    build_imp_store(experiment)
    return experiment


@pytest.fixture(scope="module")
def written(store) -> list[str]:
    return write_report(store)


def only(frame: pd.DataFrame, **where) -> pd.Series:
    for key, value in where.items():
        frame = frame[frame[key] == value]
    assert len(frame) == 1, where
    return frame.iloc[0]


# -- the experiment API ----------------------------------------------------------------------
def test_open_experiment_reads_name_kind_spec_and_tables(store):
    exp = open_experiment(store.uri)
    assert (exp.name, exp.kind, exp.uri) == ("p1", "imp", store.uri)
    assert exp.spec["imp"]["fraction"] == 0.3
    assert exp.tables() == ["rounds", "kurtosis", "cavity"]


def test_table_adds_spec_and_dataset_columns(store):
    rounds = open_experiment(store.uri).rounds()
    assert len(rounds) == len(SHAPES) * len(SEEDS) * len(METHODS) * (LAST_ROUND + 1)
    keys = list(rounds[["dataset", "method", "seed", "round"]].itertuples(index=False))
    assert keys == sorted(keys)
    row = only(rounds, dataset="nlgp_clone", method="imp", seed=1, round=2)
    assert row["training.lr"] == 0.1
    assert row["imp.fraction"] == 0.3
    assert row["model.name"] == "fcn"
    assert row["model.hidden"] == (HIDDEN, 4)
    assert row["data.type"] == "gaussian_clone" and row["data.of"] == "nlgp"
    assert pd.isna(row["data.grid"])  # a field of the other data set only
    nlgp = only(rounds, dataset="nlgp", method="imp", seed=1, round=2)
    assert nlgp["data.grid"] == 4 and nlgp["data.xi"] == (1.0, 3.0)
    assert nlgp["layer_sparsity"] == pytest.approx({"layers.0.weight": 0.51})


def test_artifact_readers(store):
    exp = open_experiment(store.uri)
    assert exp.lineage_ids() == [f"{d}-s{s}" for d in SHAPES for s in SEEDS]
    mask = exp.first_layer_mask("nlgp-s0", "imp", 2)
    assert torch.equal(mask, mask_after_round(removal_rounds(SHAPES["nlgp"]), 1))
    assert float(mask.float().mean()) == pytest.approx(1 / 3)
    assert bool(exp.first_layer_mask("nlgp-s0", "imp", 0).all())  # round 0 is dense
    assert exp.examples("nlgp")["x"].shape == (16, 48)
    assert exp.component_sources() == ["sample_patches"]
    assert exp.components("sample_patches")["pca"].shape == (9, 48)
    with pytest.raises(MissingArtifactError, match="kurtosis of lineage 'nlgp-s0'"):
        exp.unit_kurtosis("nlgp-s0", "imp", 0)
    with pytest.raises(ValueError, match="round must be >= 0, got -1"):
        exp.masks("nlgp-s0", "imp", -1)


# -- the numbers behind the figures ----------------------------------------------------------
def test_fig4_summaries_give_mean_min_max_over_seeds(store):
    exp = open_experiment(store.uri)
    rf, kurt = fig4_summaries(exp.rounds(), exp.kurtosis())
    imp = only(kurt, dataset="nlgp", method="imp", round=2)
    assert (imp["kurtosis_mean_mean"], imp["kurtosis_mean_min"]) == pytest.approx((5.0, 4.9))
    assert imp["kurtosis_mean_max"] == pytest.approx(5.1)
    assert imp["sparsity_first_layer_mean"] == pytest.approx(0.51)
    assert imp["n_seeds"] == 3
    width = only(rf, dataset="nlgp", method="oneshot", round=2)
    assert (width["rf_width_mean_mean"], width["rf_width_mean_max"]) == pytest.approx((4.0, 4.2))


def test_last_round_rows_use_the_round_every_lineage_reached(store):
    rounds = open_experiment(store.uri).rounds()
    behind = rounds[~((rounds["lineage_id"] == "nlgp-s2") & (rounds["round"] == 2))]
    last = last_round_rows(behind)
    nlgp_imp = last[(last["dataset"] == "nlgp") & (last["method"] == "imp")]
    assert sorted(nlgp_imp["round"]) == [1, 1, 1]
    assert set(last[last["dataset"] == "nlgp_clone"]["round"]) == {2}


def test_cavity_summary_groups_by_evaluated_and_removal_round(store):
    summary = cavity_summary(open_experiment(store.uri).cavity())
    early = only(summary, dataset="nlgp", method="imp", evaluated_at_round=0, removed_at_round=0)
    assert early["score_mean"] == pytest.approx(-0.5)
    assert (early["score_min"], early["score_max"]) == pytest.approx((-0.51, -0.49))
    kept = only(summary, dataset="nlgp", method="imp", evaluated_at_round=1, removed_at_round=-1)
    assert kept["score_mean"] == pytest.approx(3.0)
    assert kept["count_mean"] == 10
    assert set(summary["method"]) == {"imp", "random"}


def test_seed_stats_on_an_empty_table_keeps_the_columns():
    empty = pd.DataFrame({"dataset": [], "seed": [], "x": []})
    stats = seed_stats(empty, ["x"], ["dataset"])
    assert stats.empty and {"x_mean", "x_min", "n_seeds"} <= set(stats.columns)


# -- the report ------------------------------------------------------------------------------
PNGS = {  # name: (width, height) in pixels at 120 dpi
    "rf_width_vs_sparsity.png": (9.0, 3.8),
    "accuracy_vs_sparsity.png": (9.0, 3.8),
    "first_layer_masks.png": (10.4, 1.8 * 6),
    "fig1_masks.png": (10.4, 1.8 * 4),
    "fig2_components.png": (8.0, 4.2),
    "fig3_gaussian_clone.png": (10.4, 1.6 * 2 + 1.8 * 2 + 3.5),
    "fig4_rf_width_kurtosis.png": (9.0, 7.0),
    "fig5_cavity.png": (9.0, 3.2 * 3),
}


def test_report_writes_every_figure_and_both_markdown_files(store, written):
    expected = [f"figures/{name}" for name in PNGS] + ["figures/summary.md", "figures/report.md"]
    assert written == [store.url(rel) for rel in expected]


@pytest.mark.parametrize("name", sorted(PNGS))
def test_each_png_decodes_with_the_expected_size(store, written, name):
    image = matplotlib.image.imread(store.path("figures", name))
    width, height = PNGS[name]
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert image[..., :3].std() > 0.05  # something is drawn


def test_fig1_shows_coloured_masks_for_three_channels(store, written):
    image = matplotlib.image.imread(store.path("figures", "fig1_masks.png"))[..., :3]
    red = (image[..., 0] > 0.9) & (image[..., 1] < 0.1) & (image[..., 2] < 0.1)
    assert red.sum() > 50


def test_report_md_holds_the_numbers_of_each_figure(store, written):
    text = store.read_bytes("figures/report.md").decode()
    assert text.startswith("# Report of experiment `p1` (imp)")
    # Fig. 1: round 2 keeps one weight in three: 16 of 48 inputs per unit
    assert "| nlgp | imp | 0 | 2 | 66.7% | 16, 16, 16, 16, 16, 16 |" in text
    # Fig. 2
    assert "| sample_patches | 9 | 9 | 3×4×4 |" in text
    # Fig. 3C: median RF width at the last round, mean (min–max)
    assert "| nlgp | imp | 2 | 51.0% | 2.50 (2.30–2.70) | 3 |" in text
    assert "| nlgp_clone | imp | 2 | 51.0% | 4.50 (4.30–4.70) | 3 |" in text
    # Fig. 4: RF width mean and kurtosis
    assert "| nlgp | imp | 2 | 51.0% | 3.00 (2.80–3.20) | 5.000 (4.900–5.100) | 3 |" in text
    assert "| nlgp | random | 1 | 30.0% | 5.00 (4.80–5.20) | 3.000 (2.900–3.100) | 3 |" in text
    # Fig. 5B at round 0, then the 5C matrix of imp on nlgp
    assert "| nlgp | imp | 0 | -0.5000 (-0.5100–-0.4900) | 10.0 | 3 |" in text
    kept = "| nlgp | imp | kept | 1.5000 (1.4900–1.5100) | 10.0 | 3 |"
    assert "| nlgp | imp | 1 | 0.5000 (0.4900–0.5100) | 10.0 | 3 |\n" + kept in text
    assert "| 1 | — | 1.0000 | 3.0000 |" in text
    assert "skipped" not in text


def test_summary_md_is_kept(store, written):
    text = store.read_bytes("figures/summary.md").decode()
    assert "## nlgp\n" in text
    assert "| imp | 2 | 51.0% | 51.0% | 2.50 ± 0.16 (2.30–2.70) | 0.880 ± 0.008 | 3 |" in text


# -- missing and corrupt pieces --------------------------------------------------------------
def test_missing_pieces_are_skipped_with_a_note(tmp_path):
    store = ExperimentStore(str(tmp_path / "bare"))
    build_imp_store(store, with_artifacts=False)
    store.write_bytes("data/nlgp/examples.pt", b"unfinished: no checksum file")
    written = write_report(store)
    names = [uri.rsplit("/", 1)[-1] for uri in written]
    assert "fig1_masks.png" not in names and "fig2_components.png" not in names
    assert {"fig3_gaussian_clone.png", "fig4_rf_width_kurtosis.png", "fig5_cavity.png"} <= set(
        names
    )
    text = store.read_bytes("figures/report.md").decode()
    assert "> skipped: no first-layer IMP or oneshot masks in the store" in text
    assert "> skipped: no `data/components/*.pt` in the store" in text
    assert f"lineage 'nlgp-s0': {store.url('lineages/nlgp-s0/lineage.json')} is not in" in text
    assert "examples of data set 'nlgp'" in text


def test_rounds_only_store_skips_kurtosis_and_cavity(tmp_path):
    store = ExperimentStore(str(tmp_path / "early"))
    store.write_rows("rounds", "nlgp-s0", "r0", [rounds_row("nlgp", 0, "imp", 0)])
    write_report(store)
    text = store.read_bytes("figures/report.md").decode()
    assert "> no kurtosis table in the store (panel B empty)" in text
    assert "> skipped: no cavity table in the store" in text
    assert "no `spec.resolved.json`" in text


def test_corrupt_artifact_still_raises(tmp_path):
    store = ExperimentStore(str(tmp_path / "corrupt"))
    build_imp_store(store)
    store.write_bytes("lineages/nlgp-s0/masks/imp.pt", b"flipped bits")
    with pytest.raises(StoreError, match="imp.pt is corrupt"):
        write_report(store)


# -- several experiments ---------------------------------------------------------------------
def test_open_experiments_concatenates_with_experiment_labels(store, tmp_path):
    other = ExperimentStore(str(tmp_path / "p1"))  # the same name in another folder
    build_imp_store(other, with_artifacts=False)
    both = open_experiments([store.uri, other.uri])
    rounds = both.rounds()
    assert list(both.labels) == ["p1", "p1#2"]
    assert rounds.groupby("experiment").size().to_dict() == {"p1": 54, "p1#2": 54}
    written = write_report([store, other])
    assert written[-1] == store.url("figures/compare/report.md")
    text = store.read_bytes("figures/compare/report.md").decode()
    assert "# Comparison of experiments" in text
    assert "| nlgp | p1#2/imp | 2 | 51.0% | 3.00 (2.80–3.20) | 5.000 (4.900–5.100) | 3 |" in text
    assert "| nlgp | p1/imp | 2 | 51.0% | 3.00 (2.80–3.20) | 5.000 (4.900–5.100) | 3 |" in text
    assert store.exists("figures/compare/fig4_rf_width_kurtosis.png")


def test_comparison_goes_to_out_when_given(store, tmp_path):
    other = ExperimentStore(str(tmp_path / "q"))
    build_imp_store(other, with_artifacts=False)
    out = tmp_path / "cmp"
    written = write_report([store.uri, other.uri], out=str(out))
    assert written[-1] == str(out / "report.md")
    assert (out / "fig5_cavity.png").stat().st_size > 1000


# -- object storage --------------------------------------------------------------------------
def test_open_experiment_and_report_on_s3(s3_server, s3_bucket):
    uri = f"s3://{s3_bucket}/results/p1"
    build_imp_store(ExperimentStore(uri))
    exp = open_experiment(uri, storage_options={"endpoint_url": s3_server})
    assert exp.kind == "imp" and exp.kurtosis()["imp.fraction"].eq(0.3).all()
    written = write_report(exp.store)
    assert written[-1] == f"{uri}/figures/report.md"
    assert exp.store.exists("figures/fig5_cavity.png")
    assert "5.000 (4.900–5.100)" in exp.store.read_bytes("figures/report.md").decode()
