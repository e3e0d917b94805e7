"""Opt-in downloads of the published archives, into exactly the layout the loaders read.

Only ``lotterylab data download`` calls this; nothing downloads at run time. Each archive is
streamed under a size cap into a temporary folder beside its destination, checked against its
published checksum, unpacked there (members with absolute paths, ``..``, links or devices are
refused) and renamed into place in one step, so a killed or failed download leaves only a
dot-named temporary folder, never something that reads as complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20
UNPACK_FACTOR = 8  # an archive may unpack to at most this many times its size cap


class DownloadError(ValueError):
    """A download that cannot be done as asked; nothing was left at the destination."""


@dataclass(frozen=True)
class Source:
    """One published archive: where it is, its checksum, and what of it the loader reads."""

    url: str
    checksum: str  # "<algorithm>:<hex digest>", as published
    max_bytes: int  # the published size plus a margin: a longer stream is refused
    member: str  # the archive's folder the loader reads
    target: str  # where that folder goes, relative to ROOT ("" = ROOT itself)
    required: tuple[str, ...]  # files the loader opens, relative to the target

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# checksums as published by the data sets' authors (and listed by torchvision's loaders)
SOURCES = {
    "cifar10": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        checksum="md5:c58f30108f718f92721af3b95e74349a",
        max_bytes=171_000_000,
        member="cifar-10-batches-py",
        target="cifar-10-batches-py",
        required=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    ),
    "cifar100": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        checksum="md5:eb9058c3a382ffc7106e4002c42a8d85",
        max_bytes=170_000_000,
        member="cifar-100-python",
        target="cifar-100-python",
        required=("train", "test"),
    ),
    "tiny_imagenet": Source(
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        checksum="md5:90528d7ca1a48142e341f4ef8d21d0de",
        max_bytes=249_000_000,
        member="tiny-imagenet-200",
        target="",
        required=("wnids.txt", "val/val_annotations.txt"),
    ),
    "voc": Source(
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        checksum="md5:6cd6e144f989b92b3379bac3b3de84fd",
        max_bytes=2_000_000_000,
        member="VOCdevkit/VOC2012",
        target="",
        required=("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"),
    ),
}

MANUAL = {
    "imagenet32": (
        "ImageNet32 needs a login at its source: sign in at https://image-net.org/download-images"
        ".php, download 'Downsampled image data (32x32)' (Imagenet32_train.zip and "
        "Imagenet32_val.zip, or the npz variant), unpack both so that {root} holds "
        "train_data_batch_1 ... train_data_batch_10 and val_data, then use `type: imagenet32` "
        "with `root: {root}`"
    ),
}

NAMES = (*SOURCES, *MANUAL)


@dataclass(frozen=True)
class Downloaded:
    name: str
    root: Path  # the spec's ``root``
    fetched_bytes: int  # 0 when the data set was already in place


def download(
    name: str,
    root: str | os.PathLike,
    mirror: str | None = None,
    checksum: str | None = None,
    max_bytes: int | None = None,
) -> Downloaded:
    """Fetch, verify and unpack data set ``name`` under ``root``.

    ``mirror`` replaces the archive's folder URL (the file name stays); ``checksum``
    (``md5:…`` or ``sha256:…``) replaces the published one, for a mirror that serves its own
    build of the archive (and for tests); ``max_bytes`` replaces the size cap.
    """
    root = Path(root).expanduser().absolute()
    if name in MANUAL:
        raise DownloadError(f"data download {name}: " + MANUAL[name].format(root=root))
    if name not in SOURCES:
        raise DownloadError(f"data download: unknown data set {name!r}; allowed: {list(NAMES)}")
    source = SOURCES[name]
    algorithm, expected = _parse_checksum(checksum or source.checksum)
    final = root / source.target if source.target else root
    if all((final / f).is_file() for f in source.required):
        return Downloaded(name, root, 0)  # already in place
    if final.exists() and (final.is_file() or any(final.iterdir())):
        raise DownloadError(
            f"data download {name}: {final} exists but does not hold {source.required[0]}; "
            "remove it or pick another ROOT"
        )
    url = (mirror.rstrip("/") + "/" + source.filename) if mirror else source.url
    cap = max_bytes or source.max_bytes
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.download-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        archive = work / source.filename
        size = _fetch(url, archive, cap)
        digest = _digest(archive, algorithm)
        if digest != expected:
            raise DownloadError(
                f"data download {name}: {url} has {algorithm} {digest}, not the published "
                f"{expected}: the file is corrupt, truncated or not the published archive; "
                "nothing was kept"
            )
        unpacked = work / "unpacked"
        _unpack(archive, unpacked, cap * UNPACK_FACTOR)
        archive.unlink()
        folder = unpacked / source.member
        missing = [f for f in source.required if not (folder / f).is_file()]
        if missing:
            raise DownloadError(
                f"data download {name}: {url} does not hold {source.member}/{missing[0]}; "
                "nothing was kept"
            )
        if final.exists():
            final.rmdir()  # an empty folder given as ROOT
        os.rename(folder, final)  # one step: the layout appears whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Downloaded(name, root, size)


def _parse_checksum(text: str) -> tuple[str, str]:
    algorithm, _, digest = text.partition(":")
    if (
        algorithm not in ("md5", "sha256")
        or not digest
        or any(c not in "0123456789abcdef" for c in digest.lower())
    ):
        raise DownloadError(f"checksum {text!r}: expected md5:<hex> or sha256:<hex>")
    return algorithm, digest.lower()


def _fetch(url: str, path: Path, cap: int) -> int:
    """Stream ``url`` to ``path``; refuse more than ``cap`` bytes or fewer than announced."""
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except OSError as error:
        raise DownloadError(f"data download: cannot fetch {url}: {error}") from error
    with response:
        announced = response.headers.get("Content-Length")
        if announced is not None and int(announced) > cap:
            raise DownloadError(
                f"data download: {url} announces {announced} bytes, more than the {cap} allowed"
            )
        size = 0
        with open(path, "wb") as handle:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > cap:
                    raise DownloadError(f"data download: {url} sends more than {cap} bytes")
                handle.write(chunk)
    if announced is not None and size != int(announced):
        raise DownloadError(
            f"data download: {url} ended after {size} of {announced} bytes (truncated); "
            "nothing was kept"
        )
    return size


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")):
        raise DownloadError(f"{archive.name}: member {name!r} points outside the archive")


def _unpack(archive: Path, destination: Path, limit: int) -> None:
    destination.mkdir()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = handle.infolist()
            for info in members:
                _safe_member(info.filename, archive)
            if sum(i.file_size for i in members) > limit:
                raise DownloadError(f"{archive.name} unpacks to more than {limit} bytes")
            handle.extractall(destination)
        return
    try:
        handle = tarfile.open(archive)
    except tarfile.TarError as error:
        raise DownloadError(
            f"{archive.name} is neither a zip nor a tar archive: {error}"
        ) from error
    with handle:
        try:
            members = handle.getmembers()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DownloadError(f"{archive.name} is damaged: {error}") from error
        for member in members:
            _safe_member(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise DownloadError(f"{archive.name}: member {member.name!r} is not a plain file")
        if sum(m.size for m in members) > limit:
            raise DownloadError(f"{archive.name} unpacks to more than {limit} bytes")
        try:
            handle.extractall(destination, filter="data")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DownloadError(f"{archive.name} is damaged: {error}") from error
