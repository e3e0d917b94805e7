"""Image trees in the ImageFolder layout (ImageNet's too): ``train/<class>/*``, ``val/<class>/*``.

Images are decoded once (PIL, a thread per core: decoding and resizing release the GIL),
resized to ``size``×``size`` with antialiased bilinear filtering, converted to RGB and cached
as memory-mapped uint8, then normalised as CIFAR is. Classes are the sorted train subfolders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.files import (
    CacheWriter,
    DataFileError,
    Normalize,
    PixelStats,
    cache_folder,
    cached_arrays,
    file_signature,
    memmapped_dataset,
)
from lotterylab.platform.schema import NAME_PATTERN, Strict

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DECODE_CHUNK = 4096  # images in flight at once: bounds the futures and decoded rows held


class ImageTreeData(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(description="data set name")
    root: str = Field(description="root folder of the tree")
    size: Annotated[int, Field(ge=2, le=1024)] = Field(
        32, description="side after resizing (antialiased bilinear), pixels"
    )
    normalize: Normalize = Field(
        "channel",
        description="channel: per-channel train mean and std; pixel_mean: (x - mean image) / 255",
    )
    n_train: Annotated[int, Field(ge=2)] | None = Field(
        None, description="first n train images, taken round-robin over classes (all if omitted)"
    )
    n_test: Annotated[int, Field(ge=2)] | None = Field(
        None, description="first n test images, taken round-robin over classes (all if omitted)"
    )
    cache: str | None = Field(
        None, description="folder of the memory-mapped cache (default <root>/.lotterylab-cache)"
    )


class ImageFolderData(ImageTreeData):
    """``train/<class>/*`` and ``val/<class>/*`` (or ``test/<class>/*``), PNG/JPEG/… images."""

    type: Literal["image_folder"] = Field(description="data source name in the registry")


def load_rgb(path: Path, size: int) -> np.ndarray:
    """One image as a uint8 CHW-flattened row of ``3·size²``."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable image ({exc})") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
    return np.asarray(rgb).transpose(2, 0, 1).reshape(-1)


def decode_into(out: np.ndarray, paths: Sequence[Path], load: Callable[[Path], np.ndarray]) -> None:
    """``out[i] = load(paths[i])`` on a thread pool, a chunk at a time."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = paths[start : start + DECODE_CHUNK]
            out[start : start + len(chunk)] = np.stack(list(pool.map(load, chunk)))


def round_robin(labels: np.ndarray) -> np.ndarray:
    """An order of the items visiting the classes in turn, so any prefix is class-balanced."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], labels[order])
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - starts
    return np.lexsort((labels, rank))


def build_image_tree(
    spec: ImageTreeData,
    root: Path,
    splits: dict[str, tuple[list[Path], np.ndarray]],
    num_classes: int,
) -> ImageDataset:
    """Cache and wrap train/test (paths, 0-based labels) of any labelled image tree."""
    limits = {"train": spec.n_train, "test": spec.n_test}
    chosen = {}
    for split, (paths, labels) in splits.items():
        order = round_robin(labels)[: limits[split]]
        chosen[split] = ([paths[i] for i in order], labels[order])
    everything = sorted({p for paths, _ in splits.values() for p in paths})
    key = {
        "source": spec.type,
        "inputs": file_signature(everything, root),
        "size": spec.size,
        "n": [spec.n_train, spec.n_test],
    }

    def convert(writer: CacheWriter) -> None:
        width = 3 * spec.size**2
        for split, (paths, labels) in chosen.items():
            x = writer.new(f"{split}_x", (len(paths), width), np.uint8)
            decode_into(x, paths, lambda p: load_rgb(p, spec.size))
            writer.put(f"{split}_y", labels)
        stats = PixelStats(width)
        stats.add(writer.arrays["train_x"])
        for name, array in stats.arrays(channels=3).items():
            writer.put(name, array)

    folder = cache_folder(root, spec.cache, spec.type, key)
    arrays = cached_arrays(folder, key, convert)
    shape = (3, spec.size, spec.size)
    return memmapped_dataset(spec.name, arrays, folder, shape, spec.normalize, num_classes)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def build_image_folder(spec: ImageFolderData, context=None) -> ImageDataset:
    root = Path(spec.root).expanduser()
    layout = f"an ImageFolder tree {root}/train/<class>/*.png|jpg, {root}/val/<class>/* (or test/)"
    if not (root / "train").is_dir():
        raise DataFileError(f"{root / 'train'} not found: expected {layout}")
    test = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if test is None:
        raise DataFileError(f"{root / 'val'} not found: expected {layout}")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataFileError(f"{root / 'train'} has no class subfolders: expected {layout}")
    unknown = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataFileError(f"{test}: classes {unknown[:5]} have no train folder in {root}/train")
    splits = {}
    for split, folder in (("train", root / "train"), ("test", test)):
        per_class = [list_images(folder / c) for c in classes]
        paths = [p for images in per_class for p in images]
        if not paths:
            raise DataFileError(f"{folder}: no images ({', '.join(sorted(SUFFIXES))})")
        labels = np.repeat(np.arange(len(classes)), [len(images) for images in per_class])
        splits[split] = (paths, labels)
    return build_image_tree(spec, root, splits, len(classes))
