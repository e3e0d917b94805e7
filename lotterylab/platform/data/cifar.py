"""CIFAR-10 and CIFAR-100 from their python-version folders (the layout torchvision unpacks).

``cifar-10-batches-py/`` (data_batch_1..5, test_batch) or ``cifar-100-python/`` (train,
test): pickled dicts with uint8 ``data`` (n, 3072) CHW-flattened and ``labels`` /
``fine_labels``. Normalised per channel (the usual pruning-at-initialisation recipe) or per
pixel as paper 1's code does for ImageNet32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.files import (
    DataFileError,
    Normalize,
    PixelStats,
    cache_folder,
    cached_arrays,
    field,
    file_signature,
    load_pickle,
    memmapped_dataset,
    require,
    stack_batches,
)
from lotterylab.platform.schema import NAME_PATTERN, Strict

# type -> (folder, train files, test file, label key, classes)
LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels", 100),
}
WIDTH = 3 * 32 * 32


class _CIFARData(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(description="data set name")
    root: str = Field(description="folder containing the python-version folder")
    normalize: Normalize = Field(
        "channel",
        description="channel: per-channel train mean and std; pixel_mean: (x - mean image) / 255",
    )
    n_train: Annotated[int, Field(ge=2)] | None = Field(None, description="first n train images")
    n_test: Annotated[int, Field(ge=2)] | None = Field(None, description="first n test images")
    cache: str | None = Field(
        None, description="folder of the memory-mapped cache (default <root>/.lotterylab-cache)"
    )


class CIFAR10Data(_CIFARData):
    """CIFAR-10, python version (cifar-10-python.tar.gz unpacked)."""

    type: Literal["cifar10"] = Field(description="data source name in the registry")


class CIFAR100Data(_CIFARData):
    """CIFAR-100 with its 100 fine labels, python version (cifar-100-python.tar.gz unpacked)."""

    type: Literal["cifar100"] = Field(description="data source name in the registry")


def _reader(label_key: str):
    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        batch = load_pickle(path, encoding="bytes")  # Python 2 pickles: bytes keys and strings
        data = field(batch, "data", path)
        labels = field(batch, label_key, path).astype(np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.shape[1:] != (WIDTH,) or len(labels) != len(data):
            raise DataFileError(
                f"{path}: expected uint8 data (n, {WIDTH}) and n labels, got {data.dtype} "
                f"{data.shape} and {len(labels)} labels"
            )
        return data, labels

    return read


def build_cifar(spec: _CIFARData, context=None) -> ImageDataset:
    folder_name, train_names, test_name, label_key, classes = LAYOUTS[spec.type]
    root = Path(spec.root).expanduser()
    names = [*train_names, test_name]
    hint = (
        f" (the python version of {spec.type.upper()}, unpacked as {folder_name}/ in {root}: "
        f"{', '.join(names)})"
    )
    paths = [require(root / folder_name / n, "a pickled batch", hint) for n in names]
    key = {
        "source": spec.type,
        "inputs": file_signature(paths, root),
        "n": [spec.n_train, spec.n_test],
    }
    read = _reader(label_key)

    def convert(writer) -> None:
        stats = PixelStats(WIDTH)
        stack_batches(writer, "train", paths[:-1], read, spec.n_train, stats)
        stack_batches(writer, "test", paths[-1:], read, spec.n_test)
        for name, array in stats.arrays(channels=3).items():
            writer.put(name, array)

    folder = cache_folder(root, spec.cache, spec.type, key)
    arrays = cached_arrays(folder, key, convert)
    return memmapped_dataset(spec.name, arrays, folder, (3, 32, 32), spec.normalize, classes)
