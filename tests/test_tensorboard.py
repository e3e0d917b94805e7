"""TensorBoard event files of trials, read back with TensorBoard's own reader and compared with
the result rows of the store."""

from __future__ import annotations

import copy
import io
import math
import os

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lotterylab.analysis import open_experiment
from lotterylab.cluster.launch import run_experiment
from lotterylab.platform.data.registry import build_datasets
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.models import FIRST_LAYER
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.tensorboard import (
    MASK_GAP,
    MASK_TAG,
    MIN_TILE,
    ROUND_COLUMNS,
    log_imp_round,
    mask_grid,
)

METHODS = ["imp", "oneshot", "random"]


def _events(path: str) -> EventAccumulator:
    accumulator = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _points(accumulator: EventAccumulator, tag: str) -> dict[int, float]:
    points = accumulator.Scalars(tag)
    steps = [p.step for p in points]
    assert len(steps) == len(set(steps)), f"{tag}: duplicate steps {steps}"
    return {p.step: p.value for p in points}


def _stored(rows, column: str, step: str) -> dict[int, float]:
    """A column of stored rows by step, as TensorBoard keeps it (float32), nulls left out."""
    kept = rows[rows[column].notna()]
    return {int(s): float(np.float32(v)) for s, v in zip(kept[step], kept[column], strict=True)}


def _check_mask_image(encoded: bytes, width: int, height: int, mask, image_shape) -> None:
    """The PNG shows unit u's mask (mean over channels) in grid cell u, upscaled, row-major."""
    channels, side, _ = image_shape
    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    units = min(16, mask.shape[0])
    cols = math.ceil(math.sqrt(units))
    rows = math.ceil(units / cols)
    scale = math.ceil(MIN_TILE / side)
    tile = side * scale
    assert (width, height) == (
        cols * (tile + MASK_GAP) - MASK_GAP,
        rows * (tile + MASK_GAP) - MASK_GAP,
    )
    assert pixels.shape == (height, width, 3)
    expected = mask[:units].float().reshape(units, channels, side, side).mean(1) * 255
    for unit in range(units):
        top, left = (unit // cols) * (tile + MASK_GAP), (unit % cols) * (tile + MASK_GAP)
        cell = pixels[top : top + tile, left : left + tile].astype(np.int64)
        shown = cell[::scale, ::scale, 0]
        assert np.abs(shown - expected[unit].numpy()).max() <= 0.5
        assert (cell == np.repeat(np.repeat(cell[::scale, ::scale], scale, 0), scale, 1)).all()
        assert (cell[..., 0] == cell[..., 1]).all() and (cell[..., 1] == cell[..., 2]).all()


def _imp_spec(tiny_spec_dict: dict) -> dict:
    spec = copy.deepcopy(tiny_spec_dict)
    spec["seeds"] = [0]
    spec["datasets"] = spec["datasets"][:1]
    spec["imp"]["rounds"] = 2
    return spec


def test_imp_rounds_in_tensorboard_equal_the_stored_rows(tiny_spec_dict, tmp_path):
    outcome = run_experiment(parse_spec(_imp_spec(tiny_spec_dict)), "x", str(tmp_path / "res"))
    assert outcome.errored_trials == []
    experiment = open_experiment(outcome.uri)
    rounds, kurtosis = experiment.rounds(), experiment.kurtosis()
    [lineage] = experiment.lineage_ids()
    image_shape = tuple(experiment.lineage(lineage)["image_shape"])
    for method in METHODS:
        folder = os.path.join(outcome.uri, "tensorboard", lineage, method)
        assert sorted(os.listdir(folder)) == [
            f"events.out.tfevents.{n:010d}.lotterylab" for n in range(3)
        ]
        events = _events(folder)
        own = rounds[rounds["method"] == method]
        for column in ROUND_COLUMNS:
            stored = _stored(own, column, "round")
            assert sorted(stored) == [0, 1, 2]
            assert _points(events, f"rounds/{column}") == stored
        own_kurtosis = kurtosis[kurtosis["method"] == method]
        for column in ["kurtosis_mean", "kurtosis_median"]:
            stored = _stored(own_kurtosis, column, "round")
            assert sorted(stored) == [0, 1, 2]
            assert _points(events, f"kurtosis/{column}") == stored
        images = events.Images(MASK_TAG)
        assert [i.step for i in images] == [0, 1, 2]
        for image in images:
            mask = experiment.first_layer_mask(lineage, method, round=image.step)
            _check_mask_image(
                image.encoded_image_string, image.width, image.height, mask, image_shape
            )
    # the pruned masks are no longer all white: the images follow the rounds
    last = experiment.first_layer_mask(lineage, "imp", round=2)
    assert 0 < float(last.float().mean()) < 1


@pytest.fixture
def one_thread():
    """One torch thread, as a 1-CPU trial runs (tiny tensors only lose time to more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_replayed_round_keeps_one_point_per_step(tiny_spec_dict, tmp_path, one_thread):
    """A trial that dies after writing round 1 but before its checkpoint replays round 1."""
    imp = {"rounds": 1, "fraction": 0.4, "baselines": [], "measure_cavity": False}
    spec = parse_spec({**_imp_spec(tiny_spec_dict), "imp": imp})
    data = build_datasets(spec.datasets)["nlgp"]
    store = ExperimentStore(str(tmp_path / "tiny"))
    config = LineageConfig(store.name, "nlgp", 0, spec)
    lineage = IMPLineage(config, data, store)
    log_imp_round(lineage, lineage.run_round())
    checkpoint = copy.deepcopy(lineage.state_dict())
    first = log_imp_round(lineage, lineage.run_round())
    first_bytes = [store.read_bytes(rel) for rel in first]

    resumed = IMPLineage(config, data, store)
    resumed.load_state_dict(checkpoint)
    rows = resumed.run_round()
    assert log_imp_round(resumed, rows) == first
    assert [store.read_bytes(rel) for rel in first] != first_bytes  # rewritten, not appended
    for row in rows:
        events = _events(store.path("tensorboard", lineage.id, row["method"]))
        accuracy = _points(events, "rounds/test_accuracy")
        assert sorted(accuracy) == [0, 1]
        assert accuracy[1] == float(np.float32(row["test_accuracy"]))
        assert [i.step for i in events.Images(MASK_TAG)] == [0, 1]


def test_pai_epochs_in_tensorboard_equal_the_stored_rows(pai_spec_dict, tmp_path):
    pai_spec_dict["pai"]["methods"] = ["snip"]
    outcome = run_experiment(parse_spec(pai_spec_dict), "x", str(tmp_path / "res"))
    assert outcome.errored_trials == []
    experiment = open_experiment(outcome.uri)
    epochs, masks = experiment.pai_epochs(), experiment.pai_masks()
    [run] = experiment.run_ids()
    events = _events(os.path.join(outcome.uri, "tensorboard", run))
    accuracy = _points(events, "pai_epochs/test_accuracy")
    assert sorted(accuracy) == [0, 1, 2]
    assert accuracy == _stored(epochs, "test_accuracy", "epoch")
    loss = _points(events, "pai_epochs/train_loss")
    assert sorted(loss) == [1, 2]  # epoch 0 is the pruned net before any training
    assert loss == _stored(epochs, "train_loss", "epoch")
    [density] = masks["actual_density"]
    assert _points(events, "pai_masks/actual_density") == {
        e: float(np.float32(density)) for e in (0, 1, 2)
    }
    assert "pai_epochs/test_miou" not in events.Tags()["scalars"]
    assert events.Tags()["images"] == []  # ResNet-20: no dense first layer on pixels


def test_event_files_land_in_the_bucket(pai_spec_dict, s3_bucket):
    pai_spec_dict["pai"]["methods"] = ["magnitude"]
    pai_spec_dict["model"] = {"name": "fcn", "hidden": [24, 12]}
    pai_spec_dict["training"].update(epochs=1, lr_drops=[], augment="none")
    outcome = run_experiment(parse_spec(pai_spec_dict), "x", f"s3://{s3_bucket}/runs")
    assert outcome.errored_trials == []
    experiment = open_experiment(outcome.uri)
    [run] = experiment.run_ids()
    folder = f"{outcome.uri}/tensorboard/{run}"
    fs = fsspec.filesystem("s3")
    assert sorted(os.path.basename(p) for p in fs.ls(folder)) == [
        f"events.out.tfevents.{n:010d}.lotterylab" for n in (0, 1)
    ]
    events = _events(folder)  # TensorBoard's own S3 reader, as `tensorboard --logdir s3://…`
    epochs = experiment.pai_epochs()
    assert _points(events, "pai_epochs/test_accuracy") == _stored(epochs, "test_accuracy", "epoch")
    [image] = events.Images(MASK_TAG)
    assert image.step == 0
    mask = experiment.run_masks(run)[FIRST_LAYER]
    assert 0 < float(mask.float().mean()) < 1
    image_shape = tuple(experiment.run(run)["image_shape"])
    _check_mask_image(image.encoded_image_string, image.width, image.height, mask, image_shape)


def test_mask_grid_refuses_a_mask_of_another_image_shape():
    with pytest.raises(ValueError, match=r"\(units, 192\)"):
        mask_grid(torch.ones(4, 64, dtype=torch.bool), (3, 8, 8))
