"""The analysis pool over stored experiments: units, values, idempotence, dead workers, CLI.

The experiments are written by the procedures the trainables run (``IMPLineage.run_round``,
``PaIRun.prune``) into real stores, once per module; the analyses run on a real local Ray with
two CPUs.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time

import pytest
import ray
import torch
import yaml
from conftest import TINY_PAI, TINY_SPEC
from torch import nn

from lotterylab.analysis.spectra import spectrum_panels
from lotterylab.cli import main
from lotterylab.cluster.post_run_pool import AnalysisPool, PoolSize, analyze_experiment, pool_size
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.imp.masks import mask_after_round, masks_after_round
from lotterylab.platform.metrics import (
    cavity_scores,
    layer_widths,
    ntk_spectrum,
    preactivation_kurtosis,
    rf_width,
)
from lotterylab.platform.models import apply_masks, build_model
from lotterylab.platform.pai.run import PaIConfig, PaIRun, pai_grid
from lotterylab.platform.post_run import (
    CAVITY,
    COMPUTED,
    KURTOSIS,
    NTK,
    SKIPPED,
    WIDTH,
    list_units,
    parse_what,
)
from lotterylab.platform.seeds import derived_seed
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.lease import ExperimentLease

IMP_ROUNDS = 2
FRESH_UNIT_S = 0.3


def _write_spec(store: ExperimentStore, spec_dict: dict):
    """What ``lotterylab run`` writes before any trial: the spec as given and resolved."""
    spec = parse_spec(spec_dict, "test spec")
    store.write_artifact("spec.yaml", yaml.safe_dump(spec_dict).encode())
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))
    return spec


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as a 1-CPU trial and worker run: bit-comparable results, and no
    spinning thread teams on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """Ray's workers inherit the object-storage variables that ``s3_server`` sets."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def imp_experiment(tmp_path_factory):
    """One FCN lineage (IMP, oneshot, random) that has finished rounds 0 and 1 of 2."""
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict.update(name="impan", seeds=[0], datasets=spec_dict["datasets"][:1])
    spec_dict["imp"]["rounds"] = IMP_ROUNDS
    store = ExperimentStore(str(tmp_path_factory.mktemp("imp") / "impan"))
    spec = _write_spec(store, spec_dict)
    data = build_datasets(spec.datasets)["nlgp"]
    lineage = IMPLineage(LineageConfig(store.name, "nlgp", 0, spec), data, store)
    lineage.run_round()
    lineage.run_round()
    return store, spec, lineage


@pytest.fixture(scope="module")
def pai_experiment(tmp_path_factory):
    """Two pruned PaI runs (SNIP, random) of a narrow ResNet-20 on 3-channel NLGP."""
    spec_dict = copy.deepcopy(TINY_PAI)
    spec_dict.update(name="paian", model={"name": "resnet20", "width": 4})
    spec_dict["pai"]["methods"] = ["snip", "random"]
    store = ExperimentStore(str(tmp_path_factory.mktemp("pai") / "paian"))
    spec = _write_spec(store, spec_dict)
    datasets = build_datasets(spec.datasets)
    runs = []
    for run in pai_grid(spec):
        procedure = PaIRun(
            PaIConfig(experiment=store.name, spec=spec, **run), datasets[run["dataset"]], store
        )
        procedure.prune()
        runs.append(procedure)
    return store, spec, datasets, runs


def _mtimes(store: ExperimentStore) -> dict[str, int]:
    """Modification times of the analyses' artifacts, sidecars and table parts."""
    out = {}
    for folder, _, files in os.walk(store.root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), store.root)
            if rel.startswith(("analysis/", "tables/analysis_")) and not name.startswith("."):
                out[rel] = os.stat(os.path.join(folder, name)).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def imp_analyses(local_ray, imp_experiment):
    """Analyses while the lineage trains (its run holds the experiment); then, after one stored
    output was corrupted, another's table part deleted and the last round trained, a second
    analysis; then a third with nothing left to do."""
    store, spec, lineage = imp_experiment
    with ExperimentLease(store):  # a live run of the experiment
        during = analyze_experiment(store.uri, workers=2, progress=False)
    units = {(u.what, u.method, u.round): u for u in list_units(store, spec).units}
    corrupt, partless = units[(CAVITY, "imp", 1)], units[(KURTOSIS, "random", 0)]
    data = bytearray(open(store.path(corrupt.output), "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(store.path(corrupt.output), "wb").write(bytes(data))
    os.remove(store.path(partless.table_part))
    before = _mtimes(store)
    lineage.run_round()  # the last round
    after = analyze_experiment(store.uri, workers=1, progress=False)
    stored = _mtimes(store)
    again = analyze_experiment(store.uri, workers=1, progress=False)
    return {
        "during": during,
        "corrupt": corrupt,
        "partless": partless,
        "before": before,
        "after": after,
        "changed": {path for path, mtime in stored.items() if before.get(path) != mtime},
        "again": again,
        "unchanged": _mtimes(store) == stored,
    }


# -- units ---------------------------------------------------------------------------------------
def test_units_of_a_stored_imp_experiment_cover_its_stored_rounds(imp_experiment):
    store, spec, lineage = imp_experiment
    listing = list_units(store, spec, parse_what("cavity,ntk,width,kurtosis"))
    got = {(u.what, u.source_id, u.method, u.round) for u in listing.units}
    expected = {
        (what, lineage.id, method, n)
        for what in (CAVITY, WIDTH, KURTOSIS)
        for method in lineage.methods
        for n in range(lineage.next_round)
    }
    assert got == expected
    assert "IMP experiment" in listing.not_applicable[NTK]
    outputs = [u.output for u in listing.units]
    assert len(set(outputs)) == len(outputs)
    assert f"analysis/cavity/{lineage.id}/oneshot-round-0001.pt" in outputs


def test_units_of_a_stored_pai_experiment_with_dense_references(pai_experiment):
    store, spec, _, runs = pai_experiment
    listing = list_units(store, spec, parse_what("ntk,width,cavity,kurtosis"), samples=24)
    ntk = {u.source_id for u in listing.units if u.what == NTK}
    dense = {u.source_id for u in listing.units if u.what == NTK and u.source == "dense"}
    assert ntk - dense == {run.id for run in runs}
    assert len(dense) == 1  # one seed, one data set: one dense net at initialisation
    assert {u.source_id for u in listing.units if u.what == WIDTH} == {run.id for run in runs}
    assert {u.output for u in listing.units if u.what == NTK and u.source == "run"} == {
        f"analysis/ntk/{run.id}/samples-0024.pt" for run in runs
    }
    assert "PaI experiment" in listing.not_applicable[CAVITY]
    assert "no dense first layer" in listing.not_applicable[KURTOSIS]


def test_bad_samples_are_refused_naming_the_option(pai_experiment):
    store, spec, _, _ = pai_experiment
    with pytest.raises(ValueError, match="--samples must be a positive integer, got 0"):
        list_units(store, spec, [NTK], samples=0)
    with pytest.raises(ValueError, match=r"--samples 100000: Θ would have 100000 × 3 logits"):
        list_units(store, spec, [NTK], samples=100_000)


def test_pool_size_from_cluster_resources():
    assert pool_size({"CPU": 2.0}, units=10) == PoolSize(2, 1.0, 0.0)
    assert pool_size({"CPU": 16.0}, units=3) == PoolSize(3, 1.0, 0.0)
    assert pool_size({"CPU": 2.0}, units=10, workers=4) == PoolSize(4, 0.5, 0.0)
    assert pool_size({"CPU": 16.0, "GPU": 2.0}, units=100) == PoolSize(8, 1.0, 0.25)
    assert pool_size({"CPU": 16.0, "GPU": 2.0}, units=100, workers=2) == PoolSize(2, 1.0, 1.0)
    assert pool_size({"CPU": 4.0, "GPU": 1.0}, units=100, workers=8) == PoolSize(8, 0.5, 0.125)
    with pytest.raises(ValueError, match="--workers must be a positive integer, got 0"):
        pool_size({"CPU": 2.0}, units=1, workers=0)


# -- IMP values, idempotence ---------------------------------------------------------------------
def test_imp_analyses_equal_direct_metric_calls(imp_experiment, imp_analyses):
    store, spec, lineage = imp_experiment
    first = lineage.first_layer
    inputs = lineage._first_layer_inputs()  # what the lineage measures kurtosis on
    labels = lineage.data.train_y[: len(inputs)]
    shape = lineage.data.image_shape
    for method in lineage.methods:
        for n in range(IMP_ROUNDS + 1):
            stem = f"{lineage.id}/{method}-round-{n:04d}"
            masks = masks_after_round(lineage.removal_rounds[method], n - 1)
            weight = lineage.rewind_state[first] * masks[first]
            cavity = store.read_tensors(f"analysis/cavity/{stem}.pt")["scores"]
            torch.testing.assert_close(
                cavity, cavity_scores(weight, inputs), rtol=0, atol=0, equal_nan=True
            )
            kurtosis = store.read_tensors(f"analysis/kurtosis/{stem}.pt")
            direct = preactivation_kurtosis(
                weight, inputs, labels=labels, num_classes=lineage.data.num_classes
            )
            own = store.read_tensors(f"lineages/{stem.replace('/', '/kurtosis/')}.pt")
            for key in ("overall", "per_class"):
                expected = getattr(direct, key)
                torch.testing.assert_close(kurtosis[key], expected, rtol=0, atol=0, equal_nan=True)
                torch.testing.assert_close(own[key], expected, rtol=0, atol=0, equal_nan=True)
            sigma_x, sigma_y = rf_width(masks[first], shape)
            torch.testing.assert_close(kurtosis["sigma_x"], sigma_x, equal_nan=True)
            torch.testing.assert_close(kurtosis["sigma_y"], sigma_y, equal_nan=True)
            width = store.read_json(f"analysis/width/{stem}.json")
            widths = layer_widths(masks)
            assert width["active_units"] == widths.active_units
            assert width["collapsed"] == widths.collapsed
            assert width["density"] == pytest.approx(widths.density, abs=0)

    cavity_rows = store.read_table("analysis_cavity").to_pandas()
    assert len(cavity_rows) == len(lineage.methods) * (IMP_ROUNDS + 1)
    for row in cavity_rows.itertuples():
        mask = mask_after_round(lineage.removal_rounds[row.method][first], row.round - 1)
        assert row.n_alive == int(mask.sum())
    # the RF widths of the analysis rows are those the lineage recorded in its rounds table
    rounds = store.read_table("rounds").to_pandas().set_index(["method", "round"])
    kurtosis_rows = store.read_table("analysis_kurtosis").to_pandas()
    for row in kurtosis_rows.itertuples():
        assert row.rf_width_median == pytest.approx(
            rounds.loc[(row.method, row.round), "rf_width_median"], rel=1e-12
        )


def test_analysis_runs_while_training_and_completes_later(imp_experiment, imp_analyses):
    _, _, lineage = imp_experiment
    during, after = imp_analyses["during"], imp_analyses["after"]
    damaged = {imp_analyses["corrupt"].key, imp_analyses["partless"].key}
    per_round = len(lineage.methods)  # units of one analysis in one round
    assert during.computed == {
        CAVITY: per_round * IMP_ROUNDS,
        NTK: 0,
        WIDTH: per_round * IMP_ROUNDS,
        KURTOSIS: per_round * IMP_ROUNDS,
    }
    assert not during.failed and not after.failed
    # the later run computes the last round's units and the damaged ones, nothing else
    last = f"round-{IMP_ROUNDS:04d}"
    computed = {r.key for r in after.results if r.status == COMPUTED}
    assert {r.device for r in after.results if r.status == COMPUTED} == {"cpu"}
    assert {k for k in computed if last in k} == {
        f"analysis/{what}/{lineage.id}/{method}-{last}.{'json' if what == WIDTH else 'pt'}"
        for what in (CAVITY, WIDTH, KURTOSIS)
        for method in lineage.methods
    }
    assert computed - {k for k in computed if last in k} == damaged
    assert sum(r.status == SKIPPED for r in after.results) == after.units - len(computed)
    assert all(last in path for path in imp_analyses["changed"] - _files_of(imp_analyses))


def _files_of(imp_analyses) -> set[str]:
    """What recomputing the damaged units writes: artifact, checksum and table part."""
    files = set()
    for unit in (imp_analyses["corrupt"], imp_analyses["partless"]):
        files |= {unit.output, unit.output + ".sha256", unit.table_part}
    return files


def test_corrupt_output_and_missing_table_part_are_recomputed(imp_experiment, imp_analyses):
    store = imp_experiment[0]
    assert _files_of(imp_analyses) <= imp_analyses["changed"]
    for unit in (imp_analyses["corrupt"], imp_analyses["partless"]):
        store.read_artifact(unit.output)  # verified again
        assert store.exists(unit.table_part)


def test_a_second_run_skips_everything_without_starting_workers(imp_analyses):
    again = imp_analyses["again"]
    assert again.units > 0 and again.workers == 0  # verified on the driver, no pool
    assert sum(again.computed.values()) == 0
    assert sum(again.skipped.values()) == again.units
    assert imp_analyses["unchanged"]


# -- PaI: NTK spectra through the command line ---------------------------------------------------
def _direct_spectrum(spec, data, seed: int, masks, n: int) -> torch.Tensor:
    """The fixed-weight NTK at initialisation, batch norm on the inputs' own statistics."""
    model = build_model(spec.model, data.image_shape, data.num_classes, derived_seed(seed, "init"))
    if masks is not None:
        apply_masks(model, masks)
    x = data.batch("train", torch.arange(n)).view(n, *data.image_shape)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return ntk_spectrum(model.eval(), masks, x)


def _check_spectra(store, spec, datasets, runs, samples: int) -> None:
    data = datasets["nlgp3"]
    for run in runs:
        stored = store.read_tensors(f"analysis/ntk/{run.id}/samples-{samples:04d}.pt")
        expected = _direct_spectrum(spec, data, 0, run.masks, samples)
        torch.testing.assert_close(stored["eigenvalues"], expected, rtol=1e-9, atol=0)
    dense = [u for u in list_units(store, spec, [NTK], samples).units if u.source == "dense"]
    stored = store.read_tensors(dense[0].output)["eigenvalues"]
    expected = _direct_spectrum(spec, data, 0, None, samples)
    torch.testing.assert_close(stored, expected, rtol=1e-9, atol=0)


def test_cli_analyze_pai_spectra_widths_and_figure(local_ray, pai_experiment, capsys):
    store, spec, datasets, runs = pai_experiment
    rc = main(
        ["analyze", store.uri, "--what", "ntk,width,kurtosis", "--workers", "2", "--samples", "24"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"ntk: {len(runs) + 1} computed, 0 already stored" in out
    assert "kurtosis: skipped, resnet20 has no dense first layer" in out
    _check_spectra(store, spec, datasets, runs, 24)
    ntk_rows = store.read_table("analysis_ntk").to_pandas()
    ntk_rows = ntk_rows[ntk_rows["artifact"].str.endswith("samples-0024.pt")]
    assert sorted(ntk_rows["method"]) == ["dense", "random", "snip"]
    assert (ntk_rows["samples"] == 24).all() and (ntk_rows["outputs"] == 3).all()
    # the widths agree with those each run recorded when it pruned
    own = store.read_table("pai_masks").to_pandas().set_index("run_id")
    for run in runs:
        width = store.read_json(f"analysis/width/{run.id}/mask.json")
        assert width["active_units"] == dict(own.loc[run.id, "active_units"])
        assert width["active_units"] == layer_widths(run.masks).active_units
    panels = [p for p in spectrum_panels(store) if p.samples == 24]
    assert sorted(p.series for p in panels) == ["random", "snip"]
    assert all(len(p.spectra) == 1 and len(p.dense) == 1 for p in panels)
    dense = ntk_rows.loc[ntk_rows["method"] == "dense", "eig_max"].item()
    assert all(p.dense[0][0] == dense for p in panels)  # each drawn over its own dense net
    figure = store.path("figures", "ntk_spectrum_resnet20_nlgp3_n24_d0.2.png")
    assert figure in out
    with open(figure, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_dead_worker_is_replaced_and_its_unit_recomputed(local_ray, pai_experiment):
    store, spec, datasets, runs = pai_experiment
    samples = 64  # outputs of their own, units of a second or more to kill one mid-way
    units = list_units(store, spec, [NTK], samples).units
    pool = AnalysisPool(store.uri, spec, PoolSize(2, 1.0, 0.0), datasets)
    try:
        pids = pool.pids()
        results = []
        runner = threading.Thread(target=lambda: results.extend(pool.run(units)))
        runner.start()
        killed = None
        while killed is None and runner.is_alive():
            # a unit that started moments ago is surely still running when the signal lands
            fresh = [
                (index, state[0])
                for index, state in enumerate(pool.busy())
                if state is not None and state[1] < FRESH_UNIT_S
            ]
            if fresh:
                killed = fresh[0]
                os.kill(pids[killed[0]], signal.SIGKILL)
            else:
                time.sleep(0.01)
        runner.join(timeout=600)
        assert killed is not None, "no unit was seen starting"
        index, key = killed
        assert not runner.is_alive()
        assert [r.status for r in results] == [COMPUTED] * len(units)
        again = next(r for r in results if r.key == key)
        assert again.pid not in (0, pids[index])  # computed again by the restarted worker
        assert pool.pids()[index] == again.pid
    finally:
        pool.close()
    _check_spectra(store, spec, datasets, runs, samples)


def test_analyze_an_experiment_on_object_storage(local_ray, pai_experiment, s3_bucket):
    _, spec, datasets, runs = pai_experiment
    store = ExperimentStore(f"s3://{s3_bucket}/results/paian")
    store.write_json("spec.resolved.json", spec.model_dump(mode="json"))
    for run in runs:
        PaIRun(run.config, datasets[run.config.dataset], store).prune()
    outcome = analyze_experiment(store.uri, "width", workers=1, progress=False)
    assert outcome.computed == {WIDTH: len(runs)} and not outcome.failed
    for run in runs:
        width = store.read_json(f"analysis/width/{run.id}/mask.json")
        assert width["active_units"] == layer_widths(run.masks).active_units
    assert len(store.read_table("analysis_width")) == len(runs)
    assert not store.exists("analysis/lease.json")  # released when done


# -- refusals ------------------------------------------------------------------------------------
def test_cli_bad_what_is_exit_2_naming_the_allowed_values(pai_experiment, capsys):
    store = pai_experiment[0]
    assert main(["analyze", store.uri, "--what", "cavity,spectra"]) == 2
    err = capsys.readouterr().err
    assert "--what: 'spectra' is not an analysis" in err
    assert "allowed: cavity, ntk, width, kurtosis" in err
    assert main(["analyze", store.uri, "--what", ","]) == 2
    assert main(["analyze", store.uri, "--workers", "0"]) == 2
    assert "--workers must be a positive integer, got 0" in capsys.readouterr().err


def test_second_analyzer_of_an_experiment_is_refused(pai_experiment, capsys):
    store = pai_experiment[0]
    for path in _mtimes(store):
        if path.startswith("analysis/width/"):
            os.remove(store.path(path))
    before = _mtimes(store)
    with ExperimentLease(ExperimentStore(store.uri + "/analysis")) as held:
        assert main(["analyze", store.uri, "--what", "width"]) == 2
        err = capsys.readouterr().err
        assert f"experiment {store.uri} is being analysed by {held.holder}" in err
        assert f"run `lotterylab analyze {store.uri}` again" in err
    assert _mtimes(store) == before  # refused before computing anything
