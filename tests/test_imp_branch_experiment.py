"""Lottery-ticket branches of IMP lineages through real Ray Tune: CLI, rows, report, resume."""

import os
import signal
import subprocess
import sys
import time

import torch

from lotterylab.cli import main
from lotterylab.cluster.launch import run_experiment
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp.branches import IMPBranch, IMPBranchConfig
from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore


def test_branches_of_an_imp_experiment_from_the_cli_survive_a_killed_driver(
    tiny_spec_dict, tmp_path
):
    from ray.cluster_utils import Cluster

    tiny_spec_dict.update(name="tickets", seeds=[0])
    tiny_spec_dict["imp"].update(rounds=1, baselines=[])
    tiny_spec_dict["training"].update(steps=200, rewind_step=10)
    spec = parse_spec(tiny_spec_dict)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        outcome = run_experiment(
            spec, "name: tickets\n", str(tmp_path / "results"), cluster.address
        )
        assert outcome.errored_trials == []
        store = ExperimentStore(outcome.uri)
        parents = {r["lineage_id"] for r in store.read_table("rounds").to_pylist()}
        assert len(parents) == 2  # nlgp and its clone

        # rewind to an unstored step: the first step replays the dense run, the second trains
        branch = [sys.executable, "-m", "lotterylab.cli", "branch", outcome.uri]
        rewind = ["--kind", "rewind", "--round", "1", "--rewind-step", "3"]
        rewind += ["--address", cluster.address]
        driver = subprocess.Popen([*branch, *rewind], stderr=subprocess.PIPE)
        marker = store.path("lineages", f"{min(parents)}-rewind-r1-t3", "branch.json.sha256")
        while not os.path.exists(marker):  # the branch prepared its start: kill the driver
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            time.sleep(0.05)  # poll the file, not the clock: no deadline
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert not store.read_table("imp_branches").to_pylist(), "killed too late"
        resumed = subprocess.run([*branch, *rewind], capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert main(["branch", outcome.uri, "--kind", "reinit", "--round", "1"]) == 0
        assert main(["branch", outcome.uri, "--kind", "shuffle", "--round", "1"]) == 2
        assert main(["branch", outcome.uri, "--kind", "reinit", "--round", "2"]) == 2
        assert main(["branch", outcome.uri, "--kind", "reinit", "--method", "snip"]) == 2
        assert main(["branch", outcome.uri, "--kind", "rewind", "--round", "1"]) == 2
    finally:
        cluster.shutdown()

    rows = store.read_table("imp_branches").to_pylist()
    assert sorted((r["branch"], r["parent_id"]) for r in rows) == sorted(
        (kind, parent) for kind in ("reinit", "rewind") for parent in parents
    )
    assert {r["lineage_id"] for r in rows if r["branch"] == "rewind"} == {
        f"{p}-rewind-r1-t3" for p in parents
    }
    # the killed and resumed branch equals one run straight through, in this process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = IMPBranchConfig(LineageConfig("tickets", "nlgp", 0, spec), "rewind", 1, 3)
        reference_store = ExperimentStore(str(tmp_path / "reference"))
        for rel in ("lineage.json", "masks/imp.pt", "rewind.pt"):
            rel = f"lineages/{config.parent_id}/{rel}"
            reference_store.write_artifact(rel, store.read_artifact(rel))
        reference = IMPBranch(config, build_dataset(spec.datasets, "nlgp"), reference_store)
        while not reference.done:
            expected = reference.step()
    finally:
        torch.set_num_threads(threads)
    got = next(r for r in rows if r["lineage_id"] == config.branch_id)
    assert got["test_accuracy"] == expected["test_accuracy"]
    assert got["kurtosis_mean"] == expected["kurtosis_mean"]
    report = store.read_bytes("figures/report.md").decode()
    assert "Lottery-ticket branches" in report and "rewind@3" in report
    assert store.exists("figures/branches_accuracy.png")
    assert store.exists("figures/branches_rf_width.png")
