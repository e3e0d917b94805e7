"""Experiments end to end through real Ray Tune: rows, figures, storage, kill and resume."""

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from lotterylab.cli import main
from lotterylab.cluster.launch import ExperimentError, run_experiment
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.group import LineageGroup
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore

METHODS = ("imp", "oneshot", "random")


def check_complete(store: ExperimentStore, spec) -> list[dict]:
    rows = store.read_table("rounds").to_pylist()
    expected = {
        (d.name, seed, n, method)
        for d in spec.datasets
        for seed in spec.seeds
        for n in range(spec.imp.rounds + 1)
        for method in METHODS
    }
    assert {(r["dataset"], r["seed"], r["round"], r["method"]) for r in rows} == expected
    assert len(rows) == len(expected)
    return rows


def test_tiny_experiment_through_tune(tiny_spec_dict, tmp_path):
    spec = parse_spec(tiny_spec_dict)
    outcome = run_experiment(spec, "name: tiny\n", str(tmp_path / "results"))
    # two CPUs, four lineages of one shape: two trials of two stacked lineages each
    assert outcome.trials == 2 and outcome.errored_trials == []
    store = ExperimentStore(str(tmp_path / "results" / "tiny"))
    assert outcome.uri == store.uri
    rows = check_complete(store, spec)
    last = [r for r in rows if r["round"] == 3]
    # the first layer loses 40 % of its alive weights per round: 64*32 → 1229 → 737 → 442 kept
    assert {round(r["sparsity_first_layer"], 6) for r in last} == {round(1 - 442 / 2048, 6)}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert all(r["rf_width_median"] > 0 for r in last)
    assert store.read_bytes("spec.yaml") == b"name: tiny\n"
    assert store.read_json("spec.resolved.json")["imp"]["fraction"] == 0.4
    for name in ("rf_width_vs_sparsity.png", "accuracy_vs_sparsity.png", "first_layer_masks.png"):
        assert store.read_bytes(f"figures/{name}")[:4] == b"\x89PNG"
    assert "| imp |" in store.read_bytes("figures/summary.md").decode()
    # Tune's own state sits in the same folder, one trial folder per group of lineages
    trial_dirs = [n for n in store.list("") if n.startswith("trial-imp-fcn-")]
    assert len(trial_dirs) == 2 and all(n.endswith("-group-of-2") for n in trial_dirs)
    # running the same experiment again is refused with a pointer to resume
    with pytest.raises(ExperimentError, match="already exists.*lotterylab resume"):
        run_experiment(spec, "name: tiny\n", str(tmp_path / "results"))
    # figures can be redrawn from the store alone
    assert main(["figures", store.uri]) == 0


def test_a_different_spec_never_overwrites_stored_results(tiny_spec_dict, tmp_path):
    store = ExperimentStore(str(tmp_path / "results" / "tiny"))
    store.write_json("spec.resolved.json", parse_spec(tiny_spec_dict).model_dump(mode="json"))
    tiny_spec_dict["imp"]["fraction"] = 0.2
    with pytest.raises(ExperimentError, match="results of a different spec"):
        run_experiment(parse_spec(tiny_spec_dict), "x", str(tmp_path / "results"))
    assert store.read_json("spec.resolved.json")["imp"]["fraction"] == 0.4


def test_experiment_on_s3(tiny_spec_dict, s3_bucket):
    tiny_spec_dict.update(seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["imp"]["rounds"] = 1
    spec = parse_spec(tiny_spec_dict)
    outcome = run_experiment(spec, "name: tiny\n", f"s3://{s3_bucket}/runs")
    assert outcome.errored_trials == []
    store = ExperimentStore(f"s3://{s3_bucket}/runs/tiny")
    check_complete(store, spec)
    assert store.exists("figures/summary.md")
    assert any(n.startswith("experiment_state") for n in store.list(""))


def _reference(spec, dataset, seeds):
    """The uninterrupted lineages, computed in this process without Ray: one group, or one
    lineage at a time, as the spec's ``batch_lineages`` trains them on two nodes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = ExperimentStore(tempfile.mkdtemp())
        data = build_dataset(spec.datasets, dataset)
        lineages = [IMPLineage(LineageConfig("ref", dataset, s, spec), data, store) for s in seeds]
        groups = [lineages] if spec.run.batch_lineages == 2 else [[x] for x in lineages]
        for group in map(LineageGroup, groups):
            while not group.done:
                group.run_round()
        return lineages, store
    finally:
        torch.set_num_threads(threads)


def _comparable(rows):
    keep = [k for k in rows[0] if k not in ("wall_time_s", "experiment")]
    return sorted((tuple((k, r[k]) for k in keep) for r in rows), key=repr)


@pytest.mark.slow
@pytest.mark.parametrize("batch_lineages", ["auto", 2], ids=["one-per-node", "one-group"])
def test_killed_driver_resumes_to_the_uninterrupted_result(
    tiny_spec_dict, tmp_path, write_spec, batch_lineages
):
    """``auto`` spreads the two lineages over the two nodes; ``2`` trains them as one group."""
    from ray.cluster_utils import Cluster

    tiny_spec_dict.update(name="killme", seeds=[0, 1], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["run"]["batch_lineages"] = batch_lineages
    tiny_spec_dict["training"].update(steps=400, rewind_step=10)
    tiny_spec_dict["imp"]["rounds"] = 5
    spec = parse_spec(tiny_spec_dict)
    spec_path = write_spec(tiny_spec_dict)
    root = tmp_path / "results"
    store = ExperimentStore(str(root / "killme"))
    # two raylets on this machine: the lineages are spread over two nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lotterylab.cli",
                "run",
                spec_path,
                "--storage",
                str(root),
                "--address",
                cluster.address,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # wait on the event (a round-2 row file), however slow the machine; the bound is a
        # safety net for a hung driver only
        give_up = time.monotonic() + 900
        while not glob.glob(store.path("tables", "rounds", "*", "round-0002-imp.parquet")):
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < give_up, "the driver made no progress at all"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        rows_at_kill = store.read_table("rounds").to_pylist()
        assert max(r["round"] for r in rows_at_kill) < spec.imp.rounds, "killed too late"
        round0_parts = {
            path: os.stat(path).st_mtime_ns
            for path in glob.glob(store.path("tables", "rounds", "*", "round-0000-imp.parquet"))
        }

        resumed = subprocess.run(
            [
                sys.executable,
                "-m",
                "lotterylab.cli",
                "resume",
                store.uri,
                "--address",
                cluster.address,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        cluster.shutdown()

    rows = check_complete(store, spec)
    trials = [n for n in store.list("") if n.startswith("trial-")]
    assert len(trials) == (1 if batch_lineages == 2 else 2)
    # resumed from checkpoints, not restarted: some lineage did not redo its round 0
    assert any(os.stat(path).st_mtime_ns == mtime for path, mtime in round0_parts.items())
    lineages, ref_store = _reference(spec, "nlgp", spec.seeds)
    for seed, lineage in zip(spec.seeds, lineages, strict=True):
        for method in METHODS:
            rel = f"lineages/{lineage.id}/masks/{method}.pt"
            got, want = store.read_tensors(rel), ref_store.read_tensors(rel)
            assert all(torch.equal(got[k], want[k]) for k in want), (seed, method)
            final = mk.masks_after_round(got, spec.imp.rounds - 1)
            assert mk.alive_counts(final)["layers.0.weight"] < 64 * 32
        mine = [r for r in rows if r["seed"] == seed]
        reference = [r for r in ref_store.read_table("rounds").to_pylist() if r["seed"] == seed]
        assert _comparable(mine) == _comparable(reference)
