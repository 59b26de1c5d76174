"""The 513-entry interpolated table of a 16-bit input (profile ``int16_tables = "interpolated"``), built
from real scales once (float work, at conversion); :mod:`intsim.kernels.tables` looks it up in integers.

Entry ``i`` belongs to the input code ``c_i = x_min + 128 i`` (``i = 0..512``; the last is one past the
code range, the end of the last segment).  With ``v(c) = f(s_x (c - z_x)) / s_y + z_y`` the exact output
in output codes, the kernel draws the chord between ``v(c_i)`` and ``v(c_{i+1})``; a convex or concave
``f`` leaves the chord on one side of the curve, by ``e_i = (v(c_i) + v(c_{i+1})) / 2 - v(c_i + 64)`` at
the midpoint.  Each entry but the last is lowered by ``e_i / 2``, which splits that error evenly on both
sides of the curve (the idea of LiteRT's int16 LUT; a linear ``f`` is unchanged):
``table[i] = clamp(round(v(c_i) - e_i / 2))``, ``table[512] = clamp(round(v(c_512)))``.
"""

from __future__ import annotations

import numpy as np

from intsim.codes import dtype_range
from intsim.errors import ValidationError
from intsim.graph.ir import TensorInfo
from intsim.kernels.tables import INTERPOLATED_ENTRIES, SEGMENT_BITS


def build_interpolated_lut(fn, x: TensorInfo, y: TensorInfo) -> np.ndarray:
    """The int32 ``[513]`` table of ``y`` codes for the 16-bit input ``x`` (module docstring).

    ``fn`` maps a float64 array of reals to a float64 array (as :func:`intsim.converter.params.build_lut`).
    """
    if x.dtype not in ("int16", "uint16"):
        raise ValidationError(f"tensor {x.name!r}: interpolated tables index 16-bit codes, found {x.dtype}")
    step = 1 << SEGMENT_BITS
    codes = dtype_range(x.dtype)[0] + step * np.arange(INTERPOLATED_ENTRIES, dtype=np.float64)
    midpoints = codes[:-1] + step // 2
    real = x.scale * (np.concatenate([codes, midpoints]) - x.zero_point)
    values = np.asarray(fn(real), dtype=np.float64)
    if values.shape != real.shape or not np.all(np.isfinite(values)):
        raise ValidationError(f"interpolated table for {x.name!r}: fn must return finite values shaped like its input")
    exact = values / y.scale + y.zero_point
    ends, middle = exact[:INTERPOLATED_ENTRIES], exact[INTERPOLATED_ENTRIES:]
    lowered = ends.copy()
    lowered[:-1] -= ((ends[:-1] + ends[1:]) / 2 - middle) / 2
    return np.clip(np.rint(lowered), *y.code_range).astype(np.int32)
