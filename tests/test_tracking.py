"""Tracking: the platform's rows mirrored to a real local MLflow store and to W&B offline files."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from lotterylab.cli import main
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.spec import SpecError, parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.tracking import tracked_store
from lotterylab.platform.store.tracking.rows import external_id

mlflow = pytest.importorskip("mlflow")
wandb_backend = pytest.importorskip("lotterylab.platform.store.tracking.wandb_backend")

METHODS = ("imp", "oneshot", "random")


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    folder = tmp_path / "wandb-files"
    folder.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # a service an earlier test started in this process: Ray's workers would inherit it
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    return str(folder)


def _tracked_spec(spec_dict: dict, tmp_path, mlflow_on=True, wandb_on=False, rounds=2):
    spec_dict.update(seeds=[0], datasets=spec_dict["datasets"][:1])
    spec_dict["imp"]["rounds"] = rounds
    tracking = {}
    if mlflow_on:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        artifacts = str(tmp_path / "artifacts")  # not MLflow's default ./mlruns in the checkout
        tracking["mlflow"] = {
            "tracking_uri": uri,
            "experiment": "tiny",
            "artifact_location": artifacts,
        }
    if wandb_on:
        tracking["wandb"] = {"project": "tiny", "mode": "offline"}
    spec_dict["tracking"] = tracking
    return parse_spec(spec_dict)


def _runs(uri: str) -> dict:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    return client, {r.info.run_name: r for r in runs}


def _snapshot(lineage: IMPLineage) -> dict:
    buffer = io.BytesIO()
    torch.save(lineage.state_dict(), buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_tracking_changes_no_lineage_id_and_holds_no_credentials(tiny_spec_dict, tmp_path):
    tracked = _tracked_spec(tiny_spec_dict, tmp_path)
    plain = parse_spec({k: v for k, v in tiny_spec_dict.items() if k != "tracking"})
    assert plain.tracking is None and tracked.tracking is not None
    assert LineageConfig("x", "nlgp", 0, plain).lineage_id == (
        LineageConfig("x", "nlgp", 0, tracked).lineage_id
    )
    tiny_spec_dict["tracking"]["mlflow"]["tracking_uri"] = "http://me:secret@127.0.0.1:5000"
    with pytest.raises(SpecError, match="tracking.mlflow.tracking_uri.*credentials"):
        parse_spec(tiny_spec_dict)
    tiny_spec_dict["tracking"] = {}
    with pytest.raises(SpecError, match="give mlflow, wandb or both"):
        parse_spec(tiny_spec_dict)


def test_the_platform_imports_without_the_trackers():
    code = (
        "import sys; import lotterylab.platform.store.tracking, lotterylab.platform.spec, "
        "lotterylab.trainables.imp_lineage; "
        "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mlflow_gets_one_run_per_lineage_and_method_and_no_step_twice(tiny_spec_dict, tmp_path):
    spec = _tracked_spec(tiny_spec_dict, tmp_path)
    uri = spec.tracking.mlflow.tracking_uri
    data = build_dataset(spec.datasets, "nlgp")
    config = LineageConfig("tiny", "nlgp", 0, spec)
    store = tracked_store(str(tmp_path / "tiny"), spec)
    first = IMPLineage(config, data, store)
    first.run_round()
    after_round0 = _snapshot(first)
    first.run_round()  # round 1 is logged, then the trial dies before its checkpoint
    store.close()

    # a resumed trial: a new store and tracker, from the checkpoint of round 0
    store = tracked_store(str(tmp_path / "tiny"), spec)
    again = IMPLineage(config, data, store)
    again.load_state_dict(after_round0)
    again.run_round()  # round 1, replayed
    again.run_round()  # round 2, the last
    store.close()

    client, runs = _runs(uri)
    assert sorted(runs) == sorted(f"{config.lineage_id}/{m}" for m in METHODS)
    rows = ExperimentStore(str(tmp_path / "tiny")).read_table("rounds").to_pylist()
    for method in METHODS:
        run = runs[f"{config.lineage_id}/{method}"]
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert (params["dataset"], params["seed"], params["method"]) == ("nlgp", "0", method)
        assert params["training.lr"] == "0.1" and params["imp.fraction"] == "0.4"
        assert params["datasets.0.type"] == "nlgp" and "tracking.mlflow.experiment" not in params
        assert run.data.tags["lotterylab.id"] == external_id(store.uri, run.info.run_name)
        for metric in ("test_accuracy", "sparsity", "sparsity_first_layer", "kurtosis_mean"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == [0, 1, 2], (method, metric)
        accuracy = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")
        }
        mine = {r["round"]: r["test_accuracy"] for r in rows if r["method"] == method}
        assert accuracy == pytest.approx(mine)
        widths = client.get_metric_history(run.info.run_id, "rf_width_median")
        assert sorted(m.step for m in widths) == [0, 1, 2]
        assert (
            len(client.get_metric_history(run.info.run_id, "layer_sparsity/layers.0.weight")) == 3
        )


def _offline_steps(directory: str, run_id: str) -> list[int]:
    """Every history step of every offline file of the run, repeats kept."""
    files = wandb_backend.offline_files(directory, run_id)
    return sorted(step for path in files for step, _ in wandb_backend.file_history(path))


def test_wandb_offline_runs_hold_each_round_once(tiny_spec_dict, tmp_path, wandb_dir):
    spec = _tracked_spec(tiny_spec_dict, tmp_path, mlflow_on=False, wandb_on=True)
    data = build_dataset(spec.datasets, "nlgp")
    config = LineageConfig("tiny", "nlgp", 0, spec)
    store = tracked_store(str(tmp_path / "tiny"), spec)
    lineage = IMPLineage(config, data, store)
    lineage.run_round()
    lineage.run_round()
    after_round1 = _snapshot(lineage)
    lineage.run_round()
    store.close()
    # the last round replayed by a resumed trial adds nothing
    store = tracked_store(str(tmp_path / "tiny"), spec)
    again = IMPLineage(config, data, store)
    again.load_state_dict(after_round1)
    again.run_round()
    store.close()

    rows = ExperimentStore(str(tmp_path / "tiny")).read_table("rounds").to_pylist()
    for method in METHODS:
        run_id = external_id(store.uri, f"{config.lineage_id}/{method}")
        assert _offline_steps(wandb_dir, run_id) == [0, 1, 2]
        history = wandb_backend.offline_history(wandb_dir, run_id)
        mine = {r["round"]: r["test_accuracy"] for r in rows if r["method"] == method}
        assert {s: h["test_accuracy"] for s, h in history.items()} == pytest.approx(mine)
        assert all("kurtosis_mean" in h and "sparsity" in h for h in history.values())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def test_an_unreachable_tracker_is_bad_input(tiny_spec_dict, tmp_path, write_spec, capsys):
    tiny_spec_dict["tracking"] = {
        "mlflow": {"tracking_uri": f"http://127.0.0.1:{_closed_port()}", "experiment": "x"}
    }
    assert main(["validate", write_spec(tiny_spec_dict)]) == 2
    err = capsys.readouterr().err
    assert "tracking.mlflow.tracking_uri" in err and "cannot use MLflow" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tiny_spec_dict["tracking"]["mlflow"]["tracking_uri"] = f"sqlite:///{blocker}/mlflow.db"
    assert main(["validate", write_spec(tiny_spec_dict)]) == 2
    assert "tracking.mlflow.tracking_uri" in capsys.readouterr().err
    # run refuses before anything is stored, so the fixed spec starts under the same name
    assert main(["run", write_spec(tiny_spec_dict), "--storage", str(tmp_path / "r")]) == 2
    assert not ExperimentStore(str(tmp_path / "r" / "tiny")).exists("spec.resolved.json")


def test_killed_driver_resumes_the_same_tracker_runs(
    tiny_spec_dict, tmp_path, write_spec, wandb_dir
):
    from ray.cluster_utils import Cluster

    spec = _tracked_spec(tiny_spec_dict, tmp_path, wandb_on=True, rounds=4)
    tiny_spec_dict.update(name="killme")
    tiny_spec_dict["training"].update(steps=300, rewind_step=10)
    spec = parse_spec(tiny_spec_dict)
    spec_path = write_spec(tiny_spec_dict)
    root = tmp_path / "results"
    store = ExperimentStore(str(root / "killme"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.wait_for_nodes()
    command = [sys.executable, "-m", "lotterylab.cli"]
    try:
        console = open(tmp_path / "console.txt", "w")  # noqa: SIM115 - the driver writes it
        driver = subprocess.Popen(
            [*command, "run", spec_path, "--storage", str(root), "--address", cluster.address],
            stdout=console,
            stderr=subprocess.PIPE,
        )
        while True:  # wait for the rows of round 2
            if 2 in {r["round"] for r in store.read_table("rounds").to_pylist()}:
                break
            assert driver.poll() is None, driver.stderr.read().decode()
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        console.close()
        resumed = subprocess.run(
            [*command, "resume", store.uri, "--address", cluster.address],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        cluster.shutdown()

    lineage_id = LineageConfig("killme", "nlgp", 0, spec).lineage_id
    # Tune's table: the group's size and first lineage, round, sparsity, accuracy
    table = resumed.stdout
    for header in ("lineages", "first lineage", "round", "sparsity (1st layer)", "accuracy"):
        assert re.search(rf"\|\s+{re.escape(header)}\s+\|", table), table[-2000:]
    assert lineage_id in table and "[{'dataset'" not in table
    client, runs = _runs(spec.tracking.mlflow.tracking_uri)
    assert sorted(runs) == sorted([f"{lineage_id}/{m}" for m in METHODS] + ["summary"])
    rows = store.read_table("rounds").to_pylist()
    for method in METHODS:
        run = runs[f"{lineage_id}/{method}"]
        assert run.info.status == "FINISHED"
        for metric in ("test_accuracy", "kurtosis_mean"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == [0, 1, 2, 3, 4], (method, metric)
        accuracy = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")
        }
        assert accuracy == pytest.approx(
            {r["round"]: r["test_accuracy"] for r in rows if r["method"] == method}
        )
        run_id = external_id(store.uri, f"{lineage_id}/{method}")
        assert sorted(_offline_steps(wandb_dir, run_id)) == [0, 1, 2, 3, 4]
    artifacts = client.list_artifacts(runs["summary"].info.run_id, "figures")
    assert "figures/summary.md" in {a.path for a in artifacts}
    # redrawn figures go to the same summary run
    assert main(["figures", store.uri]) == 0
    assert len(_runs(spec.tracking.mlflow.tracking_uri)[1]) == len(runs)


def test_a_pai_run_logs_its_mask_and_every_epoch(pai_spec_dict, tmp_path):
    from lotterylab.platform.pai.run import PaIConfig, PaIRun

    pai_spec_dict["model"] = {"name": "fcn", "hidden": [16]}
    pai_spec_dict["training"].update(epochs=2, augment="none")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    pai_spec_dict["tracking"] = {"mlflow": {"tracking_uri": uri, "experiment": "tiny"}}
    spec = parse_spec(pai_spec_dict)
    store = tracked_store(str(tmp_path / "tinypai"), spec)
    config = PaIConfig(store.name, "nlgp3", 0, "snip", 0.2, 1, spec)
    run = PaIRun(config, build_dataset(spec.datasets, "nlgp3"), store)
    mask = run.prune()
    while not run.done:
        run.run_epoch()
    store.close()

    client, runs = _runs(uri)
    assert list(runs) == [run.id]
    tracked = runs[run.id]
    assert tracked.info.status == "FINISHED"
    assert (tracked.data.params["method"], tracked.data.params["density"]) == ("snip", "0.2")
    history = client.get_metric_history(tracked.info.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]
    density = client.get_metric_history(tracked.info.run_id, "actual_density")
    assert [(m.step, m.value) for m in density] == [(0, pytest.approx(mask["actual_density"]))]
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "collapsed")] == [0]
    losses = client.get_metric_history(tracked.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == [1, 2]  # epoch 0 is before any training
