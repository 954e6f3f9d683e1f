"""Loaders on small files written in the official formats, and their errors (no network)."""

import bz2
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddsec.data import dataset_info, list_datasets, load_dataset
from ddsec.errors import DataNotFoundError, DDSecError, FormatError


# --- writers of the official formats ---------------------------------------------------------


def write_mnist_idx(raw: Path, n_train: int = 12, n_test: int = 5) -> None:
    """Write the four uncompressed MNIST idx files (big-endian headers, uint8 payloads)."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def write_usps_libsvm(path: Path, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Write a USPS file in torchvision's LIBSVM bz2 format; return (values in [-1,1] [n,256], labels 0..9)."""
    rng = np.random.default_rng(1)
    values = np.round(rng.uniform(-1, 1, size=(n, 256)), 6)
    labels = np.arange(n) % 10
    lines = [
        f"{label + 1} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(row)) for row, label in zip(values, labels)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with bz2.open(path, "wt") as fp:
        fp.write("\n".join(lines) + "\n")
    return values, labels


def write_svhn_mat(path: Path, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Write an SVHN .mat in the official layout: X uint8 [32,32,3,N], y [N,1] in 1..10 (10 = digit 0)."""
    import scipy.io

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(os.fspath(path), {"X": x, "y": y})
    return x, y



# --- MNIST -----------------------------------------------------------------------------------


def test_missing_mnist_names_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "DDSEC_DATA" in message and "--download" in message


def test_missing_mnist_via_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DDSEC_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere"):
        load_dataset("mnist", train=False)


def test_mnist_idx_files(tmp_path):
    write_mnist_idx(tmp_path / "MNIST" / "raw", n_train=12, n_test=5)
    train = load_dataset("mnist", root=tmp_path)
    test = load_dataset("mnist", root=tmp_path, train=False, image_size=32, channels=3)
    assert train.images.shape == (12, 1, 28, 28) and train.mean == (0.1307,) and train.std == (0.3081,)
    assert test.images.shape == (5, 3, 32, 32) and test.mean == (0.1307,) * 3
    assert train.labels.tolist() == [i % 10 for i in range(12)]


# --- USPS ------------------------------------------------------------------------------------


def test_usps_libsvm_file(tmp_path):
    values, labels = write_usps_libsvm(tmp_path / "usps" / "usps.t.bz2", n=10)
    ds = load_dataset("usps", root=tmp_path, train=False)
    assert ds.images.shape == (10, 1, 16, 16)
    assert ds.labels.tolist() == labels.tolist()
    pixels = ds.denormalize(ds.images, clamp=False).reshape(10, 256)
    assert torch.allclose(pixels, torch.from_numpy((values + 1) / 2).float(), atol=1e-5)


def test_usps_upsampled_is_framed_like_mnist(tmp_path):
    values, _ = write_usps_libsvm(tmp_path / "usps" / "usps.t.bz2", n=10)
    ds = load_dataset("usps", root=tmp_path, train=False, image_size=28)
    pixels = ds.denormalize(ds.images, clamp=False)
    assert pixels.shape == (10, 1, 28, 28)
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False  # the digit fills a centred 20-px box, as MNIST's digits do
    assert pixels[..., border].abs().max() < 1e-5
    assert pixels[..., 4:24, 4:24].std() > 0.15  # the random pixels, upsampled from 16 to 20 px
    assert ds.mean == (0.1297,) and ds.std == (0.2811,)  # the framed training split's statistics


def test_usps_pooled_resplits_both_files_80_20(tmp_path):
    write_usps_libsvm(tmp_path / "usps" / "usps.bz2", n=15)
    write_usps_libsvm(tmp_path / "usps" / "usps.t.bz2", n=5)
    official = [load_dataset("usps", root=tmp_path, train=split, image_size=28) for split in (True, False)]
    pooled = [load_dataset("usps-pooled", root=tmp_path, train=split, image_size=28) for split in (True, False)]
    assert [len(ds.labels) for ds in pooled] == [16, 4]
    assert all(ds.name == "usps-pooled" and ds.mean == official[0].mean for ds in pooled)
    key = torch.randn(28 * 28)  # the two splits hold exactly the pooled images, each once

    def rows(parts):
        images = torch.cat([ds.images for ds in parts]).flatten(1)
        return torch.sort(images @ key).values

    assert torch.allclose(rows(pooled), rows(official))
    again = load_dataset("usps-pooled", root=tmp_path, train=False, image_size=28)
    assert torch.equal(again.images, pooled[1].images)  # a fixed permutation, not a fresh draw
    assert "usps-pooled" in list_datasets()


def test_usps_sparse_lines_and_bad_files(tmp_path):
    folder = tmp_path / "usps"
    folder.mkdir()
    (folder / "usps.bz2").write_bytes(b"not bz2 at all")
    with pytest.raises(FormatError):
        load_dataset("usps", root=tmp_path)
    (folder / "usps.t.bz2").write_bytes(bz2.compress(b"3 1:1.0 256:-1.0\n10 2:0.0\n"))
    ds = load_dataset("usps", root=tmp_path, train=False)
    pixels = ds.denormalize(ds.images, clamp=False).reshape(2, 256)
    assert ds.labels.tolist() == [2, 9]
    assert pixels[0, 0] == pytest.approx(1.0) and pixels[0, 255] == pytest.approx(0.0)
    assert pixels[0, 1] == pytest.approx(0.5) and pixels[1, 1] == pytest.approx(0.5)


def test_missing_usps(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("usps", root=tmp_path, train=True)
    assert "usps.bz2" in str(info.value) and str(tmp_path / "usps") in str(info.value)


# --- SVHN ------------------------------------------------------------------------------------


def test_svhn_mat_file(tmp_path):
    pytest.importorskip("scipy")
    x, y = write_svhn_mat(tmp_path / "svhn" / "test_32x32.mat", n=7)
    ds = load_dataset("svhn", root=tmp_path, train=False)
    assert ds.images.shape == (7, 3, 32, 32) and ds.num_classes == 10
    assert ds.labels.tolist() == [int(v) % 10 for v in y[:, 0]]  # label 10 is digit 0
    pixels = ds.denormalize(ds.images, clamp=False)
    expected = torch.from_numpy(np.transpose(x, (3, 2, 0, 1)).astype(np.float32) / 255)
    assert torch.allclose(pixels, expected, atol=1e-5)
    grey = load_dataset("svhn", root=tmp_path, train=False, image_size=28, channels=1)
    assert grey.images.shape == (7, 1, 28, 28) and len(grey.mean) == 1


def test_svhn_missing_and_malformed(tmp_path):
    pytest.importorskip("scipy")
    import scipy.io

    with pytest.raises(DataNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", root=tmp_path)
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(str(tmp_path / "svhn" / "train_32x32.mat"), {"X": np.zeros((4, 4))})
    with pytest.raises(FormatError):
        load_dataset("svhn", root=tmp_path)


# --- CIFAR-10 --------------------------------------------------------------------------------


def test_missing_cifar10(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert "cifar-10-batches-py" in str(info.value) and "\n" not in str(info.value)


# --- ImageFolder -----------------------------------------------------------------------------


def _tree(root, splits, classes=("cat", "dog"), per_class=3, size=(20, 12)):
    rng = np.random.default_rng(3)
    for split in splits:
        for cls in classes:
            d = root / split / cls if split else root / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
        # a non-image file is ignored
        (root / split / "notes.txt" if split else root / "notes.txt").write_text("x")


def test_imagefolder_train_test(tmp_path):
    _tree(tmp_path, ["train"], per_class=3)
    _tree(tmp_path, ["test"], classes=("dog",), per_class=2)
    train = load_dataset("imagefolder", root=tmp_path)
    test = load_dataset("imagefolder", root=tmp_path, train=False, image_size=16)
    assert train.images.shape == (6, 3, 32, 32) and train.class_names == ("cat", "dog")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(float(train.images.mean())) < 0.05 and abs(float(train.images.std()) - 1) < 0.05
    assert test.images.shape == (2, 3, 16, 16) and test.labels.tolist() == [1, 1]  # same class mapping
    assert test.num_classes == 2
    assert dataset_info("imagefolder", root=tmp_path) == (3, 32, 2)
    grey = load_dataset("imagefolder", root=tmp_path, channels=1)
    assert grey.image_shape == (1, 32, 32)


def test_imagefolder_whole_tree_for_both_splits(tmp_path):
    _tree(tmp_path, [""], classes=("a", "b", "c"), per_class=2)
    train = load_dataset("imagefolder", root=tmp_path, train=True)
    test = load_dataset("imagefolder", root=tmp_path, train=False)
    assert len(train) == len(test) == 6 and torch.equal(train.images, test.images)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DDSecError, match="root"):
        load_dataset("imagefolder")
    with pytest.raises(DataNotFoundError):
        load_dataset("imagefolder", root=tmp_path / "missing")
    with pytest.raises(DataNotFoundError):
        load_dataset("imagefolder", root=tmp_path)  # exists, no class folders
    _tree(tmp_path / "t", ["train"])
    with pytest.raises(DataNotFoundError, match="test"):
        load_dataset("imagefolder", root=tmp_path / "t", train=False)
    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FormatError, match="broken.png"):
        load_dataset("imagefolder", root=tmp_path / "bad")
