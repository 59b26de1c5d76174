"""Write ``models/data/digits.npz`` from scikit-learn's 8x8 digits.

Run once (``python models/make_digits_npz.py``); the npz is shipped so that
scikit-learn is not a runtime dependency of intsim.  The file holds the 1797
images as ``images`` (uint8, shape [1797, 8, 8], values 0..16) and ``labels``
(uint8, shape [1797]) in scikit-learn's order; ``intsim.datasets.load_digits``
applies the train/test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    assert np.array_equal(images, digits.images) and images.max() == 16
    path = Path(__file__).resolve().parent / "data" / "digits.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(path, images=images, labels=labels)
    print(f"wrote {path} ({path.stat().st_size} bytes): images {images.shape}, labels {labels.shape}")


if __name__ == "__main__":
    main()
