"""Data a cluster's workers read for themselves: a ``.npy`` file on a path they share, memory-mapped.

:class:`NpyData` stands for the array in a ``.npy`` file without reading it.  It travels to a worker as
its path (a few bytes), and the worker maps the file and reads only the rows of its batches; a plain
array is scattered from the client instead.  Nothing here imports Dask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from intsim.errors import ValidationError


class NpyData:
    """The array in the ``.npy`` file ``path``, read lazily (``np.load(mmap_mode="r")``, never pickled).

    Slicing rows returns them as an in-memory array cast to ``dtype`` (when given); ``np.asarray``
    reads the whole file.  ``shape``, ``dtype`` and ``ndim`` come from the file's header.

    Parameters
    ----------
    path : str or Path
        A ``.npy`` file every worker can read at the same path (a shared file system).
    dtype : numpy dtype, optional
        The dtype rows are cast to when read (e.g. ``float32`` for images stored as ``uint8``).
    """

    def __init__(self, path, dtype=None):
        self.path = str(Path(path).resolve())
        mapped = self._map()
        self.shape = mapped.shape
        self.dtype = np.dtype(dtype) if dtype is not None else mapped.dtype
        self.ndim = mapped.ndim

    def _map(self) -> np.ndarray:
        try:
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise ValidationError(f"data file {self.path} does not exist") from None
        except (ValueError, OSError, EOFError) as exc:
            raise ValidationError(f"data file {self.path} is not a readable .npy array ({exc})") from None
        if not isinstance(mapped, np.ndarray):
            raise ValidationError(f"data file {self.path} must hold one array (.npy), found {type(mapped).__name__}")
        return mapped

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self._map()[rows], dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)

    def __reduce__(self):
        return NpyData, (self.path, self.dtype)

    def __repr__(self) -> str:
        return f"NpyData({self.path!r}, dtype={self.dtype}, shape={self.shape})"


def as_rows(data):
    """``data`` as something sliceable by rows with ``shape`` and ``dtype``: an :class:`NpyData` stays lazy,
    anything else becomes an array."""
    return data if isinstance(data, NpyData) else np.asarray(data)
