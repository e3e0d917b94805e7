"""Object storage through the real CLI: an S3 crash cycle, with secrets kept out of Ray.

The driver runs ``lotterylab run --storage s3://…`` with distinctive secrets in its
environment, is killed once a lineage has stored its state, then ``lotterylab resume`` and
``lotterylab figures`` finish the experiment. The masks must equal those of an uninterrupted
run on local disk, and the secrets must appear nowhere: not in the store, not in the CLI's
output, not in Ray's session logs (where Tune's trial runtime environments are logged).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import torch

from lotterylab.cluster import credentials
from lotterylab.cluster.credentials import hide_secrets, restore_secrets
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore

METHODS = ("imp", "oneshot", "random")
AWS_VARIABLES = (*credentials.MOVED_VARIABLES, *credentials.POINTER_VARIABLES)


# -- the credentials file on its own ------------------------------------------------------------
@pytest.fixture
def clean_aws_env(monkeypatch, tmp_path):
    """Every AWS variable unset (restored afterwards) and a private runtime dir for the file."""
    for name in (*AWS_VARIABLES, "AWS_CONFIG_FILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-credentials"))
    return runtime


def test_secrets_move_to_a_private_file_that_botocore_reads(clean_aws_env, monkeypatch, tmp_path):
    import botocore.session

    config = tmp_path / "config"
    config.write_text(
        "[profile work]\nregion = eu-west-3\nrole_arn = arn:aws:iam::1:role/x\n"
        "s3 =\n  addressing_style = path\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "work")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/with+chars%and=signs")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-xyz")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")

    hidden = hide_secrets()
    assert hidden is not None
    for name in credentials.MOVED_VARIABLES:
        assert name not in os.environ
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"  # not secret: stays
    assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == hidden.path
    assert os.environ["AWS_PROFILE"] == credentials.PROFILE
    folder = os.path.dirname(hidden.path)
    assert os.path.dirname(folder) == str(clean_aws_env)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(hidden.path).st_mode) == 0o600

    session = botocore.session.Session()
    creds = session.get_credentials().get_frozen_credentials()
    assert (creds.access_key, creds.secret_key, creds.token) == (
        "AKIDEXAMPLE",
        "s3cr3t/with+chars%and=signs",
        "token-xyz",
    )
    assert session.get_credentials().method == "shared-credentials-file"
    # the replaced profile's settings come along, its way of finding credentials does not
    scoped = session.get_scoped_config()
    assert scoped["region"] == "eu-west-3"
    assert scoped["s3"] == {"addressing_style": "path"}
    assert "role_arn" not in scoped

    restore_secrets(hidden)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t/with+chars%and=signs"
    assert os.environ["AWS_PROFILE"] == "work"
    assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == str(tmp_path / "no-such-credentials")
    assert not os.path.exists(folder)


def test_nothing_moves_without_a_secret_and_bad_values_are_refused(clean_aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")  # an id alone is no secret
    assert hide_secrets() is None
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIDEXAMPLE"
    assert "AWS_PROFILE" not in os.environ and os.listdir(clean_aws_env) == []

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "line\nbreak")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY holds a line break") as info:
        hide_secrets()
    assert "line\nbreak" not in str(info.value)  # the error never echoes a secret
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "line\nbreak"
    assert os.listdir(clean_aws_env) == []


def test_a_killed_driver_leaves_a_file_that_the_next_driver_removes(clean_aws_env, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = clean_aws_env / f"{credentials.DIR_PREFIX}{dead.pid}-abc123"
    stale.mkdir(mode=0o700)
    (stale / "credentials").write_text("[lotterylab]\naws_secret_access_key = old\n")
    alive = clean_aws_env / f"{credentials.DIR_PREFIX}{os.getppid()}-def456"
    alive.mkdir(mode=0o700)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "new")
    hidden = hide_secrets()
    try:
        left = sorted(os.listdir(clean_aws_env))
        assert stale.name not in left and alive.name in left
        assert os.path.basename(os.path.dirname(hidden.path)) in left
    finally:
        restore_secrets(hidden)


def test_an_embedded_driver_starts_its_own_ray_and_hides_secrets_from_it(tmp_path):
    """Plain ``ray.init()`` would join the cluster recorded in ray_current_cluster."""
    ray_tmp = tempfile.mkdtemp(prefix="llray-", dir="/tmp")
    os.makedirs(os.path.join(ray_tmp, "ray"))
    with open(os.path.join(ray_tmp, "ray", "ray_current_cluster"), "w") as handle:
        handle.write("127.0.0.1:9")  # another program's cluster, long gone
    probe = (
        "import json, os, ray\n"
        "from lotterylab.cluster.connection import connect, disconnect\n"
        "connect()\n"
        "@ray.remote\n"
        "def env(): return {k: os.environ.get(k) for k in "
        "('AWS_SECRET_ACCESS_KEY', 'AWS_PROFILE', 'AWS_SHARED_CREDENTIALS_FILE')}\n"
        "print('node', ray.get_runtime_context().gcs_address)\n"
        "print('worker', json.dumps(ray.get(env.remote())))\n"
        "print('driver', 'AWS_SECRET_ACCESS_KEY' in os.environ)\n"
        "disconnect()\n"
        "print('restored', os.environ['AWS_SECRET_ACCESS_KEY'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(RAY_TMPDIR=ray_tmp, XDG_RUNTIME_DIR=str(tmp_path), AWS_SECRET_ACCESS_KEY="k")
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180
        )
    finally:
        _stop_leftovers(set(), ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert not lines["node"].endswith(":9")
    worker = json.loads(lines["worker"])
    assert worker["AWS_SECRET_ACCESS_KEY"] is None and worker["AWS_PROFILE"] == "lotterylab"
    assert worker["AWS_SHARED_CREDENTIALS_FILE"].startswith(str(tmp_path))
    assert lines["driver"] == "False" and lines["restored"] == "k"
    assert os.listdir(tmp_path) == []  # the file went with the disconnect


# -- the whole cycle through the CLI ------------------------------------------------------------
def _spec(tiny_spec_dict: dict) -> dict:
    tiny_spec_dict.update(name="s3cycle", seeds=[0, 1], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["training"].update(steps=150, rewind_step=10)
    tiny_spec_dict["imp"]["rounds"] = 3
    return tiny_spec_dict


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lotterylab.cli", *args]


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, cmdline)
    return table


def _descendants(pid: int) -> set[int]:
    table = _proc_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _stop_leftovers(pids: set[int], marker: str) -> None:
    """End the Ray processes a killed driver left behind: its own, found by id or session dir."""
    pids |= {p for p, (_, cmdline) in _proc_table().items() if marker in cmdline}
    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}/cmdline") for p in pids):
        time.sleep(0.1)


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:  # exited meanwhile
        return b""


def _files_holding(folder: str, needles: list[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {n: [] for n in needles}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            for needle in needles:
                if needle in data:
                    found[needle].append(path)
    return found


@pytest.mark.slow
def test_s3_crash_cycle_through_the_cli_keeps_secrets_out(
    tiny_spec_dict, write_spec, tmp_path, s3_server, s3_bucket
):
    import boto3

    spec = parse_spec(_spec(tiny_spec_dict))
    spec_path = write_spec(_spec(tiny_spec_dict))
    secret = f"SeCrEt-{uuid.uuid4().hex}"
    token = f"ToKeN-{uuid.uuid4().hex}"
    key_id = f"AKID{uuid.uuid4().hex[:12].upper()}"
    # short paths: Ray puts unix sockets under its temp dir
    ray_tmp = tempfile.mkdtemp(prefix="llray-", dir="/tmp")
    local_ray_tmp = tempfile.mkdtemp(prefix="llray-", dir="/tmp")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    base_env = dict(os.environ, RAY_TMPDIR=local_ray_tmp, XDG_RUNTIME_DIR=str(runtime))
    env = dict(
        base_env,
        RAY_TMPDIR=ray_tmp,
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_SESSION_TOKEN=token,
        AWS_ENDPOINT_URL=s3_server,
    )
    uri = f"s3://{s3_bucket}/prefix/{spec.name}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    outputs: list[str] = []
    leftovers: set[int] = set()
    try:
        # the uninterrupted reference, on local disk
        local_root = tmp_path / "local"
        t0 = time.perf_counter()
        local = subprocess.run(
            _cli("run", spec_path, "--storage", str(local_root)),
            env=base_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        local_s = time.perf_counter() - t0
        assert local.returncode == 0, local.stderr[-3000:]

        # the S3 cycle: run, SIGKILL after the first stored lineage state, resume, figures
        t0 = time.perf_counter()
        log = open(tmp_path / "run.log", "w+b")
        driver = subprocess.Popen(
            _cli("run", spec_path, "--storage", f"s3://{s3_bucket}/prefix"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        give_up = time.monotonic() + 900  # a safety net for a hung driver, not a deadline
        while True:
            listing = s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"prefix/{spec.name}/lineages/")
            keys = [o["Key"] for o in listing.get("Contents", [])]
            if any("/states/step-" in k and k.endswith(".pt.sha256") for k in keys):
                break
            if driver.poll() is not None:
                log.seek(0)
                pytest.fail(f"the driver ended before a stored state:\n{log.read()[-3000:]!r}")
            assert time.monotonic() < give_up, "the driver made no progress at all"
            time.sleep(0.2)
        leftovers |= _descendants(driver.pid)
        # Ray's processes (raylet, GCS, trial workers) never held the secret in their environment
        ray_envs = {pid: _environ(pid) for pid in leftovers}
        assert any(b"AWS_SHARED_CREDENTIALS_FILE=" in e for e in ray_envs.values())
        assert not [pid for pid, e in ray_envs.items() if secret.encode() in e]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        _stop_leftovers(leftovers, ray_tmp)
        killed_s = time.perf_counter() - t0
        log.seek(0)
        outputs.append(log.read().decode(errors="replace"))
        log.close()

        store = ExperimentStore(uri)
        rounds_at_kill = {r["round"] for r in store.read_table("rounds").to_pylist()}
        assert max(rounds_at_kill) < spec.imp.rounds, "killed after the lineages had finished"
        round0 = {
            o["Key"]: o["ETag"]
            for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"prefix/{spec.name}/tables/")[
                "Contents"
            ]
            if o["Key"].endswith("round-0000-imp.parquet")
        }
        # the killed driver's credentials file is private while it lingers
        stale = [p for p in runtime.iterdir() if p.name.startswith(credentials.DIR_PREFIX)]
        assert len(stale) == 1 and stat.S_IMODE(stale[0].stat().st_mode) == 0o700
        assert stat.S_IMODE((stale[0] / "credentials").stat().st_mode) == 0o600

        t1 = time.perf_counter()
        resumed = subprocess.run(
            _cli("resume", uri), env=env, capture_output=True, text=True, timeout=300
        )
        outputs += [resumed.stdout, resumed.stderr]
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        resume_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        figures = subprocess.run(
            _cli("figures", uri), env=env, capture_output=True, text=True, timeout=300
        )
        outputs += [figures.stdout, figures.stderr]
        assert figures.returncode == 0, figures.stderr[-3000:]
        figures_s = time.perf_counter() - t1
        cycle_s = time.perf_counter() - t0
    finally:
        _stop_leftovers(leftovers, ray_tmp)
        _stop_leftovers(set(), local_ray_tmp)
        ray_logs = _files_holding(ray_tmp, [secret.encode(), token.encode(), b"PL_DISABLE_FORK"])
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(local_ray_tmp, ignore_errors=True)
    print(
        f"\nlocal run {local_s:.1f} s; S3 cycle {cycle_s:.1f} s "
        f"(run until kill {killed_s:.1f} s, resume {resume_s:.1f} s, figures {figures_s:.1f} s)"
    )

    # the resumed experiment equals the uninterrupted one, mask for mask and row for row
    local_store = ExperimentStore(str(local_root / spec.name))
    lineages = local_store.list("lineages")
    assert len(lineages) == 2 and sorted(store.list("lineages")) == sorted(lineages)
    for lineage in lineages:
        for method in METHODS:
            rel = f"lineages/{lineage}/masks/{method}.pt"
            got, want = store.read_tensors(rel), local_store.read_tensors(rel)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want), (lineage, method)
            assert (got["layers.0.weight"] == spec.imp.rounds - 1).any()
    drop = ("wall_time_s", "experiment")

    def rows(s):
        table = s.read_table("rounds").to_pylist()
        return sorted(repr(sorted((k, v) for k, v in r.items() if k not in drop)) for r in table)

    assert rows(store) == rows(local_store)
    # resumed from stored states, not restarted: some lineage kept its round-0 rows
    after = {
        o["Key"]: o["ETag"]
        for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"prefix/{spec.name}/tables/")[
            "Contents"
        ]
    }
    assert round0 and any(after[key] == etag for key, etag in round0.items())
    assert len(rows(store)) == 2 * (spec.imp.rounds + 1) * len(METHODS)
    assert b"| imp |" in store.read_bytes("figures/summary.md")

    # no secret anywhere: store objects, CLI output, Ray's session logs
    needles = [secret.encode(), token.encode()]
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    ]
    assert len(keys) > 20
    for key in keys:
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert not any(n in body for n in needles), key
    assert outputs[0] and not any(n.decode() in text for n in needles for text in outputs)
    # Tune's trial runtime environment is in these logs, so a copied secret would be too
    assert ray_logs[b"PL_DISABLE_FORK"], "Ray's runtime-env log of the run was not found"
    assert ray_logs[secret.encode()] == [] and ray_logs[token.encode()] == []
    # the resumed driver removed the killed one's credentials file, and its own at exit
    assert [p for p in runtime.iterdir() if p.name.startswith(credentials.DIR_PREFIX)] == []
