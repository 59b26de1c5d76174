"""Shipped float models and data for intsim's end-to-end tests and examples.

Installed as the package ``intsim.models``.  It holds trained ONNX files
(``<arch>_<dataset>.onnx``), their recorded float accuracies
(``accuracy.json``) and small data sets (``data/*.npz``).  Importing it is
cheap: the training and export scripts beside this file (``train.py``,
``nets.py``, ``export_efficientnet.py``, ``photos.py``) need torch or
scikit-image and are never imported from here.
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def model_path(name: str) -> Path:
    """Path of a file shipped in this package.

    Parameters
    ----------
    name : str
        File name relative to the package, e.g. ``"resnet_digits.onnx"`` or
        ``"data/digits.npz"``.

    Returns
    -------
    pathlib.Path
        The path; the file is not opened, so a missing file is the caller's
        to report.
    """
    return _ROOT / name
