"""TensorBoard event files of every trial, written through the experiment store.

``tensorboard --logdir <experiment URI>`` reads them (``S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``
point TensorBoard at an S3-compatible server). Layout under the experiment::

    tensorboard/<lineage id>/<method>/events.out.tfevents.<round>.lotterylab   IMP
    tensorboard/<run id>/events.out.tfevents.<epoch>.lotterylab                PaI

An IMP method is its own TensorBoard run, so one chart overlays IMP and its baselines. A scalar
is tagged ``<table>/<column>`` after the result row it copies (``rounds/test_accuracy``,
``kurtosis/kurtosis_mean``, ``pai_epochs/train_loss``, ``pai_masks/actual_density``); FCN
first-layer masks are the image ``masks/first_layer``.

Every step (IMP round, PaI epoch) is one whole event file named by its zero-padded step and
written atomically (``ExperimentStore.write_bytes``). A crashed trial leaves complete files
only, and a round replayed after a resume overwrites its own file, as the Parquet parts do:
each step keeps exactly one point, never two contradictory ones. TensorBoard reads the files
of a run in name order, which is step order.
"""

from __future__ import annotations

import io
import math
import posixpath
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import torch
from PIL import Image
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from lotterylab.platform.imp import masks as mk
from lotterylab.platform.metrics import layer_widths
from lotterylab.platform.models import first_layer_name, has_dense_first_layer
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.tables import (
    KURTOSIS_TABLE,
    PAI_EPOCHS_TABLE,
    PAI_MASKS_TABLE,
    ROUNDS_TABLE,
)

if TYPE_CHECKING:
    from lotterylab.platform.imp.lineage import IMPLineage
    from lotterylab.platform.pai.run import PaIRun

TENSORBOARD_DIR = "tensorboard"
MASK_TAG = "masks/first_layer"
ROUND_COLUMNS = (
    "test_accuracy",
    "train_accuracy",
    "sparsity",
    "sparsity_first_layer",
    "rf_width_median",
)
KURTOSIS_COLUMNS = ("kurtosis_mean", "kurtosis_median")
EPOCH_COLUMNS = ("train_loss", "test_accuracy", "test_miou")

# mask image: the first MASK_UNITS hidden units, each an Np×Np tile (mean over channels: the
# fraction of a pixel's channels still connected), nearest-upscaled to at least MIN_TILE pixels,
# on a near-square grid with MASK_GAP-pixel separators in SEPARATOR colour
MASK_UNITS = 16
MIN_TILE = 32
MASK_GAP = 2
SEPARATOR = (40, 80, 170)


def event_file_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"a TensorBoard step must be >= 0, got {step}")
    return f"events.out.tfevents.{step:010d}.lotterylab"


def run_dir(owner_id: str, method: str | None = None) -> str:
    """The TensorBoard run folder of a lineage's method or of a PaI run, inside the store."""
    return posixpath.join(TENSORBOARD_DIR, owner_id, *([method] if method else []))


def encode_events(
    step: int,
    scalars: Mapping[str, float | None],
    images: Mapping[str, torch.Tensor] | None = None,
    wall_time: float | None = None,
) -> bytes:
    """One event file: the version header, then every scalar (None skipped) and RGB image."""
    wall_time = time.time() if wall_time is None else wall_time
    values = [
        Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()
        if value is not None
    ]
    for tag, pixels in (images or {}).items():
        values.append(Summary.Value(tag=tag, image=_png(pixels)))
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())
    event = Event(wall_time=wall_time, step=step, summary=Summary(value=values))
    writer.write(event.SerializeToString())
    return buffer.getvalue()


def write_step(
    store: ExperimentStore,
    folder: str,
    step: int,
    scalars: Mapping[str, float | None],
    images: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """Write (or replace) the event file of one step; returns its path in the store."""
    rel = posixpath.join(folder, event_file_name(step))
    store.write_bytes(rel, encode_events(step, scalars, images))
    return rel


def mask_grid(mask: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The first-layer masks of the first units as one RGB uint8 image (height, width, 3).

    ``mask`` is (H, C·Np·Np) with inputs indexed c·Np² + y·Np + x; a white pixel is connected
    in every channel, black in none.
    """
    channels, height, width = image_shape
    if mask.dim() != 2 or mask.shape[1] != channels * height * width:
        raise ValueError(
            f"first-layer mask of shape {tuple(mask.shape)} does not match images of shape "
            f"{tuple(image_shape)}: expected (units, {channels * height * width})"
        )
    units = min(MASK_UNITS, mask.shape[0])
    cols = math.ceil(math.sqrt(units))
    rows = math.ceil(units / cols)
    scale = max(1, math.ceil(MIN_TILE / max(height, width)))
    tiles = mask[:units].float().reshape(units, channels, height, width).mean(1)
    tiles = tiles.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    th, tw = tiles.shape[1:]
    # -1 marks separators and empty grid cells; they get the separator colour below
    cells = torch.full((rows * cols, th + MASK_GAP, tw + MASK_GAP), -1.0)
    cells[:units, :th, :tw] = tiles
    canvas = cells.reshape(rows, cols, th + MASK_GAP, tw + MASK_GAP).permute(0, 2, 1, 3)
    canvas = canvas.reshape(rows * (th + MASK_GAP), cols * (tw + MASK_GAP))
    canvas = canvas[: rows * (th + MASK_GAP) - MASK_GAP, : cols * (tw + MASK_GAP) - MASK_GAP]
    gray = (canvas.clamp(min=0) * 255).round().to(torch.uint8)
    rgb = gray.unsqueeze(-1).expand(*gray.shape, 3).clone()
    rgb[canvas < 0] = torch.tensor(SEPARATOR, dtype=torch.uint8)
    return rgb


def log_imp_round(lineage: IMPLineage, rows: list[dict]) -> list[str]:
    """The events of the round that produced ``rows`` (``IMPLineage.run_round``), per method."""
    written = []
    for row in rows:
        method, n = row["method"], row["round"]
        scalars = {f"{ROUNDS_TABLE}/{c}": row[c] for c in ROUND_COLUMNS}
        images = {}
        if lineage.dense_first_layer:  # a dense first layer on pixels: the FCN
            if lineage.imp.measure_kurtosis:
                kurtosis = _stored_row(
                    lineage.store, KURTOSIS_TABLE, lineage.id, f"round-{n:04d}-{method}"
                )
                scalars.update({f"{KURTOSIS_TABLE}/{c}": kurtosis[c] for c in KURTOSIS_COLUMNS})
            removal = lineage.removal_rounds[method][lineage.first_layer]
            # the mask this round trained under, the one its row's sparsity describes
            mask = mk.mask_after_round(removal, n - 1)
            images[MASK_TAG] = mask_grid(mask, lineage.data.image_shape)
        folder = run_dir(lineage.id, method)
        written.append(write_step(lineage.store, folder, n, scalars, images))
    return written


def log_pai_epoch(run: PaIRun, row: dict, pruned_now: bool) -> list[str]:
    """The events of an epoch's row (``PaIRun.run_epoch``); with ``pruned_now`` also epoch 0."""
    folder = run_dir(run.id)
    density = {f"{PAI_MASKS_TABLE}/actual_density": layer_widths(run.masks).density}
    written = []
    if pruned_now:  # prune() wrote the row of epoch 0: the pruned net before training
        first = _stored_row(run.store, PAI_EPOCHS_TABLE, run.id, "epoch-0000")
        images = {}
        if has_dense_first_layer(run.spec.model):
            mask = run.masks[first_layer_name(run.model)]
            images[MASK_TAG] = mask_grid(mask, run.data.image_shape)
        written.append(write_step(run.store, folder, 0, _epoch_scalars(first, density), images))
    scalars = _epoch_scalars(row, density)
    written.append(write_step(run.store, folder, row["epoch"], scalars))
    return written


def _epoch_scalars(row: dict, density: dict[str, float]) -> dict[str, float | None]:
    return {**{f"{PAI_EPOCHS_TABLE}/{c}": row[c] for c in EPOCH_COLUMNS}, **density}


def _stored_row(store: ExperimentStore, table: str, owner_id: str, part: str) -> dict:
    """The single row of a Parquet part the procedure wrote (``ExperimentStore.write_rows``)."""
    rel = posixpath.join("tables", table, owner_id, f"{part}.parquet")
    rows = pq.read_table(io.BytesIO(store.read_bytes(rel))).to_pylist()
    if len(rows) != 1:
        raise ValueError(f"{store.url(rel)} holds {len(rows)} rows; expected exactly one")
    return rows[0]


def _png(pixels: torch.Tensor) -> Summary.Image:
    if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"an image must be uint8 of shape (height, width, 3), got {pixels.dtype} "
            f"{tuple(pixels.shape)}"
        )
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    height, width = pixels.shape[:2]
    return Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue()
    )
