"""Opt-in downloads against a real HTTP server on 127.0.0.1 serving archives in the real layouts."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading
import time
import zipfile

import numpy as np
import pytest

from lotterylab.cli import main
from lotterylab.platform.data.download import SOURCES, DownloadError, download
from tests.test_loaders import build, write_cifar


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the files of a folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/files"
    httpd.shutdown()
    httpd.server_close()


def _served(folder, name: str, data: bytes) -> str:
    (folder / "files").mkdir(exist_ok=True)
    (folder / "files" / name).write_bytes(data)
    return "md5:" + hashlib.md5(data).hexdigest()


def _tar(tree, gz: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in sorted(tree.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(tree) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sorted(tree.items()):
            archive.writestr(name, data)
    return buffer.getvalue()


def _cifar_archive(tmp_path) -> tuple[bytes, list]:
    source = tmp_path / "cifar-src"
    parts = write_cifar(source, np.random.default_rng(3), "cifar10")
    tree = {
        f"cifar-10-batches-py/{p.name}": p.read_bytes()
        for p in (source / "cifar-10-batches-py").iterdir()
    }
    return _tar(tree, gz=True), parts


def _leftovers(root) -> list[str]:
    parent = root.parent
    return sorted(n for n in os.listdir(parent) if n.startswith("."))


def test_cifar10_from_a_mirror_loads_with_the_platform_loader(tmp_path, server, capsys):
    folder, mirror = server
    data, parts = _cifar_archive(tmp_path)
    checksum = _served(folder, "cifar-10-python.tar.gz", data)
    root = tmp_path / "data" / "cifar"
    start = time.perf_counter()
    assert (
        main(["data", "download", "cifar10", str(root), "--mirror", mirror, "--checksum", checksum])
        == 0
    )
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert f"{len(data)} bytes fetched and verified" in out and f"root: {root}" in out
    print(f"cifar10 test archive: {len(data)} bytes fetched, verified, unpacked in {seconds:.3f} s")
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]  # no temporary left over
    loaded = build(type="cifar10", root=str(root), normalize="pixel_mean")
    assert loaded.test_y.tolist() == parts[-1][1]
    assert loaded.train_y.tolist() == [y for p in parts[:-1] for y in p[1]]
    # a second call finds it in place and fetches nothing
    assert download("cifar10", root, mirror=mirror, checksum=checksum).fetched_bytes == 0


def test_wrong_checksum_and_truncated_archives_leave_nothing(tmp_path, server):
    folder, mirror = server
    data, _ = _cifar_archive(tmp_path)
    good = _served(folder, "cifar-10-python.tar.gz", data)
    root = tmp_path / "data"
    # the published checksum does not match the test archive
    with pytest.raises(
        DownloadError,
        match=r"md5 [0-9a-f]+, not the published " + SOURCES["cifar10"].checksum.split(":")[1],
    ):
        download("cifar10", root, mirror=mirror)
    assert not (root / "cifar-10-batches-py").exists() and os.listdir(root) == []
    # a truncated archive: the served file is cut, the checksum is that of the whole one
    _served(folder, "cifar-10-python.tar.gz", data[: len(data) // 2])
    with pytest.raises(DownloadError, match="not the published"):
        download("cifar10", root, mirror=mirror, checksum=good)
    assert os.listdir(root) == []
    # a truncated archive whose own checksum is given: refused when unpacked
    cut = _served(folder, "cifar-10-python.tar.gz", data[: len(data) // 2])
    with pytest.raises(DownloadError, match="damaged"):
        download("cifar10", root, mirror=mirror, checksum=cut)
    assert os.listdir(root) == []
    # more bytes than the cap
    _served(folder, "cifar-10-python.tar.gz", data)
    with pytest.raises(DownloadError, match="more than the 100 allowed"):
        download("cifar10", root, mirror=mirror, checksum=good, max_bytes=100)
    assert os.listdir(root) == []


def test_members_outside_the_archive_are_refused(tmp_path, server):
    folder, mirror = server
    data = _tar({"cifar-100-python/train": b"x", "../evil": b"y"}, gz=True)
    checksum = _served(folder, "cifar-100-python.tar.gz", data)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"'\.\./evil' points outside"):
        download("cifar100", root, mirror=mirror, checksum=checksum)
    assert not (tmp_path / "evil").exists() and os.listdir(root) == []
    data = _zip({"/abs/wnids.txt": b"n01\n"})
    checksum = _served(folder, "tiny-imagenet-200.zip", data)
    with pytest.raises(DownloadError, match="points outside"):
        download("tiny_imagenet", tmp_path / "tiny", mirror=mirror, checksum=checksum)
    assert not (tmp_path / "tiny").exists() and _leftovers(tmp_path / "tiny") == []


def test_tiny_imagenet_and_voc_land_where_their_loaders_read(tmp_path, server):
    folder, mirror = server
    tiny = {
        "tiny-imagenet-200/wnids.txt": b"n01\n",
        "tiny-imagenet-200/train/n01/images/n01_0.JPEG": b"jpeg",
        "tiny-imagenet-200/val/val_annotations.txt": b"val_0.JPEG\tn01\t0\t0\t7\t7\n",
        "tiny-imagenet-200/val/images/val_0.JPEG": b"jpeg",
    }
    checksum = _served(folder, "tiny-imagenet-200.zip", _zip(tiny))
    done = download("tiny_imagenet", tmp_path / "tiny", mirror=mirror, checksum=checksum)
    assert done.root == tmp_path / "tiny"
    assert (tmp_path / "tiny" / "wnids.txt").read_bytes() == b"n01\n"
    voc = {
        "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"a\n",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"b\n",
        "VOCdevkit/VOC2012/JPEGImages/a.jpg": b"jpeg",
    }
    checksum = _served(folder, "VOCtrainval_11-May-2012.tar", _tar(voc, gz=False))
    download("voc", tmp_path / "voc", mirror=mirror, checksum=checksum)
    assert (tmp_path / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_bytes() == b"b\n"
    assert _leftovers(tmp_path / "voc") == []


def test_imagenet32_says_where_to_get_it(tmp_path, capsys):
    assert main(["data", "download", "imagenet32", str(tmp_path / "i32")]) == 2
    err = capsys.readouterr().err
    assert "login" in err and "image-net.org" in err and "train_data_batch_1" in err
    assert not (tmp_path / "i32").exists()
    assert main(["data", "download", "mnist", str(tmp_path / "m")]) == 2
    assert "allowed" in capsys.readouterr().err
