"""Small image-classification data sets for end-to-end accuracy checks.

Every loader returns ``(images, labels)``: ``images`` float32 NCHW with values
in [0, 1], ``labels`` int64 class indices in [0, 10).

- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 1x8x8),
  shipped as ``intsim/models/data/digits.npz`` so that scikit-learn is not
  needed at run time.  Fixed split: the first 1347 images are ``train``, the
  last 450 are ``test`` (scikit-learn's order, which groups images by writer,
  so the test writers are mostly unseen in training; each class has 41..48 test
  images).
- ``fashion``: Fashion-MNIST (1x28x28; 60000 train, 10000 test) read from the
  IDX files (gzipped or not) in a folder: ``root=``, else ``INTSIM_DATA``, else
  ``/usr/share/datasets/fashion-mnist`` where Debian's ``dataset-fashion-mnist``
  installs them (:func:`intsim.config.data_dir_setting`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from intsim.config import FASHION_MNIST_ROOT, data_dir_setting
from intsim.errors import ModelFormatError, ValidationError
from intsim.models import model_path

SPLITS = ("train", "test")

_DIGITS_TRAIN_COUNT = 1347
_DIGITS_MAX_VALUE = 16
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_NUM_CLASSES = 10
_IDX_UBYTE = 0x08


def _check_split(dataset: str, split: str) -> None:
    if split not in SPLITS:
        raise ValidationError(f"{dataset}: split must be one of {SPLITS}, got {split!r}")


def load_digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits with intsim's fixed split.

    Parameters
    ----------
    split : {"train", "test"}
        ``train`` is the first 1347 images, ``test`` the last 450.

    Returns
    -------
    images : np.ndarray
        float32, shape [N, 1, 8, 8], the 0..16 pixel values divided by 16.
    labels : np.ndarray
        int64, shape [N].
    """
    _check_split("digits", split)
    with np.load(model_path("data/digits.npz")) as data:
        images, labels = data["images"], data["labels"]
    part = slice(None, _DIGITS_TRAIN_COUNT) if split == "train" else slice(_DIGITS_TRAIN_COUNT, None)
    images = images[part, None, :, :].astype(np.float32) / np.float32(_DIGITS_MAX_VALUE)
    return images, labels[part].astype(np.int64)


def _read_idx_ubyte(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes with ``ndim`` dimensions, gzipped when its name ends in ``.gz``.

    IDX layout: two zero bytes, a type code (0x08 = unsigned byte), the number
    of dimensions, then each dimension as a big-endian uint32, then the data.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ModelFormatError(f"{path}: not a readable gzip file ({exc})") from exc
    header_bytes = 4 + 4 * ndim
    magic = bytes([0, 0, _IDX_UBYTE, ndim])
    if len(raw) >= 4 and raw[:4] != magic:
        raise ModelFormatError(
            f"{path}: bad IDX magic {raw[:4].hex()}, expected {magic.hex()} (unsigned bytes, {ndim} dimensions)"
        )
    if len(raw) < header_bytes:
        raise ModelFormatError(f"{path}: truncated IDX header: {len(raw)} bytes, expected at least {header_bytes}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(raw) - header_bytes
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise ModelFormatError(f"{path}: {problem}: dimensions {dims} need {expected} data bytes, found {found}")
    return np.frombuffer(raw, np.uint8, offset=header_bytes).reshape(dims)


def _idx_file(root: Path, name: str) -> Path:
    """``root / name`` (gzipped), or the same file unpacked (``name`` less ``.gz``) where only that exists."""
    packed = root / name
    unpacked = root / name.removesuffix(".gz")
    return unpacked if not packed.exists() and unpacked.exists() else packed


def load_fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its four IDX files (the layout of ``dataset-fashion-mnist`` and of the
    original distribution).

    Parameters
    ----------
    split : {"train", "test"}
        ``train`` has 60000 images, ``test`` 10000.
    root : str, Path or None
        Folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (each may also be
        unpacked, without ``.gz``). ``None``: ``INTSIM_DATA``, else ``FASHION_MNIST_ROOT``.

    Returns
    -------
    images : np.ndarray
        float32, shape [N, 1, 28, 28], the 0..255 pixel values divided by 255.
    labels : np.ndarray
        int64, shape [N].

    Raises
    ------
    ValidationError
        ``root`` or one of its files does not exist.
    ModelFormatError
        A file is not gzip, has a wrong IDX magic number or image size, is
        truncated, or images and labels disagree.
    """
    _check_split("fashion", split)
    root = Path(data_dir_setting() if root is None else root)
    image_path, label_path = (_idx_file(root, name) for name in _FASHION_FILES[split])
    for path in (root, image_path, label_path):
        if not path.exists():
            raise ValidationError(
                f"fashion: {path} does not exist; install the data set with `apt install dataset-fashion-mnist`, "
                f"or name the folder holding its IDX files with --data-dir, INTSIM_DATA or root= "
                f"(default {FASHION_MNIST_ROOT})"
            )
    images = _read_idx_ubyte(image_path, ndim=3)
    labels = _read_idx_ubyte(label_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise ModelFormatError(f"{image_path}: image size {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ModelFormatError(f"{image_path}: {len(images)} images but {label_path} has {len(labels)} labels")
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise ModelFormatError(f"{label_path}: label {labels.max()} outside [0, {_NUM_CLASSES})")
    return images[:, None, :, :].astype(np.float32) / np.float32(255), labels.astype(np.int64)


_LOADERS = {"digits": load_digits, "fashion": load_fashion_mnist}
DATASETS = tuple(_LOADERS)


def load_dataset(name: str, split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a data set by name (one of ``DATASETS``: ``"digits"``, ``"fashion"``).

    Returns the loader's ``(images, labels)``; see ``load_digits`` and
    ``load_fashion_mnist``. ``root`` names the folder of a data set read from
    files (``fashion``); ``digits`` ships inside intsim and takes none.
    """
    if name not in _LOADERS:
        raise ValidationError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits(split)
    return _LOADERS[name](split, root)
