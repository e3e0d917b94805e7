"""Errors that are not bugs exit 2 naming the file, bucket or setting to fix: stored artifacts
that do not parse, experiments that do not exist, buckets that do not exist, missing
credentials. The hostile files are written by the tests."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import TINY_PAI

from lotterylab.cli import EXIT_BAD_INPUT, main
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.pai.run import PaIConfig, PaIRun, pai_grid
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore

ROOT = Path(__file__).resolve().parent.parent


def forge(store: ExperimentStore, rel: str, data: bytes) -> None:
    """Replace an artifact and its checksum, as someone who can write the store could."""
    store.write_bytes(rel, data)
    store.write_bytes(rel + ".sha256", hashlib.sha256(data).hexdigest().encode())


def stored_pai(tmp_path) -> tuple[ExperimentStore, PaIRun]:
    """One pruned PaI run of a narrow ResNet-20, stored as ``lotterylab run`` stores it."""
    spec_dict = copy.deepcopy(TINY_PAI)
    spec_dict.update(name="exits", model={"name": "resnet20", "width": 4})
    spec_dict["pai"]["methods"] = ["random"]
    store = ExperimentStore(str(tmp_path / "exits"))
    spec = parse_spec(spec_dict)
    store.write_artifact("spec.yaml", yaml.safe_dump(spec_dict).encode())
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))
    datasets = build_datasets(spec.datasets)
    (run,) = pai_grid(spec)
    procedure = PaIRun(PaIConfig(experiment=store.name, spec=spec, **run), datasets["nlgp3"], store)
    procedure.prune()
    return store, procedure


def test_analyze_of_a_corrupt_mask_is_exit_2_naming_it(tmp_path, capsys):
    store, run = stored_pai(tmp_path)
    rel = f"runs/{run.id}/masks.pt"
    assert store.exists(rel)
    forge(store, rel, b"PK\x03\x04 not a zip archive at all")
    code = main(["analyze", store.uri, "--what", "width", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert f"artifact {store.path(rel)} matches its checksum but is not a tensor file" in err
    assert "compute them again" not in err  # recomputing cannot mend a stored input

    # a checksum that does not match names the file too
    store.write_bytes(rel, b"tampered")
    code = main(["analyze", store.uri, "--what", "width", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert f"artifact {store.path(rel)} is corrupt: sha256" in err


def test_resume_of_a_spec_that_does_not_parse_is_exit_2_naming_it(tmp_path, capsys):
    store = ExperimentStore(str(tmp_path / "garbled"))
    forge(store, "spec.resolved.json", b'{"name": "garbled", "kind":')
    code = main(["resume", store.uri])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    where = store.path("spec.resolved.json")
    assert f"artifact {where} matches its checksum but is not JSON" in err


def test_resume_of_a_missing_experiment_is_exit_2_and_creates_nothing(tmp_path, capsys):
    uri = tmp_path / "results" / "never-ran"
    for command in (["resume", str(uri)], ["branch", str(uri), "--kind", "reinit"]):
        assert main(command) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"{uri} is not a lotterylab experiment: it has no spec.resolved.json" in err
        assert not (tmp_path / "results").exists()


def test_a_missing_bucket_is_exit_2_naming_it(tiny_spec_dict, write_spec, s3_server, capsys):
    code = main(["run", write_spec(tiny_spec_dict), "--storage", "s3://no-such-bucket/runs"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "bucket 'no-such-bucket' was not found; create it first or check the URI" in err
    assert main(["resume", "s3://no-such-bucket/runs/tiny"]) == EXIT_BAD_INPUT


def test_object_storage_without_credentials_is_exit_2_saying_what_to_set(
    tiny_spec_dict, write_spec, s3_server, s3_bucket, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        AWS_ENDPOINT_URL=s3_server,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    spec = write_spec(tiny_spec_dict)
    done = subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", "run", spec, "--storage", f"s3://{s3_bucket}/x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    assert "no credentials for s3:// storage" in done.stderr
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in done.stderr
    assert "Traceback" not in done.stderr
