"""ImageNet32 (Chrabaszcz et al. 2017) in its published formats, memory-mapped after one pass.

Pickled ``train_data_batch_1`` … ``train_data_batch_10`` and ``val_data`` (or the same names
with ``.npz``): uint8 ``data`` (n, 3·s²) CHW-flattened, 1-based ``labels``, and the per-pixel
``mean`` in the train batches. Preprocessing as in paper 1's code: (x − per-pixel train mean)
/ 255, the mean taken over the training images used (the files' own ``mean`` covers all of
them). The same loader reads the Gaussian clone ``lotterylab data gaussian-clone`` writes, and
the 16×16 and 64×64 variants (``image_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.files import (
    DataFileError,
    PixelStats,
    cache_folder,
    cached_arrays,
    field,
    file_signature,
    load_npz,
    load_pickle,
    memmapped_dataset,
    stack_batches,
)
from lotterylab.platform.schema import NAME_PATTERN, Strict

TRAIN_BATCHES = [f"train_data_batch_{i}" for i in range(1, 11)]
VAL_BATCH = "val_data"
LAYOUT = (
    "ImageNet32 pickled batches train_data_batch_1..10 and val_data (or the .npz variant, "
    "train_data_batch_N.npz and val_data.npz; image-net.org 'Downsampled ImageNet')"
)


class ImageNet32Data(Strict):
    """ImageNet32 (or its 16/64 variants, or a clone written in its format) from local files."""

    type: Literal["imagenet32"] = Field(description="data source name in the registry")
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(description="data set name")
    root: str = Field(description="folder holding the batches")
    format: Literal["auto", "pickle", "npz"] = Field(
        "auto", description="pickled batches, npz batches, or whichever is present (auto)"
    )
    n_train: Annotated[int, Field(ge=2)] | None = Field(
        None, description="use the first n training images (all if omitted)"
    )
    n_test: Annotated[int, Field(ge=2)] | None = Field(
        None, description="use the first n validation images (all if omitted)"
    )
    cache: str | None = Field(
        None, description="folder of the memory-mapped cache (default <root>/.lotterylab-cache)"
    )
    image_size: Annotated[int, Field(ge=2, le=256)] = Field(
        32, description="image side s (ImageNet16/32/64); rows hold 3·s² pixels"
    )


def batch_files(root: Path, fmt: str) -> tuple[list[Path], Path, str]:
    """The train batch files present (1..k, in order), the val file and the format found."""
    if not root.is_dir():
        raise DataFileError(f"{root} not found: expected a folder of {LAYOUT}")
    if fmt == "auto":
        npz = [root / f"{name}.npz" for name in (TRAIN_BATCHES[0], VAL_BATCH)]
        fmt = "npz" if any(p.exists() for p in npz) else "pickle"
    suffix = ".npz" if fmt == "npz" else ""
    paths = [root / f"{name}{suffix}" for name in TRAIN_BATCHES]
    present = [p.exists() for p in paths]
    count = present.index(False) if False in present else len(paths)
    if count == 0 or any(present[count:]):
        raise DataFileError(f"{paths[count]} not found: expected {LAYOUT} in {root}")
    val = root / f"{VAL_BATCH}{suffix}"
    if not val.exists():
        raise DataFileError(f"{val} not found: expected {LAYOUT} in {root}")
    return paths[:count], val, fmt


def read_batch(path: Path, fmt: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 rows (n, width) and 0-based int64 labels of one batch file."""
    batch = load_npz(path) if fmt == "npz" else load_pickle(path)
    data = field(batch, "data", path)
    labels = field(batch, "labels", path).astype(np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != width:
        raise DataFileError(
            f"{path}: 'data' must be uint8 (n, {width}) for image_size "
            f"{int(np.sqrt(width // 3))}, got {data.dtype} {data.shape}"
        )
    if len(labels) != len(data):
        raise DataFileError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and labels.min() < 1:
        raise DataFileError(f"{path}: labels must be 1-based, found {labels.min()}")
    return data, labels - 1


def imagenet32_arrays(
    root: Path,
    fmt: str,
    image_size: int,
    cache: str | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> tuple[dict[str, np.ndarray], Path, str]:
    """The cached arrays (train/test x and y, pixel statistics), their folder and the format."""
    train_files, val_file, fmt = batch_files(root, fmt)
    width = 3 * image_size**2
    key = {
        "source": "imagenet32",
        "inputs": file_signature([*train_files, val_file], root),
        "width": width,
        "n_train": n_train,
        "n_test": n_test,
    }

    def convert(writer) -> None:
        stats = PixelStats(width)

        def read(path):
            return read_batch(path, fmt, width)

        stack_batches(writer, "train", train_files, read, n_train, stats)
        stack_batches(writer, "test", [val_file], read, n_test)
        for name, array in stats.arrays(channels=3).items():
            writer.put(name, array)

    folder = cache_folder(root, cache, "imagenet32", key)
    return cached_arrays(folder, key, convert), folder, fmt


def build_imagenet32(spec: ImageNet32Data, context=None) -> ImageDataset:
    root = Path(spec.root).expanduser()
    arrays, folder, _ = imagenet32_arrays(
        root, spec.format, spec.image_size, spec.cache, spec.n_train, spec.n_test
    )
    size = spec.image_size
    return memmapped_dataset(spec.name, arrays, folder, (3, size, size), "pixel_mean")
