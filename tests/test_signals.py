"""SIGINT and SIGTERM during ``lotterylab run``: the rounds that finished stay, the lease is
released, Ray's processes end, the exit code is 128 + the signal, and no report is drawn."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.lease import LEASE_FILE

ROOT = Path(__file__).resolve().parent.parent
SAFETY_NET_S = 900  # only a hung driver gets this far; the test waits on a row file


def wait_for(condition, driver: subprocess.Popen) -> None:
    """Poll ``condition`` while the driver lives; the bound is a safety net, not a deadline."""
    give_up = time.monotonic() + SAFETY_NET_S
    while not condition():
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        assert time.monotonic() < give_up, "the driver made no progress at all"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_resumably(tiny_spec_dict, tmp_path, write_spec, signum):
    tiny_spec_dict.update(name="stopme", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["training"].update(steps=400, rewind_step=10)
    tiny_spec_dict["imp"]["rounds"] = 6
    root = tmp_path / "results"
    store = ExperimentStore(str(root / "stopme"))
    driver = subprocess.Popen(
        [sys.executable, "-m", "lotterylab.cli", "run", write_spec(tiny_spec_dict)]
        + ["--storage", str(root)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    helpers: list[psutil.Process] = []
    try:
        rows = store.path("tables", "rounds", "*", "round-0000-imp.parquet")
        wait_for(lambda: glob.glob(rows), driver)
        helpers = psutil.Process(driver.pid).children(recursive=True)
        assert helpers, "the embedded Ray started no processes"
        driver.send_signal(signum)
        _, err = driver.communicate(timeout=SAFETY_NET_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    err = err.decode()
    assert driver.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signum.name}" in err
    assert f"Continue with: lotterylab resume {store.uri}" in err
    assert "Traceback" not in err
    # the finished rounds are stored, the run is not complete, and nothing claims it is
    finished = {r["round"] for r in store.read_table("rounds").to_pylist()}
    assert 0 in finished and max(finished) < 6
    assert not store.exists("figures/report.md") and not store.list("figures")
    assert not store.exists(LEASE_FILE)
    # Ray's own processes (raylet, GCS, dashboard and runtime-env agents …) are gone
    _, alive = psutil.wait_procs(helpers, timeout=60)
    assert not alive, [p.pid for p in alive]
