"""Naive twin of :mod:`intsim.kernels.tables`: the interpolated 16-bit table in Python integers, the
segment and the position in it by integer division."""

from __future__ import annotations

import numpy as np


def lookup_table_interpolated(x, table, x_min, out_dtype):
    out = np.empty(x.shape, out_dtype)
    for index in np.ndindex(x.shape):
        segment, position = divmod(int(x[index]) - int(x_min), 128)
        low, high = int(table[segment]), int(table[segment + 1])
        out[index] = low + ((high - low) * position + 64) // 128
    return out
