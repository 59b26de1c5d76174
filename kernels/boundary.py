"""Kernels at a model's edges: float inputs to codes, codes to float outputs, layout transposes.

Each public function allocates its output and calls a private numba core;
inputs are trusted (:mod:`intsim.runtime` validates them).  The naive twins,
numpy expressions of the same arithmetic, live in
:mod:`intsim.kernels.naive_boundary`.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, FLOAT64_HALF_AWAY, round_float
from intsim.jit import jit, jit_inline
from intsim.kernels.byte_transpose import transpose_bytes

# Tensors of rank up to this are transposed by the numba core (unit axes in front).
TRANSPOSE_MAX_RANK = 4


@jit_inline
def _quantize_loop(x, scale, rounding, zero_point, low, high, far_low, far_high, out):
    # ``low`` and ``high``, the clamp minus the zero point, are exact in the float type: the clamp
    # happens before the zero point is added, where the rounded quotient is still a float.  The
    # division is in ``scale``'s float type: a float32 value over a float64 scale is the float64
    # quotient of the value widened, exactly.  ``far_low`` and ``far_high`` are float64: a value
    # is compared with them widened, exactly.
    non_finite = 0
    far = 0
    for i in range(x.size):
        non_finite += (x[i] - x[i]) != 0  # NaN or an infinity
        far += (x[i] < far_low) | (x[i] > far_high)
        out[i] = np.int32(min(max(round_float(x[i] / scale, rounding), low), high)) + zero_point
    return non_finite, far


@jit
def _quantize_core(x, scale, rounding, zero_point, low, high, far_low, far_high, out):
    # One loop per rounding mode, each with the mode a constant, so that both vectorise.
    if rounding == FLOAT32_RINT:
        return _quantize_loop(x, scale, FLOAT32_RINT, zero_point, low, high, far_low, far_high, out)
    return _quantize_loop(x, scale, FLOAT64_HALF_AWAY, zero_point, low, high, far_low, far_high, out)


def _real(x_dtype, scale):
    """The float type of the division: ``scale``'s where it names one, else ``x``'s."""
    return type(scale) if isinstance(scale, (np.float32, np.float64)) else x_dtype.type


def quantize_float(x, scale, rounding, zero_point, clamp_min, clamp_max, out_dtype):
    """Codes ``clamp(round(x / scale) + zero_point)`` of floats ``x``, the division in ``scale``'s float type.

    Parameters
    ----------
    x : float32 or float64 array
        float64 only with a float64 ``scale`` (the caller narrows it first otherwise).
    scale : float
        A ``numpy.float32`` or ``numpy.float64`` names the division's float type (a float32 ``x``
        over a float64 ``scale`` divides the exactly widened value in float64, with no float64
        copy of ``x``); any other number is taken in ``x``'s float type.
    rounding : int
        :data:`~intsim.fixedpoint.FLOAT32_RINT` (ties to even) or
        :data:`~intsim.fixedpoint.FLOAT64_HALF_AWAY` (ties away from zero), in
        the division's float type (:func:`~intsim.fixedpoint.round_float`).
    zero_point, clamp_min, clamp_max : int
    out_dtype : numpy integer dtype

    Returns
    -------
    out : array of ``out_dtype``, shape of ``x``
    non_finite_count : int
        Elements of ``x`` that are NaN or infinite (their codes are undefined).
    """
    out = np.empty(x.shape, out_dtype)
    real = _real(x.dtype, scale)
    non_finite, _ = _quantize_core(x.reshape(-1), real(scale), int(rounding), int(zero_point),
                                   real(clamp_min - zero_point), real(clamp_max - zero_point), -np.inf, np.inf,
                                   out.reshape(-1))
    return out, int(non_finite)


class _QuantizeLaunch:
    """:func:`quantize_float` into a given array, its parameters fixed; see :func:`quantize_launcher`."""

    def __init__(self, x_dtype, scale, rounding, zero_point, clamp_min, clamp_max, far_low, far_high):
        real = _real(np.dtype(x_dtype), scale)
        self.args = (real(scale), int(rounding), int(zero_point), real(clamp_min - zero_point),
                     real(clamp_max - zero_point), float(far_low), float(far_high))

    def __call__(self, x, out):
        return _quantize_core(x.reshape(-1), *self.args, out.reshape(-1))


def quantize_launcher(x_dtype, scale, rounding, zero_point, clamp_min, clamp_max, far_low, far_high):
    """``launch(x, out) -> (non_finite_count, far_count)``: :func:`quantize_float` of C-contiguous ``x``
    of dtype ``x_dtype`` written into ``out`` (C-contiguous, the shape of ``x``), for a caller that
    quantizes many times (``Model.run``); ``far_count`` is how many values of ``x`` lie below
    ``far_low`` or above ``far_high`` (compared as float64, exactly), counted in the same pass.
    NaN counts as non-finite, not as far."""
    return _QuantizeLaunch(x_dtype, scale, rounding, zero_point, clamp_min, clamp_max, far_low, far_high)


@jit
def _dequantize_core(codes, scale, zero_point, out):
    for i in range(codes.size):
        # A float32 scale times a code difference of at most 17 bits is exact in float64: one rounding.
        out[i] = np.float32(scale * (np.float64(codes[i]) - zero_point))


@jit
def _dequantize_core32(codes, scale32, zero_point, out):
    # The same values in float32 lanes, twice as many per vector: a difference of 16-bit codes (at most
    # 17 bits) is exact in float32, so the float32 product of it and a float32 scale is the exact product
    # rounded once, as is _dequantize_core's float64 product (exact) narrowed to float32.
    for i in range(codes.size):
        out[i] = np.float32(np.int32(codes[i]) - zero_point) * scale32


def dequantize_codes(codes, scale, zero_point):
    """float32 ``scale * (codes - zero_point)``, formed in float64 and rounded once.

    Returns a float32 array of the shape of ``codes``.
    """
    out = np.empty(codes.shape, np.float32)
    flat = np.ascontiguousarray(codes).reshape(-1)
    zero_point_fits = float(zero_point).is_integer() and abs(zero_point) <= 1 << 16
    if codes.dtype.itemsize <= 2 and zero_point_fits and float(np.float32(scale)) == float(scale):
        _dequantize_core32(flat, np.float32(scale), np.int32(zero_point), out.reshape(-1))
    else:
        _dequantize_core(flat, float(scale), float(zero_point), out.reshape(-1))
    return out


@jit
def _copy4(x, out):
    # Loops in the order of ``x``'s axes: reads are sequential, ``out`` (a permuted view) takes the strides.
    d0, d1, d2, d3 = x.shape
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                for i3 in range(d3):
                    out[i0, i1, i2, i3] = x[i0, i1, i2, i3]


def batched_2d(shape, perm):
    """``(N, R, C)`` where permuting axes of ``shape`` by ``perm`` moves the same bytes as transposing
    ``N`` C-contiguous ``R x C`` matrices (NCHW <-> NHWC: ``(N, C, H * W)`` or ``(N, H * W, C)``), else
    ``None``.  Unit axes are dropped and axes that stay adjacent and in order are merged first."""
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    rank = {a: i for i, a in enumerate(kept)}
    runs = []  # runs of input axes that stay adjacent and in order, in output order
    for a in (rank[p] for p in perm if shape[p] != 1):
        if runs and runs[-1][-1] + 1 == a:
            runs[-1].append(a)
        else:
            runs.append([a])
    sizes = {run[0]: int(np.prod([shape[kept[a]] for a in run], dtype=np.int64)) for run in runs}
    order = [run[0] for run in runs]
    first = sorted(order)
    reduced = [first.index(a) for a in order]
    if reduced == [1, 0]:
        return 1, sizes[first[0]], sizes[first[1]]
    if reduced == [0, 2, 1]:
        return tuple(sizes[a] for a in first)
    return None


def _transpose_calls(x, out, perm):
    # The one numba call that writes ``out`` (C-contiguous, of the permuted shape) from C-contiguous ``x``.
    batched = batched_2d(x.shape, perm) if x.dtype.itemsize == 1 else None
    if batched is not None:  # one-byte codes: 16 x 16 register blocks
        n_batch, n_rows, n_cols = batched
        return transpose_bytes, (x.reshape(n_batch, n_rows, n_cols), out.reshape(n_batch, n_cols, n_rows))
    unit_axes = (np.newaxis,) * (TRANSPOSE_MAX_RANK - x.ndim)
    inverse = sorted(range(x.ndim), key=list(perm).__getitem__)
    return _copy4, (x[unit_axes], np.transpose(out, inverse)[unit_axes])  # out, shaped like x


def transpose(x, perm):
    """``x`` with its axes permuted by ``perm`` (``numpy.transpose``), C-contiguous.

    Where the permuted view is already C-contiguous (only unit axes move) it is
    returned as it is.  One-byte codes whose permutation is a batched 2-D
    transpose (:func:`batched_2d`: NCHW <-> NHWC) move in 16 x 16 register
    blocks (:mod:`intsim.kernels.byte_transpose`).  Otherwise, up to rank
    :data:`TRANSPOSE_MAX_RANK`, one numba pass reads ``x`` in order and writes
    a permuted view of the output (one strided store per code); higher ranks
    use numpy.
    """
    permuted = np.transpose(x, perm)
    if permuted.flags.c_contiguous or x.ndim > TRANSPOSE_MAX_RANK:
        return np.asarray(permuted, order="C")
    out = np.empty(permuted.shape, x.dtype)
    function, arguments = _transpose_calls(np.asarray(x, order="C"), out, perm)
    function(*arguments)
    return out


class _TransposeLaunch:
    """:func:`transpose` by one ``perm``; ``calls`` as in :func:`transpose_launcher`."""

    def __init__(self, perm):
        self.perm = tuple(perm)

    def __call__(self, x):
        return transpose(x, self.perm)

    def calls(self, x, out):
        shape = tuple(x.shape[p] for p in self.perm)
        if x.ndim > TRANSPOSE_MAX_RANK or out.shape != shape or not (x.flags.c_contiguous and out.flags.c_contiguous):
            return None
        return [_transpose_calls(x, out, self.perm)]


def transpose_launcher(perm):
    """``launch(x)``, equal to :func:`transpose` of ``x`` by ``perm``, for a caller that transposes
    many times (a model's bound step).

    ``launch.calls(x, out)`` gives ``[(numba function, arguments)]`` that write ``out`` (C-contiguous,
    of the permuted shape) from C-contiguous ``x`` in one pass, or ``None`` where they do not fit (rank
    above :data:`TRANSPOSE_MAX_RANK`).
    """
    return _TransposeLaunch(perm)
