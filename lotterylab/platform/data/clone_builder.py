"""The Gaussian clone of an ImageNet32-format folder, written in the same format.

Per class and per channel: the mean and covariance of the s² pixels, in units of the pixel
scale divided by 255 (values in [0, 1]), plus 1e-3·I in those units (1e-3·255² ≈ 65 on the
0–255 scale) so every covariance has a Cholesky factor. Classes are fitted one at a time from a
class index (a stable argsort of the labels), so memory holds one class's moments whatever the
number of classes: all 1000 of ImageNet32 at once would be 1000 × 3 × 1024² float64 = 25 GB.

Peak memory for all of ImageNet32 (1.28 M train images in 10 batches of 128 k, 1000 classes
of ≤ 1300 images) does not grow with the number of classes or batches:
- converting the source to its memory-mapped cache holds one batch (394 MB) while it is
  unpickled and copied;
- fitting and sampling one class: its pixels in float64 and centred (2 × 32 MB), covariance
  and Cholesky factor (2 × 25 MB), noise and samples (2 × 32 MB), label index and output
  slots (≈ 40 MB): ≈ 0.25 GB;
- writing: one output batch is pickled, which copies its 394 MB once.
Measured on one ImageNet32-sized batch (128 100 images, 100 classes of 1281): 0.86 GB of
anonymous memory at the peak, 0.28 GB of it the interpreter and its imports (torch), so
≈ 0.9 GB for the full set. Source, samples and output are memory-mapped files (page cache,
which the kernel reclaims, not resident memory); disk holds the source cache (3.9 GB, deleted
before the output is written), the scratch samples and the output (3.9 GB each).
Samples are clipped to [0, 255] and rounded to uint8: the format stores uint8 pixels.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lotterylab.platform.data.files import MARKER, DataFileError
from lotterylab.platform.data.imagenet32 import (
    TRAIN_BATCHES,
    VAL_BATCH,
    batch_files,
    imagenet32_arrays,
)

RIDGE = 1e-3  # added to each covariance, in [0, 1] pixel units
CHANNELS = 3


def class_sampler(x: np.ndarray, generator: np.random.Generator):
    """Mean and Cholesky factors of one class's uint8 rows, per channel; returns a sampler."""
    pixels = x.reshape(len(x), CHANNELS, -1).astype(np.float64).transpose(1, 0, 2) / 255.0
    mean = pixels.mean(axis=1, keepdims=True)  # (C, 1, P)
    centred = pixels - mean
    cov = centred.transpose(0, 2, 1) @ centred / max(len(x) - 1, 1)  # (C, P, P), batched BLAS
    cov += RIDGE * np.eye(cov.shape[-1])
    chol = np.linalg.cholesky(cov)

    def sample(count: int) -> np.ndarray:
        z = generator.standard_normal((CHANNELS, count, mean.shape[-1]))
        images = (z @ chol.transpose(0, 2, 1) + mean).transpose(1, 0, 2).reshape(count, -1)
        return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)

    return sample


def build_gaussian_clone(
    source: str,
    destination: str,
    fit_limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    image_size: int = 32,
    fmt: str = "auto",
) -> str:
    """Fit on ``source`` (its first ``fit_limit`` train images if given) and write the clone.

    Train images keep the source's count per class, val images the source val's; both are
    sampled from the train fit. The output has the source's format and number of train
    batches and appears under ``destination`` only when complete (marker ``complete.json``).
    """
    src, dst = Path(source).expanduser(), Path(destination).expanduser()
    if (dst / MARKER).exists():
        raise DataFileError(f"{dst} already holds a finished clone; remove it to rebuild")
    if dst.exists() and any(dst.iterdir()):
        raise DataFileError(f"{dst} exists and is not empty: choose a new destination")
    train_files, _, fmt = batch_files(src, fmt)
    scratch = dst.with_name(f".{dst.name}.partial")
    arrays, _, _ = imagenet32_arrays(src, fmt, image_size, cache=str(scratch / "source"))
    train_x, train_y, val_y = arrays["train_x"], np.asarray(arrays["train_y"]), arrays["test_y"]
    fit = len(train_y) if fit_limit is None else min(fit_limit, len(train_y))
    classes = int(max(train_y.max(), val_y.max())) + 1
    fit_index = np.argsort(train_y[:fit], kind="stable")
    bounds = np.searchsorted(train_y[:fit][fit_index], np.arange(classes + 1))
    counts = {
        "train": np.bincount(train_y, minlength=classes),
        "val": np.bincount(val_y, minlength=classes),
    }
    missing = np.flatnonzero((bounds[1:] == bounds[:-1]) & (counts["train"] + counts["val"] > 0))
    if len(missing):
        raise DataFileError(
            f"no image of class(es) {(missing + 1).tolist()[:10]} (1-based) among the {fit} "
            "fitted: raise fit_limit"
        )
    generator = np.random.default_rng(seed)
    width = train_x.shape[1]
    out, labels, slots = {}, {}, {}
    for split, n in (("train", len(train_y)), ("val", len(val_y))):
        out[split] = np.lib.format.open_memmap(scratch / f"{split}.npy", "w+", np.uint8, (n, width))
        labels[split] = np.empty(n, np.int64)
        slots[split] = iter(np.split(generator.permutation(n), np.cumsum(counts[split])[:-1]))
    pixel_sum = np.zeros(width)
    for c in tqdm(range(classes), desc="Gaussian clone, class by class", disable=not progress):
        rows = np.sort(fit_index[bounds[c] : bounds[c + 1]])  # sorted: sequential reads
        sample = class_sampler(train_x[rows], generator) if len(rows) else None
        for split in ("train", "val"):
            where = np.sort(next(slots[split]))
            if len(where):
                images = sample(len(where))
                out[split][where] = images
                labels[split][where] = c
                if split == "train":
                    pixel_sum += images.sum(axis=0, dtype=np.float64)
    del arrays, train_x
    shutil.rmtree(scratch / "source")  # frees the source copy before the output is written
    _write(out, labels, pixel_sum / len(train_y), len(train_files), scratch / "out", fmt)
    os.replace(scratch / "out", dst)  # onto nothing or an empty folder: atomic
    shutil.rmtree(scratch)
    return (
        f"{len(train_y)} train and {len(val_y)} val images of {classes} classes, "
        f"fitted on {fit} images, {fmt} format"
    )


def _write(
    out: dict, labels: dict, mean: np.ndarray, batches: int, staging: Path, fmt: str
) -> None:
    """Batches in the source's format (1-based labels, ``mean`` in train batches), marker last."""
    staging.mkdir(exist_ok=True)
    bounds = np.linspace(0, len(labels["train"]), batches + 1).astype(int)
    records = [
        (name, "train", slice(a, b))
        for name, a, b in zip(TRAIN_BATCHES, bounds[:-1], bounds[1:], strict=False)
    ]
    records.append((VAL_BATCH, "val", slice(0, len(labels["val"]))))
    for name, split, rows in records:
        data = np.asarray(out[split][rows])  # a view of the scratch map; pickling copies it once
        record = {"data": data, "labels": (labels[split][rows] + 1).tolist()}
        if split == "train":
            record["mean"] = mean
        if fmt == "npz":
            np.savez(staging / f"{name}.npz", **record)
        else:
            with open(staging / name, "wb") as file:
                pickle.dump(record, file, protocol=4)
    (staging / MARKER).write_text(json.dumps({"clone": True, "train": len(labels["train"])}))
