"""Tiny-ImageNet-200 as published (tiny-imagenet-200.zip unpacked), cached like an image folder.

``wnids.txt`` lists the 200 classes; ``train/<wnid>/images/*.JPEG``; the validation images
are all in ``val/images/`` with their class in ``val/val_annotations.txt`` (tab-separated
file name, wnid, box). Labels index the sorted wnids, as an ImageFolder over ``train/`` would.
The official test split has no labels, so ``val`` is the test split here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.files import DataFileError, require
from lotterylab.platform.data.image_folder import ImageTreeData, build_image_tree, list_images

LAYOUT = (
    " (Tiny-ImageNet-200 as published: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG "
    "and val/val_annotations.txt)"
)


class TinyImageNetData(ImageTreeData):
    """Tiny-ImageNet-200 from its published folder; 64×64 natively."""

    type: Literal["tiny_imagenet"] = Field(description="data source name in the registry")
    size: Annotated[int, Field(ge=2, le=1024)] = Field(
        64, description="side after resizing (antialiased bilinear; 64 keeps the originals)"
    )


def build_tiny_imagenet(spec: TinyImageNetData, context=None) -> ImageDataset:
    root = Path(spec.root).expanduser()
    wnids = sorted(require(root / "wnids.txt", "the class list", LAYOUT).read_text().split())
    index = {w: k for k, w in enumerate(wnids)}
    folders = [require(root / "train" / w / "images", "a class folder", LAYOUT) for w in wnids]
    per_class = [list_images(folder) for folder in folders]
    train = (
        [p for images in per_class for p in images],
        np.repeat(np.arange(len(wnids)), [len(images) for images in per_class]),
    )
    annotations = require(root / "val" / "val_annotations.txt", "the val labels", LAYOUT)
    rows = [line.split("\t") for line in annotations.read_text().splitlines() if line.strip()]
    bad = [r for r in rows if len(r) < 2 or r[1] not in index]
    if bad:
        raise DataFileError(
            f"{annotations}: every line must be '<file>\\t<wnid>\\t…' with a wnid of wnids.txt; "
            f"got {bad[0]!r}"
        )
    test = (
        [require(root / "val" / "images" / r[0], "a val image", LAYOUT) for r in rows],
        np.array([index[r[1]] for r in rows], dtype=np.int64),
    )
    return build_image_tree(spec, root, {"train": train, "test": test}, len(wnids))
