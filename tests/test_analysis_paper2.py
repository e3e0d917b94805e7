"""Paper 2 analysis: PaI tables into accuracy vs density, layer width, the timing table."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

from lotterylab.analysis import open_experiment, write_report
from lotterylab.analysis.paper2 import accuracy_summary, final_rows
from lotterylab.platform.metrics import STRUCTURE_COLUMNS
from lotterylab.platform.store.experiment_store import ExperimentStore

SEEDS = (0, 1, 2)
DENSITIES = (0.64, 0.4096, 0.0180)
LAYERS = ("conv1.weight", "layer1.conv.weight", "fc.weight")
TOTAL = {"conv1.weight": 16, "layer1.conv.weight": 32, "fc.weight": 10}
DPI = 120

SPEC = {
    "name": "p2",
    "kind": "pai",
    "seeds": list(SEEDS),
    "datasets": [{"name": "cifar10", "type": "cifar10", "root": "/data/cifar"}],
    "model": {"name": "resnet20"},
    "training": {"lr": 0.1, "epochs": 2, "batch_size": 128},
    "pai": {"methods": ["snip", "px"], "densities": list(DENSITIES), "rounds": [1, 10]},
    "resources": {"cpu": 1, "gpu": 0},
    "run": {"max_failures": 0},
}
# (method, rounds T) of each run: snip is one-shot, px ran with T = 1 and T = 10
GRID = (("snip", 1), ("px", 1), ("px", 10))
BASE = {("snip", 1): 0.80, ("px", 1): 0.82, ("px", 10): 0.85}


def accuracy(method: str, rounds: int, density: float, seed: int) -> float:
    return BASE[(method, rounds)] - 0.1 * (1 - density) + 0.01 * (seed - 1)


def active_units(method: str, density: float) -> dict[str, int]:
    collapse = method == "snip" and density < 0.05
    return {
        "conv1.weight": 16 if density > 0.05 else 12,
        "layer1.conv.weight": 0 if collapse else (32 if density > 0.05 else 20),
        "fc.weight": 10,
    }


def structure(units: dict[str, int], density: float, seed: int) -> dict:
    """Connectivity and MACs: of the collapsed masks, seed 0's is disconnected, others bypassed."""
    disconnected = any(v == 0 for v in units.values()) and seed == 0
    return {
        "effective_density": 0.0 if disconnected else 0.9 * density,
        "effective_units": {k: 0 if disconnected else v for k, v in units.items()},
        "disconnected": disconnected,
        "log10_paths": None if disconnected else 10.0 + density,
        "macs": int(40e6 * density),
        "dense_macs": 40_000_000,
    }


def columns(method: str, rounds: int, density: float, seed: int, branch: str = "") -> dict:
    run_id = f"{method}-T{rounds}-d{density}-s{seed}" + (f"-{branch}" if branch else "")
    return {
        "experiment": "p2",
        "run_id": run_id,
        "kind": "pai",
        "method": method,
        "density": density,
        "rounds": rounds,
        "dataset": "cifar10",
        "model": "resnet20",
        "seed": seed,
        "branch": branch,
        "parent_id": None,
    }


def build_pai_store(store: ExperimentStore, unfinished: bool = False) -> None:
    store.write_json("spec.resolved.json", SPEC)
    for method, rounds in GRID:
        for density in DENSITIES:
            for seed in SEEDS:
                ids = columns(method, rounds, density, seed)
                run_id = ids["run_id"]
                units = active_units(method, density)
                mask_row = {
                    **ids,
                    "actual_density": density,
                    "layer_density": {name: density for name in LAYERS},
                    "active_units": units,
                    "total_units": TOTAL,
                    "collapsed": any(v == 0 for v in units.values()),
                    "scoring_time_s": 0.1 * rounds + 0.01 * seed,
                    "rf_width_median": None,
                    "rf_width_mean": None,
                    **structure(units, density, seed),
                }
                store.write_rows("pai_masks", run_id, "masks", [mask_row])
                last_epoch = 1 if unfinished and (method, seed) == ("px", 2) else 2
                for epoch in range(last_epoch + 1):
                    row = {
                        **ids,
                        "epoch": epoch,
                        "train_loss": None if epoch == 0 else 1.0 / epoch,
                        "test_accuracy": 0.1
                        if epoch < 2
                        else accuracy(method, rounds, density, seed),
                        "test_miou": None,
                        "final": epoch == 2,
                        "wall_time_s": 1.0,
                    }
                    store.write_rows("pai_epochs", run_id, f"epoch-{epoch:04d}", [row])
                store.write_json(f"runs/{run_id}/run.json", ids)
                store.write_tensors(
                    f"runs/{run_id}/masks.pt", {"fc.weight": torch.ones(10, 4, dtype=torch.bool)}
                )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ExperimentStore:
    experiment = ExperimentStore(str(tmp_path_factory.mktemp("p2") / "p2"))
    build_pai_store(experiment)
    return experiment


@pytest.fixture(scope="module")
def written(store) -> list[str]:
    return write_report(store)


def test_pai_tables_carry_spec_columns(store):
    exp = open_experiment(store.uri)
    assert exp.kind == "pai" and exp.tables() == ["pai_epochs", "pai_masks"]
    epochs = exp.pai_epochs()
    assert len(epochs) == len(GRID) * len(DENSITIES) * len(SEEDS) * 3
    assert epochs["pai.rounds"].iloc[0] == (1, 10)
    assert (epochs["data.type"] == "cifar10").all() and (epochs["training.epochs"] == 2).all()
    run_id = epochs["run_id"].iloc[0]
    assert exp.run(run_id)["run_id"] == run_id
    assert exp.run_masks(run_id)["fc.weight"].dtype == torch.bool
    masks = exp.pai_masks()
    first = masks.iloc[0]  # sorted by method, rounds, branch, density, seed
    assert (first["method"], first["rounds"], first["density"], first["seed"]) == (
        "px",
        1,
        0.018,
        0,
    )
    assert first["active_units"] == {"conv1.weight": 12, "layer1.conv.weight": 20, "fc.weight": 10}


def test_final_accuracy_mean_and_std_over_seeds(store):
    summary = accuracy_summary(final_rows(open_experiment(store.uri).pai_epochs()))
    assert set(summary["series"]) == {"snip", "px T=1", "px T=10"}
    row = summary[(summary["series"] == "px T=10") & (summary["density"] == 0.0180)].iloc[0]
    assert row["score_mean"] == pytest.approx(0.85 - 0.1 * 0.982)
    assert row["score_std"] == pytest.approx(0.01 * (2 / 3) ** 0.5)
    assert row["n_seeds"] == 3


PNGS = {
    "pai_accuracy_vs_density.png": (5.0, 4.0),
    "pai_accuracy_vs_effective_density.png": (5.0, 4.0),
    "pai_active_units.png": (6.0, 4.2),
}


def test_report_writes_pai_figures(store, written):
    assert written == [store.url(f"figures/{n}") for n in PNGS] + [store.url("figures/report.md")]
    for name, (width, height) in PNGS.items():
        image = matplotlib.image.imread(store.path("figures", name))
        assert image.shape[:2] == (round(height * DPI), round(width * DPI))


def test_report_tables(store, written):
    text = store.read_bytes("figures/report.md").decode()
    assert text.startswith("# Report of experiment `p2` (pai)")
    # accuracy at every density: columns 36.00%, 59.04%, 98.20% sparsity
    assert "| method | 36.00% | 59.04% | 98.20% |" in text
    assert "| snip | 0.7640 ± 0.0082 [0.7392, 0.7888] (3) |" in text
    # Fig. 6 numbers: active units at the lowest density, dense width in brackets
    assert "| layer | snip | px T=1 | px T=10 |" in text
    assert "| layer1.conv.weight (32) | 0.0 | 20.0 | 20.0 |" in text
    # Table 2: accuracy · mean scoring time per T
    assert "| method | T = 1 | T = 10 |" in text
    assert "| px | 0.7218 ± 0.0082 · 0.11 s | 0.7518 ± 0.0082 · 1.01 s |" in text
    assert "| snip | 0.7018 ± 0.0082 · 0.11 s | — |" in text
    # collapsed masks: snip at the lowest density, one per seed; seed 0's is disconnected
    assert "3 of 27 masks have a layer with no active unit (`collapsed`): 2 of them" in text
    assert "1 masks have no input-to-output path at all" in text
    assert (
        "| snip-T1-d0.018-s0 | snip | trunk | 98.20% | 1 | 0 | disconnected | layer1.conv |" in text
    )
    assert "| snip-T1-d0.018-s1 | snip | trunk | 98.20% | 1 | 1 | bypassed | layer1.conv |" in text
    # the structure table: a third of snip's seeds disconnected, effective density 0.9 d
    assert "| resnet20 · cifar10 | snip | 98.20% | 0.33 | 1.080% | 1.800% | 1.0 |" in text
    # pairwise tests at 98.20 %: px T=10 is 0.03 above px T=1 with zero spread difference
    assert "px T=10 > snip at 98.20% sparsity (p = " in text
    assert "First-layer RF width" not in text  # a ResNet has no dense first layer on pixels


def test_unfinished_runs_are_left_out_with_a_note(tmp_path):
    store = ExperimentStore(str(tmp_path / "running"))
    build_pai_store(store, unfinished=True)
    write_report(store)
    text = store.read_bytes("figures/report.md").decode()
    assert "> 6 run(s) not finished yet are left out" in text
    assert "| px T=10 | 0.8090 ± 0.0050 [0.7455, 0.8725] (2) |" in text


def test_rf_width_table_for_fcn_masks(tmp_path):
    store = ExperimentStore(str(tmp_path / "fcn"))
    for seed, width in ((0, 2.0), (1, 3.0)):
        row = {
            **columns("px", 1, 0.1, seed),
            "actual_density": 0.1,
            "layer_density": {"layers.0.weight": 0.1},
            "active_units": {"layers.0.weight": 5},
            "total_units": {"layers.0.weight": 8},
            "collapsed": False,
            "scoring_time_s": 0.5,
            "rf_width_median": width,
            "rf_width_mean": width,
            **dict.fromkeys(STRUCTURE_COLUMNS),  # as rows stored before these columns
        }
        store.write_rows("pai_masks", row["run_id"], "masks", [row])
    written = write_report(store)
    text = store.read_bytes("figures/report.md").decode()
    assert "## First-layer RF width of PaI masks" in text
    assert "| px | 2.50 ± 0.50 |" in text
    assert "> skipped: no finished PaI run in the pai_epochs table" in text
    assert written == [store.url("figures/pai_active_units.png"), store.url("figures/report.md")]


def test_comparing_imp_and_pai_experiments_draws_both_kinds(store, tmp_path):
    from test_analysis_paper1 import build_imp_store

    imp = ExperimentStore(str(tmp_path / "p1"))
    build_imp_store(imp, with_artifacts=False)
    written = write_report([imp, store], out=str(tmp_path / "both"))
    names = [uri.rsplit("/", 1)[-1] for uri in written]
    assert {"fig4_rf_width_kurtosis.png", "pai_accuracy_vs_density.png"} <= set(names)
    text = (tmp_path / "both" / "report.md").read_text()
    assert "| p2/px T=10 |" in text and "| nlgp | p1/imp | 2 |" in text
