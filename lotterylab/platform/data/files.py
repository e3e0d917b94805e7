"""Reading published data-set files safely, and the memory-mapped uint8 cache real sets live in.

Pickled batches (ImageNet32, CIFAR) go through an unpickler that builds only dicts, lists,
numbers, strings and numpy arrays, so a crafted file cannot run code. Converted pixels are
written once to ``.npy`` files (temporary names, renamed when whole) beside a ``complete.json``
marker written last: a cache without the marker is half-written and is rebuilt, never read.
Every later build memory-maps the same files, and a data set pickles as their paths.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lotterylab.platform.data.dataset import ImageDataset

# What numpy arrays need to unpickle, as the objects themselves (numpy 1 and 2 module names).
# ``scalar`` rebuilds numpy integers in label lists; ``_codecs.encode`` is how protocol-2
# pickles written by Python 3 spell a bytes object.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_SCALAR = np.int64(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): codecs.encode,
}
MARKER = "complete.json"
Normalize = Literal["channel", "pixel_mean"]
_STATS_CHUNK = 1024  # rows per float64 block when summing pixels (1024 x 3072 x 8 B = 25 MB)


class DataFileError(ValueError):
    """A data file is missing or not in the format its loader expects."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, encoding: str):
        super().__init__(file, encoding=encoding)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataFileError(
                f"{self.path}: refusing to unpickle global {module}.{name}; data batches may "
                "hold only dicts, lists, numbers, strings and numpy arrays"
            )
        return _ALLOWED_GLOBALS[module, name]


def load_pickle(path: Path, encoding: str = "latin1") -> dict:
    """A pickled dict of arrays, through the restricted unpickler; bytes keys become str."""
    require(path, "a pickled batch")
    with open(path, "rb") as file:
        try:
            data = _RestrictedUnpickler(file, path, encoding).load()
        except DataFileError:
            raise
        except Exception as exc:
            raise DataFileError(f"{path}: not a readable pickled batch ({exc})") from None
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def load_npz(path: Path) -> dict:
    require(path, "an npz batch")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataFileError(f"{path}: not a readable npz batch ({exc})") from None


def require(path: Path, what: str, hint: str = "") -> Path:
    if not path.exists():
        raise DataFileError(f"{path} not found: expected {what}{hint}")
    return path


def field(batch: dict, key: str, path: Path) -> np.ndarray:
    if key not in batch:
        raise DataFileError(f"{path}: no {key!r} entry (has {sorted(batch)})")
    return np.asarray(batch[key])


def file_signature(paths: Sequence[Path], root: Path) -> dict:
    """Count, bytes and a sha256 of the names (relative to ``root``), sizes and mtimes of the
    inputs: a changed input rebuilds the cache, a moved root does not."""
    digest = hashlib.sha256()
    total = 0
    for path in paths:
        stat = path.stat()
        total += stat.st_size
        name = path.relative_to(root).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{int(stat.st_mtime)}\n".encode())
    return {"files": len(paths), "bytes": total, "sha256": digest.hexdigest()}


class CacheWriter:
    """The arrays of one cache build, written to temporary names until the build completes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # concurrent builders never collide
        self.arrays: dict[str, np.memmap] = {}

    def new(self, name: str, shape: tuple[int, ...], dtype) -> np.memmap:
        out = np.lib.format.open_memmap(self._tmp(name), mode="w+", dtype=dtype, shape=shape)
        self.arrays[name] = out
        return out

    def put(self, name: str, array: np.ndarray) -> None:
        self.new(name, array.shape, array.dtype)[...] = array

    def commit(self, key: dict) -> None:
        layout = {}
        for name, array in self.arrays.items():
            array.flush()
            layout[name] = [list(array.shape), array.dtype.str]
            os.replace(self._tmp(name), self.folder / f"{name}.npy")
        self.arrays.clear()
        tmp = self.folder / f".{MARKER}.{self.tag}"
        tmp.write_text(json.dumps({"key": key, "arrays": layout}, indent=1))
        os.replace(tmp, self.folder / MARKER)

    def _tmp(self, name: str) -> Path:
        return self.folder / f".{name}.npy.{self.tag}"


def cache_folder(root: Path, cache: str | None, source: str, key: dict) -> Path:
    """``<cache or root/.lotterylab-cache>/<source>-<hash of key>``: one folder per content."""
    base = Path(cache).expanduser() if cache else root / ".lotterylab-cache"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return base / f"{source}-{digest}"


def cached_arrays(
    folder: Path, key: dict, build: Callable[[CacheWriter], None]
) -> dict[str, np.ndarray]:
    """The arrays ``build`` writes, memory-mapped from ``folder``; built once per ``key``."""
    marker = folder / MARKER
    if not marker.exists() or json.loads(marker.read_text()).get("key") != key:
        folder.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        writer = CacheWriter(folder)
        build(writer)
        writer.commit(key)
    names = json.loads(marker.read_text())["arrays"]
    return {name: np.load(folder / f"{name}.npy", mmap_mode="c") for name in names}


class PixelStats:
    """Float64 per-pixel sums and sums of squares of uint8 rows, for the normalisations."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.sum = np.zeros(width)
        self.sum_sq = np.zeros(width)

    def add(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), _STATS_CHUNK):
            block = rows[start : start + _STATS_CHUNK].astype(np.float64)
            self.sum += block.sum(axis=0)
            self.sum_sq += np.einsum("ij,ij->j", block, block)
        self.count += len(rows)

    def arrays(self, channels: int) -> dict[str, np.ndarray]:
        """Per-pixel mean (D,), per-channel mean and std (C,) over all pixels of a channel."""
        mean = self.sum / self.count
        channel_mean = mean.reshape(channels, -1).mean(axis=1)
        channel_sq = (self.sum_sq / self.count).reshape(channels, -1).mean(axis=1)
        channel_std = np.sqrt(np.maximum(channel_sq - channel_mean**2, 0.0))
        return {
            "pixel_mean": mean.astype(np.float32),
            "channel_mean": channel_mean.astype(np.float32),
            "channel_std": np.maximum(channel_std, 1e-6).astype(np.float32),
        }


def stack_batches(
    writer: CacheWriter,
    split: str,
    paths: Sequence[Path],
    read: Callable[[Path], tuple[np.ndarray, np.ndarray]],
    limit: int | None,
    stats: PixelStats | None = None,
) -> None:
    """The first ``limit`` rows of several batch files as ``<split>_x`` and ``<split>_y``.

    Two passes, sizes then copies, so memory holds one batch file (ImageNet32: 390 MB), not
    the set: a pickled batch cannot be sized without reading it, and this runs once per cache.
    """
    sizes, width, held = [], 0, None
    for path in paths:
        held = None  # let the previous batch go before the next one is read
        held = read(path)
        sizes.append(len(held[1]))
        width = held[0].shape[1]
        if limit is not None and sum(sizes) >= limit:
            break
    total = sum(sizes) if limit is None else min(limit, sum(sizes))
    x = writer.new(f"{split}_x", (total, width), np.uint8)
    y = writer.new(f"{split}_y", (total,), np.int64)
    held = held if len(sizes) == 1 else None  # one file: no need to read it twice
    start = 0
    for path in paths[: len(sizes)]:
        data, labels = held or read(path)
        n = min(len(labels), total - start)
        x[start : start + n] = data[:n]
        y[start : start + n] = labels[:n]
        if stats is not None:
            stats.add(data[:n])
        start += n
        held = data = labels = None


def memmapped_dataset(
    name: str,
    arrays: dict[str, np.ndarray],
    folder: Path,
    image_shape: tuple[int, int, int],
    normalize: Normalize,
    num_classes: int | None = None,
) -> ImageDataset:
    """An ImageDataset over a cache: uint8 pixels and labels stay memory-mapped.

    ``pixel_mean``: (x − per-pixel train mean) / 255, as paper 1's code; ``channel``:
    (x − channel mean) / channel std, the usual pruning-at-initialisation recipe.
    """
    tensors = {k: torch.from_numpy(arrays[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
    if normalize == "pixel_mean":
        mean = torch.from_numpy(np.array(arrays["pixel_mean"]))
        scale = torch.tensor(255.0)
    else:
        pixels = image_shape[1] * image_shape[2]
        mean = torch.from_numpy(np.repeat(arrays["channel_mean"], pixels))
        scale = torch.from_numpy(np.repeat(arrays["channel_std"], pixels))
    if num_classes is None:
        labels = [tensors["train_y"], tensors["test_y"]]
        num_classes = max(int(t.max()) for t in labels if t.numel()) + 1
    return ImageDataset(
        name=name,
        **tensors,
        image_shape=image_shape,
        num_classes=num_classes,
        pixel_mean=mean,
        pixel_scale=scale,
        files={k: str(folder / f"{k}.npy") for k in tensors},
    )
