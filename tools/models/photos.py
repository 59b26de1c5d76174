"""ImageNet-style inputs from the colour photos that scikit-image ships.

Used as sanity inputs and calibration data for the 224x224 RGB ImageNet model
(EfficientNet-Lite0, see ``export_efficientnet.py``).  Needs scikit-image.

Preprocessing follows the EfficientNet-Lite evaluation pipeline of the
TensorFlow reference (``efficientnet/lite/efficientnet_lite_builder.py``:
``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` on 0..255 pixels; the PyTorch port in
``efficientnet-lite-pytorch`` is a weight conversion of that model): the
central square of 224/256 of the shorter side (TF's ``CROP_PADDING = 32``),
resized to ``size`` x ``size``, then ``(pixel - 127) / 128``.
"""

from __future__ import annotations

import numpy as np
from skimage import data
from skimage.transform import resize

# Every RGB photograph in skimage.data that needs no download.  Left out:
# ``cat`` (the same picture as ``chelsea``), ``colorwheel`` and ``logo``
# (synthetic graphics), greyscale images.
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
    "rocket",
)
MEAN = 127.0
STD = 128.0
CENTER_FRACTION = 224 / 256


def _rgb(name: str) -> np.ndarray:
    """uint8 [H, W, 3] photo by name."""
    if name.startswith("motorcycle_"):
        left, right, _disparity = data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(data, name)()


def _square(image: np.ndarray, side: int, top: int, left: int, size: int, flip: bool = False) -> np.ndarray:
    """Crop a ``side`` square at (top, left), resize to ``size``, normalise;
    float32 [3, size, size]."""
    crop = image[top : top + side, left : left + side]
    if flip:
        crop = crop[:, ::-1]
    pixels = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return ((pixels - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)


def load_photos(size: int = 224) -> tuple[np.ndarray, list[str]]:
    """The photos of ``PHOTO_NAMES``, centre-cropped and normalised.

    Returns
    -------
    images : np.ndarray
        float32, shape [len(PHOTO_NAMES), 3, size, size], roughly in [-1, 1].
    names : list of str
        The photo names, in the order of ``images``.
    """
    images = []
    for name in PHOTO_NAMES:
        image = _rgb(name)
        h, w = image.shape[:2]
        side = round(CENTER_FRACTION * min(h, w))
        images.append(_square(image, side, (h - side) // 2, (w - side) // 2, size))
    return np.stack(images), list(PHOTO_NAMES)


def augmented_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` calibration images: random square crops (side 50..100% of the
    photo's shorter side, anywhere in the photo), half of them mirrored, of
    photos drawn uniformly from ``PHOTO_NAMES``; normalised like ``load_photos``.

    Returns float32 [n, 3, size, size]; the same ``seed`` gives the same images.
    """
    if n < 0:
        raise ValueError(f"augmented_crops: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    photos = [_rgb(name) for name in PHOTO_NAMES]
    crops = []
    for _ in range(n):
        image = photos[rng.integers(len(photos))]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top = int(rng.integers(h - side + 1))
        left = int(rng.integers(w - side + 1))
        crops.append(_square(image, side, top, left, size, flip=bool(rng.integers(2))))
    return np.stack(crops) if crops else np.empty((0, 3, size, size), np.float32)
