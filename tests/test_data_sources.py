"""Data specs: the built-in digits, ImageFolder, CIFAR batches, torchvision sets on disk; image modes,
unreadable files and the one-line errors for bad data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from cspnet.data import build_classify_data, collate, load_source, open_image, to_channels
from cspnet.data.images import UnreadableImage


def write_image(path: Path, mode: str = "RGB", size=(12, 10), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8), "L")
    else:
        img = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8), "RGB")
        if mode == "P":
            img = img.quantize(16)
        elif mode == "RGBA":
            img = img.convert("RGBA")
    img.save(path)
    return path


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 4, modes=("RGB",), size=(12, 10)):
    """root/{train,val}/<class>/<i>.png, cycling through ``modes``."""
    k = 0
    for split, n in (("train", per_class), ("val", max(1, per_class // 2))):
        for c in classes:
            for i in range(n):
                write_image(root / split / c / f"{i}.png", modes[k % len(modes)], size, seed=k)
                k += 1
    return root


def test_builtin_digits_split():
    src = load_source("builtin")
    assert (len(src.train), len(src.val)) == (1437, 360)
    assert src.classes == [str(i) for i in range(10)] and src.grey and src.hflip == 0
    counts = np.bincount(src.val.labels.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified 20%
    assert src.train.images.dtype == torch.uint8 and int(src.train.images.max()) == 255
    again = load_source("builtin")  # a fixed split, not seeded by --seed
    assert torch.equal(again.val.images, src.val.images)
    data = build_classify_data("builtin")
    x, y, skipped = data.val[0]
    assert data.in_chans == 1 and x.shape == (1, 32, 32) and skipped == []
    assert y == int(src.val.labels[0])


def test_image_folder_modes_become_model_channels(tmp_path):
    root = make_image_folder(tmp_path / "mixed", modes=("RGB", "L", "P", "RGBA"), size=(5, 7))
    data = build_classify_data(str(root), img_size=16)
    assert data.classes == ["cat", "dog"] and data.in_chans == 3 and data.preprocess["style"] == "small"
    batch = collate([data.train[i] for i in range(len(data.train))])
    assert batch["inputs"].shape == (8, 3, 16, 16) and batch["targets"].tolist() == [0] * 4 + [1] * 4
    grey = make_image_folder(tmp_path / "grey", modes=("L",), size=(80, 90))
    data = build_classify_data(str(grey), img_size=24)
    assert data.in_chans == 1 and data.preprocess["style"] == "photo"  # larger than 64 px: photo crops
    assert data.val[0][0].shape == (1, 24, 24)


def test_to_channels_values():
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert to_channels(rgba, 3).getpixel((0, 0)) == (10, 20, 30)  # alpha dropped, colour kept
    grey16 = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_channels(grey16, 1).getpixel((0, 0)) == 255  # scaled, not clipped from 65535
    pal = Image.new("P", (2, 2))
    pal.putpalette([200, 100, 0] * 256)
    assert to_channels(pal, 3).getpixel((0, 0)) == (200, 100, 0)
    assert to_channels(Image.new("L", (2, 2), 7), 3).getpixel((1, 1)) == (7, 7, 7)


def test_corrupt_images_are_skipped_and_named(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", per_class=4)
    bad = root / "train" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    (root / "val" / "dog" / "0.png").write_bytes(b"not an image")
    data = build_classify_data(str(root), img_size=8)  # a small folder: every file read now (data.scan)
    assert [len(s) for s in data.unreadable.values()] == [1, 1] and "1.png" in data.unreadable["train"][0]
    assert len(data.train) == 7 and len(data.val) == 3 and str(bad) not in [p for p, _ in data.train.source.samples]
    monkeypatch.setattr("cspnet.data.sources.SCAN_LIMIT", 0)  # a large one: found as the loader meets them
    data = build_classify_data(str(root), img_size=8)
    x, y, skipped = data.train[1]  # the truncated one: replaced by the next file, same class here
    assert x.shape == (3, 8, 8) and y == 0 and len(skipped) == 1 and "1.png" in skipped[0]
    batch = collate([data.val[i] for i in range(len(data.val))])
    assert len(batch["skipped"]) == 1 and batch["inputs"].shape[0] == len(data.val) - 1
    with pytest.raises(UnreadableImage, match="not a readable image"):
        open_image(bad)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("empty_class", "empty class folder"),
    ("no_val", "no val/ subfolder"),
    ("other_classes", "different class folders"),
    ("unknown_layout", "neither train/ \\+ val/"),
])
def test_bad_folders_name_the_problem(tmp_path, case, message):
    root = tmp_path / "d"
    if case != "missing":
        make_image_folder(root)
    if case == "empty_class":
        (root / "val" / "bird").mkdir()
        (root / "train" / "bird").mkdir()
        write_image(root / "val" / "bird" / "0.png")
    elif case == "no_val":
        for p in sorted((root / "val").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "val").rmdir()
    elif case == "other_classes":
        (root / "val" / "cat").rename(root / "val" / "cow")
    elif case == "unknown_layout":
        root = tmp_path / "plain"
        root.mkdir()
    with pytest.raises(ValueError, match=message) as err:
        build_classify_data(str(root))
    assert "\n" not in str(err.value)


def _cifar_dir(root: Path, n: int = 6, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"c{i}".encode() for i in range(10)]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f, protocol=protocol)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(n))}, f, protocol=protocol)
    return root


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])  # 2: bytes as _codecs.encode(str, "latin1")
def test_cifar_batches(tmp_path, protocol):
    root = _cifar_dir(tmp_path / "cifar-10-batches-py", protocol=protocol)
    src = load_source(str(root))
    assert (len(src.train), len(src.val)) == (12, 6) and src.classes[:2] == ["c0", "c1"]
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"]
    img, label = src.val[3]
    assert label == 3 and torch.equal(img, torch.from_numpy(raw[3].reshape(3, 32, 32)))
    assert build_classify_data(str(root)).in_chans == 3


def test_cifar_batches_never_run_code(tmp_path):
    root = _cifar_dir(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_source(str(root))


def test_cifar_protocol_2_allows_only_latin1_bytes(tmp_path):
    """Protocol 2 spells bytes as ``_codecs.encode(text, "latin1")``; another codec is no bytes literal."""
    import codecs

    root = _cifar_dir(tmp_path / "c", protocol=2)

    class Inflate:
        def __reduce__(self):
            return (codecs.encode, (b"x" * 64, "zlib_codec"))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Inflate(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR python batch \(refusing to call _codecs.encode "
                                         r"with 'zlib_codec'\)"):
        load_source(str(root))


def test_torchvision_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean FashionMNIST"):
        load_source(f"torchvision:FashionMnist:{tmp_path}")
    with pytest.raises(ValueError, match="never downloads"):
        load_source(f"torchvision:FashionMNIST:{tmp_path}")
    assert list(tmp_path.rglob("*.gz")) == []  # nothing was fetched
    with pytest.raises(ValueError, match="torchvision:NAME:ROOT"):
        load_source("torchvision:FashionMNIST")


def test_torchvision_fashion_mnist_on_disk():
    root = shared_path("data", "classify", "FashionMNIST", "raw").parents[1]
    data = build_classify_data(f"torchvision:FashionMNIST:{root}", img_size=28)
    assert (len(data.train), len(data.val)) == (60000, 10000)
    assert data.classes[0] == "T-shirt/top" and data.in_chans == 1
    x, y, _ = data.val[0]
    assert x.shape == (1, 28, 28) and y == 9  # the first t10k image is an ankle boot


def test_transform_styles():
    from cspnet.data import build_transform, preprocess_spec

    img = Image.fromarray(np.arange(100 * 60, dtype=np.uint32).reshape(60, 100).astype(np.uint8), "L")
    photo = preprocess_spec(32, 1, small=False)
    val = build_transform(photo, train=False)(img)
    assert val.shape == (1, 32, 32)
    whole = build_transform(photo, train=True, hflip=0.0, crop=False)(img)
    assert whole.shape == (1, 32, 32) and not torch.equal(whole, val)  # val resizes to 32 / crop_pct first
    flipped = build_transform(photo, train=True, hflip=1.0, crop=False)(img)
    assert torch.equal(flipped, whole.flip(-1))
    small = preprocess_spec(16, 1, small=True)
    a = build_transform(small, train=True, hflip=0.0, crop=False)(img)
    assert torch.equal(a, build_transform(small, train=False)(img))  # no crop, no flip: the eval image
    torch.manual_seed(0)
    crops = {build_transform(small, train=True, hflip=0.0)(img).sum().item() for _ in range(8)}
    assert len(crops) > 1  # random crops differ
