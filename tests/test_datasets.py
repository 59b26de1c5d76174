"""Data set loaders: shapes, ranges, fixed splits, and every error path of the
IDX reader on small files written to tmp_path."""

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from intsim.datasets import (
    DATASETS,
    FASHION_MNIST_ROOT,
    SPLITS,
    load_dataset,
    load_digits,
    load_fashion_mnist,
)
from intsim.errors import ModelFormatError, ValidationError
from intsim.models import model_path

needs_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_ROOT), reason=f"{FASHION_MNIST_ROOT} absent (apt install dataset-fashion-mnist)"
)


def _check_images(images, labels, n, side):
    assert images.dtype == np.float32 and images.shape == (n, 1, side, side)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.min() == 0 and labels.max() == 9


@pytest.mark.parametrize(
    "split, n, counts",
    [
        ("train", 1347, [135, 136, 134, 136, 133, 137, 134, 134, 133, 135]),
        ("test", 450, [43, 46, 43, 47, 48, 45, 47, 45, 41, 45]),
    ],
)
def test_digits_split(split, n, counts):
    images, labels = load_digits(split)
    _check_images(images, labels, n, 8)
    np.testing.assert_array_equal(np.bincount(labels), counts)
    np.testing.assert_array_equal(images * 16, np.round(images * 16))  # 0..16 codes / 16, exactly


def test_digits_split_is_first_1347_then_last_450():
    with np.load(model_path("data/digits.npz")) as data:
        codes, labels = data["images"], data["labels"]
    assert codes.dtype == np.uint8 and codes.shape == (1797, 8, 8) and codes.max() == 16
    train_x, train_y = load_digits("train")
    test_x, test_y = load_digits("test")
    np.testing.assert_array_equal(np.concatenate([train_x, test_x])[:, 0] * 16, codes)
    np.testing.assert_array_equal(np.concatenate([train_y, test_y]), labels)


@pytest.mark.parametrize("split", SPLITS)
def test_load_dataset_dispatches(split):
    direct = load_digits(split)
    for got, want in zip(load_dataset("digits", split), direct):
        np.testing.assert_array_equal(got, want, strict=True)


def test_dataset_names():
    assert DATASETS == ("digits", "fashion")


def test_unknown_dataset():
    with pytest.raises(ValidationError, match=r"unknown dataset 'mnist'; known: digits, fashion"):
        load_dataset("mnist", "test")


@pytest.mark.parametrize("name", DATASETS)
def test_unknown_split(name):
    with pytest.raises(ValidationError, match=rf"{name}: split must be one of \('train', 'test'\), got 'val'"):
        load_dataset(name, "val")


@needs_fashion
def test_fashion_test_split():
    images, labels = load_fashion_mnist("test")
    _check_images(images, labels, 10000, 28)
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


@needs_fashion
def test_fashion_train_split():
    images, labels = load_dataset("fashion", "train")
    _check_images(images, labels, 60000, 28)
    np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)


# --- IDX files written to tmp_path -------------------------------------------------------------

IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"


def _idx(array: np.ndarray) -> bytes:
    """Uncompressed IDX bytes of a uint8 array."""
    dims = np.array(array.shape, ">u4").tobytes()
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def _write(root: Path, images: bytes, labels: bytes) -> Path:
    (root / IMAGES).write_bytes(gzip.compress(images))
    (root / LABELS).write_bytes(gzip.compress(labels))
    return root


def _small_set():
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    return images, np.array([0, 9, 4])


def test_fashion_reads_small_idx_files(tmp_path):
    images, labels = _small_set()
    got_x, got_y = load_fashion_mnist("test", root=_write(tmp_path, _idx(images), _idx(labels)))
    np.testing.assert_array_equal(got_x, (images[:, None] / np.float32(255)).astype(np.float32), strict=True)
    np.testing.assert_array_equal(got_y, labels.astype(np.int64), strict=True)


def _corrupt_cases():
    images, labels = _small_set()
    good_x, good_y = _idx(images), _idx(labels)
    return {
        "images not gzip": (IMAGES, lambda root: (root / IMAGES).write_bytes(good_x), "not a readable gzip file"),
        "labels gzip cut short": (
            LABELS,
            lambda root: (root / LABELS).write_bytes(gzip.compress(good_y)[:-12]),
            "not a readable gzip file",
        ),
        "header cut short": (
            IMAGES,
            lambda root: _write(root, good_x[:10], good_y),
            r"truncated IDX header: 10 bytes, expected at least 16",
        ),
        "empty labels": (
            LABELS,
            lambda root: _write(root, good_x, b""),
            r"truncated IDX header: 0 bytes, expected at least 8",
        ),
        "data cut short": (
            IMAGES,
            lambda root: _write(root, good_x[:-1], good_y),
            r"truncated: dimensions \(3, 28, 28\) need 2352 data bytes, found 2351",
        ),
        "trailing bytes": (
            LABELS,
            lambda root: _write(root, good_x, good_y + b"\0"),
            r"trailing bytes: dimensions \(3,\) need 3 data bytes, found 4",
        ),
        "int32 type code": (
            LABELS,
            lambda root: _write(root, good_x, bytes([0, 0, 0x0C, 1]) + good_y[4:]),
            r"bad IDX magic 00000c01, expected 00000801",
        ),
        "labels file as images": (
            IMAGES,
            lambda root: _write(root, good_y, good_y),
            r"bad IDX magic 00000801, expected 00000803",
        ),
        "wrong image size": (
            IMAGES,
            lambda root: _write(root, _idx(np.zeros((3, 8, 8))), good_y),
            r"image size \(8, 8\), expected \(28, 28\)",
        ),
        "count mismatch": (
            IMAGES,
            lambda root: _write(root, good_x, _idx(labels[:2])),
            r"3 images but .* has 2 labels",
        ),
        "label out of range": (
            LABELS,
            lambda root: _write(root, good_x, _idx(np.array([0, 10, 1]))),
            r"label 10 outside \[0, 10\)",
        ),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_fashion_corrupt_file(tmp_path, case):
    images, labels = _small_set()
    _write(tmp_path, _idx(images), _idx(labels))
    bad_file, corrupt, message = _corrupt_cases()[case]
    corrupt(tmp_path)
    with pytest.raises(ModelFormatError, match=message) as info:
        load_fashion_mnist("test", root=tmp_path)
    assert str(tmp_path / bad_file) in str(info.value)


def test_fashion_missing_directory(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(ValidationError, match=r"nowhere does not exist; install .*`apt install dataset-fashion-mnist`"):
        load_fashion_mnist("test", root=root)


def test_fashion_missing_file(tmp_path):
    images, labels = _small_set()
    _write(tmp_path, _idx(images), _idx(labels))
    with pytest.raises(ValidationError, match=r"train-images-idx3-ubyte.gz does not exist"):
        load_fashion_mnist("train", root=tmp_path)


@needs_fashion
def test_fashion_real_files_copied_and_truncated(tmp_path):
    """A real file cut short in its compressed stream is reported, not silently short."""
    shutil.copy(Path(FASHION_MNIST_ROOT) / LABELS, tmp_path / LABELS)
    data = (Path(FASHION_MNIST_ROOT) / IMAGES).read_bytes()
    (tmp_path / IMAGES).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="not a readable gzip file"):
        load_fashion_mnist("test", root=tmp_path)


def test_fashion_folder_from_intsim_data_and_unpacked_files(tmp_path, monkeypatch):
    images, labels = _small_set()
    (tmp_path / IMAGES.removesuffix(".gz")).write_bytes(_idx(images))
    (tmp_path / LABELS.removesuffix(".gz")).write_bytes(_idx(labels))
    monkeypatch.setenv("INTSIM_DATA", str(tmp_path))
    for got_x, got_y in (load_fashion_mnist("test"), load_dataset("fashion", "test")):
        np.testing.assert_array_equal(got_x, (images[:, None] / np.float32(255)).astype(np.float32), strict=True)
        np.testing.assert_array_equal(got_y, labels.astype(np.int64), strict=True)
    monkeypatch.setenv("INTSIM_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(ValidationError, match=r"elsewhere does not exist; .*--data-dir, INTSIM_DATA or root="):
        load_dataset("fashion", "test")


def test_demo_data_dir(tmp_path, capsys):
    from intsim.cli import main

    assert main(["demo", "--model", "resnet_fashion", "--data-dir", str(tmp_path / "nowhere")]) == 1
    assert f"fashion: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
