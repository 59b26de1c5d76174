"""The files of the ``intsim`` command line: ``.npy`` / ``.npz`` inputs read with bounded memory and
no pickles, outputs written as ``.npy``, ``.npz`` or ``.csv``."""

from __future__ import annotations

import tokenize
import zipfile
from pathlib import Path

import numpy as np

from intsim.errors import ValidationError


def load_npy(path: str, what: str) -> np.ndarray:
    try:
        # Memory-mapped: a header that claims more than the file holds fails here instead of allocating.
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise ValidationError(f"{what} file {path} does not exist") from None
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, MemoryError) as exc:
        raise ValidationError(f"{what} file {path} is not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise ValidationError(f"{what} file {path} must hold one array (.npy), found {type(array).__name__}")
    return array


def load_inputs(path: str, what: str):
    """``.npz``: a dict input name -> array (a model with several or integer inputs); else one ``.npy`` array."""
    if not str(path).endswith(".npz"):
        return load_npy(path, what)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ValidationError(f"{what} file {path} does not exist") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValidationError(f"{what} file {path} is not a readable .npz archive ({exc})") from None


def load_floats(path: str, what: str) -> np.ndarray:
    """A .npy of model inputs; integer pixels are read as real values (float32)."""
    array = load_npy(path, what)
    return array.astype(np.float32) if array.dtype.kind in "iu" else array


def save_npy(path, array) -> None:
    np.save(path, array, allow_pickle=False)


def save_csv(path, array) -> None:
    np.savetxt(path, array.reshape(array.shape[0], -1) if array.ndim > 1 else array[:, None], delimiter=",",
               fmt="%d" if array.dtype.kind in "iu" else "%.9g")


ONE_ARRAY_WRITERS = {".npy": save_npy, ".csv": save_csv}


def write_outputs(path: str, names, outputs) -> None:
    """``.npz``: every output under its name; ``.npy`` / ``.csv`` (one row per sample): the one output."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        np.savez(path, **dict(zip(names, outputs)))
        return
    if len(outputs) != 1:
        raise ValidationError(f"--output {path}: {suffix} holds one array but the model has {len(outputs)} "
                              "outputs; name an .npz file")
    ONE_ARRAY_WRITERS[suffix](path, outputs[0])
