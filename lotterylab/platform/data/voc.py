"""Pascal VOC 2012 semantic segmentation (VOCdevkit/VOC2012 as published), resized and cached.

Images are resized with antialiased bilinear filtering and label maps by nearest neighbour to
``size``×``size`` (the aspect ratio is not kept: every batch has one shape). The label PNGs are
palette images whose indices are the classes: 21 (background included), 255 on object
borders, which losses ignore. The ``train`` list is the train split, ``val`` the test split.
"""

from __future__ import annotations

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
    require,
)
from lotterylab.platform.data.image_folder import decode_into, load_rgb
from lotterylab.platform.schema import NAME_PATTERN, Strict

CLASSES = 21
LAYOUT = (
    " (VOCdevkit/VOC2012 as published: JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
    "ImageSets/Segmentation/train.txt, val.txt)"
)


class VOCData(Strict):
    """Pascal VOC 2012 segmentation: per-pixel labels of 21 classes, 255 = ignore."""

    type: Literal["voc"] = Field(description="data source name in the registry")
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(description="data set name")
    root: str = Field(description="the VOC2012 folder of VOCdevkit")
    size: Annotated[int, Field(ge=2, le=1024)] = Field(
        64, description="side of images and label maps after resizing, pixels"
    )
    normalize: Normalize = Field(
        "channel",
        description="channel: per-channel train mean and std; pixel_mean: (x - mean image) / 255",
    )
    n_train: Annotated[int, Field(ge=2)] | None = Field(
        None, description="first n images of train.txt (all if omitted)"
    )
    n_test: Annotated[int, Field(ge=2)] | None = Field(
        None, description="first n images of val.txt (all if omitted)"
    )
    cache: str | None = Field(
        None, description="folder of the memory-mapped cache (default <root>/.lotterylab-cache)"
    )


def load_label_map(path: Path, size: int) -> np.ndarray:
    """Class indices of a palette PNG, nearest-resized (interpolating class ids is meaningless)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataFileError(f"{path}: expected a palette label PNG, got mode {image.mode}")
            labels = image.resize((size, size), Image.Resampling.NEAREST)
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable label map ({exc})") from None
    return np.asarray(labels, dtype=np.int64)


def build_voc(spec: VOCData, context=None) -> ImageDataset:
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise DataFileError(f"{root} not found: expected{LAYOUT}")
    ids = {}
    for split, listing, limit in (("train", "train", spec.n_train), ("test", "val", spec.n_test)):
        path = require(root / "ImageSets" / "Segmentation" / f"{listing}.txt", "a list", LAYOUT)
        ids[split] = path.read_text().split()[:limit]
    images = {s: [root / "JPEGImages" / f"{i}.jpg" for i in v] for s, v in ids.items()}
    labels = {s: [root / "SegmentationClass" / f"{i}.png" for i in v] for s, v in ids.items()}
    inputs = [
        require(p, "an image or label map", LAYOUT)
        for group in (images, labels)
        for paths in group.values()
        for p in paths
    ]
    key = {"source": "voc", "inputs": file_signature(inputs, root), "size": spec.size}

    def convert(writer: CacheWriter) -> None:
        size = spec.size
        for split in ("train", "test"):
            x = writer.new(f"{split}_x", (len(ids[split]), 3 * size**2), np.uint8)
            decode_into(x, images[split], lambda p: load_rgb(p, size))
            y = writer.new(f"{split}_y", (len(ids[split]), size, size), np.int64)
            decode_into(y, labels[split], lambda p: load_label_map(p, size))
        stats = PixelStats(3 * size**2)
        stats.add(writer.arrays["train_x"])
        for name, array in stats.arrays(channels=3).items():
            writer.put(name, array)

    folder = cache_folder(root, spec.cache, "voc", key)
    arrays = cached_arrays(folder, key, convert)
    shape = (3, spec.size, spec.size)
    return memmapped_dataset(spec.name, arrays, folder, shape, spec.normalize, CLASSES)
