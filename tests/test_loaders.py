"""Real data formats: tiny files written here in each published layout, read by the loaders.

Each test writes a handful of images in a source's own format and checks the values the loader
returns against preprocessing computed by hand from the same pixels.
"""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import TypeAdapter

from lotterylab.platform.data.clone_builder import RIDGE, build_gaussian_clone
from lotterylab.platform.data.files import DataFileError
from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.data.sample_patches import sample_image_patches
from lotterylab.platform.spec import DataSpec

SPEC = TypeAdapter(DataSpec)


def build(**spec):
    return build_dataset([SPEC.validate_python({"name": "d", **spec})], "d")


def _save(path, record, fmt):
    if fmt == "npz":
        np.savez(f"{path}.npz", **{k: np.asarray(v) for k, v in record.items()})
    else:
        with open(path, "wb") as file:
            pickle.dump(record, file)


def write_imagenet32(root, rng, size=32, batches=2, per_batch=6, val=5, classes=4, fmt="pickle"):
    """Train batches 1..``batches`` and val_data, 1-based labels, as the published files."""
    root.mkdir(parents=True, exist_ok=True)
    width = 3 * size * size
    train, train_y = [], []
    for b in range(1, batches + 1):
        data = rng.integers(0, 256, (per_batch, width), dtype=np.uint8)
        labels = rng.integers(1, classes + 1, per_batch).tolist()
        _save(
            root / f"train_data_batch_{b}",
            {"data": data, "labels": labels, "mean": data.mean(0)},
            fmt,
        )
        train.append(data)
        train_y += labels
    data = rng.integers(0, 256, (val, width), dtype=np.uint8)
    labels = rng.integers(1, classes + 1, val).tolist()
    _save(root / "val_data", {"data": data, "labels": labels}, fmt)
    return np.concatenate(train), np.array(train_y), data, np.array(labels)


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet32_batches_are_read_preprocessed_and_cached(tmp_path, fmt):
    root = tmp_path / "in32"
    train, train_y, val, val_y = write_imagenet32(root, np.random.default_rng(0), fmt=fmt)
    data = build(type="imagenet32", root=str(root))
    mean = train.astype(np.float64).mean(0)
    np.testing.assert_allclose(data.features("train").numpy(), (train - mean) / 255, atol=1e-5)
    np.testing.assert_allclose(
        data.batch("test", torch.tensor([3, 1])).numpy(), (val[[3, 1]] - mean) / 255, atol=1e-5
    )
    assert data.train_y.tolist() == (train_y - 1).tolist()
    assert data.test_y.tolist() == (val_y - 1).tolist()
    assert data.num_classes == max(train_y.max(), val_y.max())
    assert data.image_shape == (3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.batch("train", torch.tensor([0])).dtype == torch.float32

    cache = data.files["train_x"]
    assert cache.startswith(str(root / ".lotterylab-cache"))
    stamp = os.stat(cache).st_mtime_ns
    again = build(type="imagenet32", root=str(root))
    assert again.files == data.files and os.stat(cache).st_mtime_ns == stamp
    assert torch.equal(again.features("train"), data.features("train"))

    blob = pickle.dumps(data)  # travels as its cache paths and preprocessing, not its pixels
    assert len(blob) < data.pixel_mean.numel() * 4 + 4096 and train[:2].tobytes() not in blob
    back = pickle.loads(blob)
    assert torch.equal(back.features("train"), data.features("train"))
    assert torch.equal(back.test_y, data.test_y) and back.num_classes == data.num_classes


def test_imagenet32_limits_take_the_first_images_and_their_mean(tmp_path):
    root = tmp_path / "in32"
    train, _, val, _ = write_imagenet32(root, np.random.default_rng(1), size=8, fmt="npz")
    data = build(type="imagenet32", root=str(root), image_size=8, n_train=8, n_test=3)
    assert data.size("train") == 8 and data.size("test") == 3  # 8 spans both batches
    mean = train[:8].astype(np.float64).mean(0)
    np.testing.assert_allclose(data.features("test").numpy(), (val[:3] - mean) / 255, atol=1e-5)
    with pytest.raises(DataFileError, match=r"'data' must be uint8 \(n, 3072\)"):
        build(type="imagenet32", root=str(root))  # 8x8 files read as 32x32


def test_cache_missing_where_unpickled_names_the_path(tmp_path):
    root = tmp_path / "in32"
    write_imagenet32(root, np.random.default_rng(2))
    blob = pickle.dumps(build(type="imagenet32", root=str(root)))
    shutil.rmtree(root / ".lotterylab-cache")
    with pytest.raises(FileNotFoundError, match=r"\.lotterylab-cache/.*_x\.npy.* is missing"):
        pickle.loads(blob)


def test_restricted_unpickler_refuses_code(tmp_path):
    root = tmp_path / "evil"
    write_imagenet32(root, np.random.default_rng(0))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "train_data_batch_1", "wb") as file:
        pickle.dump({"data": Payload()}, file)
    with pytest.raises(
        DataFileError,
        match=r"train_data_batch_1: refusing to unpickle global "
        r"(posix|os)\.system",
    ):
        build(type="imagenet32", root=str(root))


def test_missing_files_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(DataFileError, match=r"/no not found: expected .*train_data_batch_1"):
        build(type="imagenet32", root=str(tmp_path / "no"))
    root = tmp_path / "gap"
    write_imagenet32(root, np.random.default_rng(0), batches=3)
    os.remove(root / "train_data_batch_2")
    with pytest.raises(DataFileError, match=r"gap/train_data_batch_2 not found: expected Image"):
        build(type="imagenet32", root=str(root))
    root = tmp_path / "noval"
    write_imagenet32(root, np.random.default_rng(0), fmt="npz")
    os.remove(root / "val_data.npz")
    with pytest.raises(DataFileError, match=r"noval/val_data.npz not found"):
        build(type="imagenet32", root=str(root))  # auto: the train batches are npz
    with pytest.raises(DataFileError, match=r"noval/train_data_batch_1 not found"):
        build(type="imagenet32", root=str(root), format="pickle")
    with pytest.raises(DataFileError, match=r"cifar-10-batches-py/data_batch_1 not found"):
        build(type="cifar10", root=str(tmp_path))
    with pytest.raises(DataFileError, match=r"/train not found: expected an ImageFolder tree"):
        build(type="image_folder", root=str(tmp_path))
    with pytest.raises(DataFileError, match=r"wnids.txt not found: .*Tiny-ImageNet-200"):
        build(type="tiny_imagenet", root=str(tmp_path))
    with pytest.raises(DataFileError, match=r"Segmentation/train.txt not found: .*VOC2012"):
        build(type="voc", root=str(tmp_path))


def write_cifar(root, rng, kind):
    if kind == "cifar10":
        folder, names, key = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            b"labels",
        )
    else:
        folder, names, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True)
    parts = []
    for name in names:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        with open(folder / name, "wb") as file:  # Python 2 style: bytes keys
            pickle.dump({b"data": data, key: labels, b"batch_label": b"x"}, file, protocol=2)
        parts.append((data, labels))
    return parts


def _channel_normalised(train, x, size):
    per_channel = train.astype(np.float64).reshape(len(train), 3, -1)
    mean = per_channel.mean(axis=(0, 2))[None, :, None]
    std = per_channel.std(axis=(0, 2))[None, :, None]
    return ((x.astype(np.float64).reshape(len(x), 3, -1) - mean) / std).reshape(len(x), -1)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_python_folders_normalise_per_channel(tmp_path, kind):
    parts = write_cifar(tmp_path, np.random.default_rng(1), kind)
    data = build(type=kind, root=str(tmp_path))
    train = np.concatenate([p[0] for p in parts[:-1]])
    expected = _channel_normalised(train, parts[-1][0], 32)
    np.testing.assert_allclose(data.features("test").numpy(), expected, atol=1e-4)
    assert data.train_y.tolist() == [y for p in parts[:-1] for y in p[1]]
    assert data.test_y.tolist() == parts[-1][1]
    assert data.num_classes == (10 if kind == "cifar10" else 100)
    limited = build(type=kind, root=str(tmp_path), normalize="pixel_mean", n_train=6)
    mean = train[:6].astype(np.float64).mean(0)
    np.testing.assert_allclose(
        limited.features("train").numpy(), (train[:6] - mean) / 255, atol=1e-5
    )


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_resizes_labels_by_sorted_class_and_balances_prefixes(tmp_path):
    rng = np.random.default_rng(3)
    images = {}
    for split, per_class in (("train", 3), ("val", 1)):
        for cls in ("cat", "ant"):  # sorted: ant = 0, cat = 1
            for i in range(per_class):
                pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                _png(tmp_path / split / cls / f"{i}.png", pixels)
                images[split, cls, i] = pixels
    big = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)  # resized to 4x4
    _png(tmp_path / "train" / "cat" / "9.png", big)
    grey = rng.integers(0, 256, (4, 4), dtype=np.uint8)  # converted to RGB
    _png(tmp_path / "val" / "ant" / "grey.png", grey)

    data = build(type="image_folder", root=str(tmp_path), size=4, normalize="pixel_mean")
    # round robin over classes: ant0 cat0 ant1 cat1 ant2 cat2 cat9
    assert data.train_y.tolist() == [0, 1, 0, 1, 0, 1, 1]
    resized = np.asarray(Image.fromarray(big).resize((4, 4), Image.Resampling.BILINEAR))
    order = [("ant", 0), ("cat", 0), ("ant", 1), ("cat", 1), ("ant", 2), ("cat", 2)]
    train = np.stack([images["train", c, i] for c, i in order] + [resized])
    train = train.transpose(0, 3, 1, 2).reshape(7, -1)
    assert np.array_equal(data.train_x.numpy(), train)
    # val/ant: 0.png, grey.png; val/cat: 0.png, round robin: ant0, cat0, ant-grey
    val = np.stack([images["val", "ant", 0], images["val", "cat", 0], np.stack([grey] * 3, -1)])
    val = val.transpose(0, 3, 1, 2).reshape(3, -1)
    assert data.test_y.tolist() == [0, 1, 0] and data.num_classes == 2
    mean = train.astype(np.float64).mean(0)
    np.testing.assert_allclose(data.features("test").numpy(), (val - mean) / 255, atol=1e-5)

    channel = build(type="image_folder", root=str(tmp_path), size=4, n_train=4)
    assert channel.train_y.tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(
        channel.features("test").numpy(), _channel_normalised(train[:4], val, 4), atol=1e-4
    )


def test_tiny_imagenet_reads_the_published_tree(tmp_path):
    rng = np.random.default_rng(4)
    wnids = ["n02", "n01"]  # labels follow the sorted wnids: n01 = 0
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(2):
            path = tmp_path / "train" / w / "images" / f"{w}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, "JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "val" / "images" / f"val_{i}.JPEG", "JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t7\t7")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    data = build(type="tiny_imagenet", root=str(tmp_path), size=8, normalize="pixel_mean")
    assert data.train_y.tolist() == [0, 1, 0, 1] and data.num_classes == 2
    assert data.test_y.tolist() == [0, 1, 1]  # val labels [1, 0, 1] taken round robin
    decoded = np.asarray(Image.open(tmp_path / "val" / "images" / "val_1.JPEG").convert("RGB"))
    assert np.array_equal(data.test_x[0].numpy(), decoded.transpose(2, 0, 1).reshape(-1))


def test_voc_segmentation_resizes_label_maps_by_nearest_neighbour(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    maps = {}
    for name in "abc":
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
            tmp_path / "JPEGImages" / f"{name}.jpg"
        )
        labels = rng.integers(0, 21, (6, 8)).astype(np.uint8)
        labels[0] = 255  # object border: ignored
        label_png = Image.fromarray(labels, mode="P")
        label_png.putpalette(list(rng.integers(0, 256, 768)))
        label_png.save(tmp_path / "SegmentationClass" / f"{name}.png")
        maps[name] = labels
    data = build(type="voc", root=str(tmp_path), size=4)
    assert data.train_y.shape == (2, 4, 4) and data.train_y.dtype == torch.int64
    expected = np.asarray(Image.fromarray(maps["c"], mode="P").resize((4, 4), Image.NEAREST))
    assert np.array_equal(data.test_y[0].numpy(), expected)
    assert data.num_classes == 21 and int(data.train_y.max()) == 255
    photo = Image.open(tmp_path / "JPEGImages" / "a.jpg").convert("RGB")
    resized = np.asarray(photo.resize((4, 4), Image.Resampling.BILINEAR))
    assert np.array_equal(data.train_x[0].numpy(), resized.transpose(2, 0, 1).reshape(-1))
    assert pickle.loads(pickle.dumps(data)).train_y.shape == (2, 4, 4)


def test_gaussian_clone_spec_of_a_real_set(tmp_path):
    write_imagenet32(tmp_path, np.random.default_rng(6), size=4, per_batch=12, classes=2)
    datasets = [
        SPEC.validate_python(
            {"type": "imagenet32", "name": "c", "root": str(tmp_path), "image_size": 4}
        ),
        SPEC.validate_python({"type": "gaussian_clone", "name": "g", "of": "c"}),
    ]
    source, clone = build_dataset(datasets, "c"), build_dataset(datasets, "g")
    assert clone.train_x.dtype == torch.float32 and clone.image_shape == source.image_shape
    assert torch.equal(torch.bincount(clone.train_y), torch.bincount(source.train_y))


def _write_moment_source(root, rng, size, classes, per_class, fmt):
    """Correlated pixels with class-dependent means, so the moments to match are not trivial."""
    width = 3 * size * size
    mixing = rng.normal(0, 20, (width, width)) / np.sqrt(width)
    labels = np.repeat(np.arange(classes), per_class)
    rng.shuffle(labels)
    x = rng.normal(0, 1, (len(labels), width)) @ mixing + 60 + 50 * labels[:, None]
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    root.mkdir()
    for b, idx in enumerate(np.array_split(np.arange(len(x)), 2), start=1):
        record = {"data": x[idx], "labels": (labels[idx] + 1).tolist(), "mean": x.mean(0)}
        _save(root / f"train_data_batch_{b}", record, fmt)
    _save(root / "val_data", {"data": x[:30], "labels": (labels[:30] + 1).tolist()}, fmt)
    return x, labels


def test_gaussian_clone_of_an_imagenet32_folder_matches_class_moments(tmp_path):
    size, classes, per_class = 4, 3, 3000
    x, labels = _write_moment_source(
        tmp_path / "src", np.random.default_rng(2), size, classes, per_class, "pickle"
    )
    summary = build_gaussian_clone(
        str(tmp_path / "src"), str(tmp_path / "gp"), seed=0, progress=False, image_size=size
    )
    assert "9000 train and 30 val images of 3 classes" in summary
    assert sorted(os.listdir(tmp_path / "gp")) == [
        "complete.json",
        "train_data_batch_1",
        "train_data_batch_2",
        "val_data",
    ]
    assert not any(p.name.startswith(".gp") for p in tmp_path.iterdir())  # scratch removed
    clone = build(type="imagenet32", root=str(tmp_path / "gp"), image_size=size)
    assert torch.bincount(clone.train_y).tolist() == [per_class] * classes
    assert torch.equal(
        torch.bincount(clone.test_y, minlength=3),
        torch.bincount(torch.from_numpy(labels[:30]), minlength=3),
    )
    pixels = clone.train_x.numpy().astype(np.float64)
    with open(tmp_path / "gp" / "train_data_batch_1", "rb") as file:
        stored_mean = pickle.load(file)["mean"]
    np.testing.assert_allclose(stored_mean, pixels.mean(0), atol=1e-6)
    for c in range(classes):
        a, b = x[labels == c].astype(np.float64), pixels[clone.train_y.numpy() == c]
        np.testing.assert_allclose(b.mean(0), a.mean(0), atol=3.0)  # pixel std ~20
        # the fit adds 1e-3 I in [0, 1] units: 1e-3 * 255^2 on the 0-255 scale
        ca = np.cov(a.reshape(-1, 3, size * size)[:, 1].T) + RIDGE * 255**2 * np.eye(size**2)
        cb = np.cov(b.reshape(-1, 3, size * size)[:, 1].T)
        assert np.linalg.norm(ca - cb) < 0.15 * np.linalg.norm(ca)  # sampling error ~0.05
    with pytest.raises(DataFileError, match="already holds"):
        build_gaussian_clone(
            str(tmp_path / "src"), str(tmp_path / "gp"), progress=False, image_size=size
        )


def test_gaussian_clone_keeps_npz_and_fits_on_a_prefix(tmp_path):
    _write_moment_source(tmp_path / "src", np.random.default_rng(7), 8, 3, 20, "npz")
    summary = build_gaussian_clone(
        str(tmp_path / "src"), str(tmp_path / "gp"), fit_limit=30, progress=False, image_size=8
    )
    assert "fitted on 30 images, npz format" in summary
    assert (tmp_path / "gp" / "train_data_batch_2.npz").exists()
    clone = build(type="imagenet32", root=str(tmp_path / "gp"), image_size=8)
    assert clone.size("train") == 60 and clone.image_shape == (3, 8, 8)
    with pytest.raises(DataFileError, match="raise fit_limit"):
        build_gaussian_clone(
            str(tmp_path / "src"),
            str(tmp_path / "few"),
            fit_limit=2,
            progress=False,
            image_size=8,
        )


def test_sample_image_patches_are_deterministic_and_in_range():
    a, shape = sample_image_patches(16, 50, seed=3, channels=1)
    b, _ = sample_image_patches(16, 50, seed=3, channels=1)
    c, _ = sample_image_patches(16, 50, seed=4, channels=1)
    assert shape == (1, 16, 16) and a.shape == (50, 256) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 1 and float(a.std()) > 0.01
    rgb, shape = sample_image_patches(8, 5, seed=0, channels=3)
    assert shape == (3, 8, 8) and rgb.shape == (5, 192)
    with pytest.raises(ValueError, match="channels"):
        sample_image_patches(8, 5, seed=0, channels=2)


def test_gaussian_clone_command_writes_a_readable_folder(tmp_path, capsys):
    from lotterylab.cli import main

    write_imagenet32(tmp_path / "src", np.random.default_rng(5), size=8, per_batch=40, val=20)
    code = main(
        ["data", "gaussian-clone", str(tmp_path / "src"), str(tmp_path / "gp"), "--image-size", "8"]
    )
    assert code == 0, capsys.readouterr().err
    spec = TypeAdapter(DataSpec).validate_python(
        {"type": "imagenet32", "name": "gp", "root": str(tmp_path / "gp"), "image_size": 8}
    )
    clone = build_dataset([spec], "gp")
    assert clone.size("train") == 80 and clone.size("test") == 20
    assert main(["data", "gaussian-clone", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
