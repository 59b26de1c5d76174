"""The interpolated table of a 16-bit input: any elementwise function (sigmoid, tanh, exp, GELU,
reciprocal, square root, hard-swish, SiLU, ...) of int16 / uint16 codes from 513 output codes instead of
65,536.

The semantics follow LiteRT's int16 LUT for LOGISTIC and TANH (``lut_lookup_with_interpolation``); the
code and its derivation are intsim's own.  With ``u = x - x_min`` (``0 <= u < 2**16``), the segment is
``i = u >> 7`` (512 segments of 128 codes) and the position in it ``r = u & 127``;
``y = table[i] + (((table[i + 1] - table[i]) * r + 64) >> 7)``: the straight line between the segment's
two end entries, rounded half up.  ``|table[i + 1] - table[i]| <= 65535``, so the product stays below
``2**23`` and the result lies between the two entries: inside the output range, no clamp.  Entry ``i``
is the output code of the input code ``x_min + 128 i`` (entry 512 that of ``x_min + 65536``, one past the
range), each lowered by half the interpolation error at its segment's midpoint (see
:func:`intsim.converter.tables.build_interpolated_lut`).

The naive twin is :mod:`intsim.kernels.naive.tables`.
"""

from __future__ import annotations

import numpy as np

from intsim.jit import jit

SEGMENT_BITS = 7  # 128 input codes per segment
INTERPOLATED_ENTRIES = (1 << (16 - SEGMENT_BITS)) + 1  # 513: 512 segments and the end of the last


@jit
def _interpolated_core(x, table, x_min, out):
    half = np.int64(1) << (SEGMENT_BITS - 1)
    mask = (np.int64(1) << SEGMENT_BITS) - 1
    for i in range(x.size):
        u = np.int64(x[i]) - x_min
        segment = u >> SEGMENT_BITS
        base = np.int64(table[segment])
        slope = np.int64(table[segment + 1]) - base
        out[i] = base + ((slope * (u & mask) + half) >> SEGMENT_BITS)


def lookup_table_interpolated(x, table, x_min, out_dtype):
    """``f(x)`` of 16-bit codes ``x`` from the 513-entry ``table`` (module docstring), linearly
    interpolated between entries.

    Parameters
    ----------
    x : int16 or uint16 array
    table : int32 array [513]
        Output codes (inside the output dtype's range).
    x_min : int
        The smallest code of ``x``'s dtype (-32768 or 0).
    out_dtype : numpy dtype
        int16 or uint16.

    Returns
    -------
    An array shaped like ``x`` of ``out_dtype``.
    """
    out = np.empty(x.shape, out_dtype)
    _interpolated_core(np.ascontiguousarray(x).reshape(-1), np.asarray(table, np.int32), np.int64(x_min),
                       out.reshape(-1))
    return out
