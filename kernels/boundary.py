"""Kernels at a model's edges: float inputs to codes, codes to float outputs, layout transposes.

Each public function allocates its output and calls a private numba core;
inputs are trusted (:mod:`intsim.runtime` validates them).  The naive twins,
numpy expressions of the same arithmetic, live in
:mod:`intsim.kernels.naive_boundary`.
"""

from __future__ import annotations

import functools

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, FLOAT64_HALF_AWAY, round_float
from intsim.jit import compiled_entry, jit, jit_inline
from intsim.kernels.byte_transpose import transpose_bytes

# Tensors of rank up to this are transposed by the numba core (unit axes in front).
TRANSPOSE_MAX_RANK = 4


@jit_inline
def _quantize_loop(x, factor, divide, rounding, zero_point, low, high, count, far_low, far_high, out):
    # The quotient is ``x / factor`` (``divide``) or ``x * factor``, in ``factor``'s float type: a
    # float32 value over a float64 factor is widened first, exactly.  ``low`` and ``high``, the clamp
    # minus the zero point, are exact in the float type: the clamp happens before the zero point is
    # added, where the rounded quotient is still a float.  With ``count`` (a constant) the same pass
    # counts non-finite values and those below ``far_low`` or above ``far_high`` (float64: a value is
    # compared with them widened, exactly); else it returns zeros.
    non_finite = 0
    far = 0
    for i in range(x.size):
        if count:
            non_finite += (x[i] - x[i]) != 0  # NaN or an infinity
            far += (x[i] < far_low) | (x[i] > far_high)
        quotient = x[i] / factor if divide else x[i] * factor
        out[i] = np.int32(min(max(round_float(quotient, rounding), low), high)) + zero_point
    return non_finite, far


@jit
def _quantize_core(x, scale, rounding, zero_point, low, high, far_low, far_high, out):
    # One loop per rounding mode, each with the mode a constant, so that both vectorise.
    if rounding == FLOAT32_RINT:
        return _quantize_loop(x, scale, True, FLOAT32_RINT, zero_point, low, high, True, far_low, far_high, out)
    return _quantize_loop(x, scale, True, FLOAT64_HALF_AWAY, zero_point, low, high, True, far_low, far_high, out)


@jit_inline
def _float32_key_range(bits):
    # The least and greatest order key of float32 values (their bits as int32): a non-negative value's
    # bits, a negative one's with the 31 low bits flipped, so that keys order as the values do, with
    # -0 just below +0, a NaN with the sign bit beyond -inf and one without beyond +inf.  int32 lanes
    # throughout: 16 to a vector.
    least, greatest = np.int32(2**31 - 1), np.int32(-(2**31))
    for i in range(bits.size):
        b = bits[i]
        key = np.int32(b ^ np.int32(np.int32(b >> np.int32(31)) & np.int32(0x7FFFFFFF)))
        least, greatest = min(least, key), max(greatest, key)
    return least, greatest


@jit
def _quantize32_core(x, bits, factor, divide, rounding, zero_point, low, high, far_low, far_high, key_low,
                     key_high, out):
    # _quantize_core of float32 ``x`` (``bits``, its int32 view) in two lean passes: the range of the
    # values' order keys, then the codes, the quotient ``x * factor`` where ``divide`` is false (the
    # scale's reciprocal, where _exact_reciprocal has shown the codes are the same).  Only where the
    # keys reach ``key_low`` or ``key_high`` (every non-finite or far value does, a few others may)
    # does a third pass count them: two counts in the codes pass take 64-bit lanes, the keys 32-bit.
    least, greatest = _float32_key_range(bits)
    if divide and rounding == FLOAT32_RINT:
        _quantize_loop(x, factor, True, FLOAT32_RINT, zero_point, low, high, False, far_low, far_high, out)
    elif divide:
        _quantize_loop(x, factor, True, FLOAT64_HALF_AWAY, zero_point, low, high, False, far_low, far_high, out)
    elif rounding == FLOAT32_RINT:
        _quantize_loop(x, factor, False, FLOAT32_RINT, zero_point, low, high, False, far_low, far_high, out)
    else:
        _quantize_loop(x, factor, False, FLOAT64_HALF_AWAY, zero_point, low, high, False, far_low, far_high, out)
    non_finite, far = 0, 0
    if least <= key_low or greatest >= key_high:
        for i in range(x.size):
            non_finite += (x[i] - x[i]) != 0  # NaN or an infinity
            far += (x[i] < far_low) | (x[i] > far_high)
    return non_finite, far


def _float32_key(value) -> int:
    """The order key of :func:`_float32_key_range` of a float32 value."""
    bits = int(np.float32(value).view(np.int32))
    return bits ^ 0x7FFFFFFF if bits < 0 else bits


def _float32_key_bounds(far_low, far_high) -> tuple[int, int]:
    """``(key_low, key_high)``: the keys of the greatest float32 at or below ``far_low`` and the least
    at or above ``far_high``, so that every float32 value below ``far_low`` has a key at or below
    ``key_low``, every one above ``far_high`` a key at or above ``key_high``."""
    with np.errstate(over="ignore"):
        low, high = np.float32(far_low), np.float32(far_high)
    if float(low) > far_low:
        low = np.nextafter(low, np.float32(-np.inf))
    if float(high) < far_high:
        high = np.nextafter(high, np.float32(np.inf))
    return _float32_key(low), _float32_key(high)


# Neighbours of each rounding tie, in the input's float type, that _exact_reciprocal tries on either side.
TIE_NEIGHBOURS = 8
# Ties beyond this many (codes wider than 16 bits) are not tried: such launches keep the division.
MAX_TIES = 2**18


def _exact_reciprocal(scale, rounding, zero_point, low, high):
    """``1 / scale`` where multiplying a float32 value by it gives the codes that dividing it by the
    float64 ``scale`` gives, for every float32 value; else ``None``.

    Both float64 quotients are within 3 units in their last place of the exact ``x / scale`` (the
    reciprocal and each operation round once), so their codes can differ only where a rounding tie
    ``(k + 1/2)`` lies between them: where ``x`` is within a few float64 units of ``(k + 1/2) * scale``,
    which only the float32 value nearest that point on either side can be.  So it is enough that both
    quotients give the same codes on the :data:`TIE_NEIGHBOURS` float32 values on either side of every
    tie that can reach a code inside the clamp (beyond it both clamp alike).  Those are tried here,
    through the core itself, dividing and multiplying."""
    reciprocal = 1.0 / float(scale)
    if not (0.0 < scale < np.inf and 0.0 < reciprocal < np.inf):
        return None
    ties = np.arange(np.floor(low) - 1.5, np.ceil(high) + 2.0, 1.0)
    if ties.size > MAX_TIES:
        return None
    with np.errstate(over="ignore"):
        centres = (ties * float(scale)).astype(np.float32)
    if not np.all(np.isfinite(centres)) or np.any(np.abs(centres) < np.finfo(np.float32).tiny):
        return None
    values, up, down = [centres], centres, centres
    for _ in range(TIE_NEIGHBOURS):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        values += [up, down]
    return reciprocal if multiplies_like_division(np.concatenate(values), scale, reciprocal, rounding, zero_point,
                                                  low, high) else None


def multiplies_like_division(x, scale, factor, rounding, zero_point, low, high) -> bool:
    """Whether float32 values ``x`` get the same codes from ``x * factor`` as from ``x / scale`` (float64,
    clamped to ``[low, high]``, plus ``zero_point``), through :func:`_quantize32_core`, its codes in the
    narrowest of the usual code types that holds them (as a model's input is: one compilation)."""
    lowest, highest = int(low) + zero_point, int(high) + zero_point
    code_dtype = next(t for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32)
                      if np.iinfo(t).min <= lowest and highest <= np.iinfo(t).max)
    codes = []
    for value, divide in ((np.float64(scale), True), (np.float64(factor), False)):
        out = np.empty(x.size, code_dtype)
        _quantize32_core(x, x.view(np.int32), value, divide, int(rounding), int(zero_point), float(low), float(high),
                         -np.inf, np.inf, 0, 0, out)
        codes.append(out)
    return np.array_equal(*codes)


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
    """:func:`quantize_float` into a given array, its parameters fixed; see :func:`quantize_launcher`.

    Float32 values go through :func:`_quantize32_core`, over a float64 scale multiplied by its
    reciprocal where :func:`_exact_reciprocal` shows the codes are the same (checked once, here)."""

    def __init__(self, x_dtype, scale, rounding, zero_point, clamp_min, clamp_max, far_low, far_high):
        real = _real(np.dtype(x_dtype), scale)
        low, high = real(clamp_min - zero_point), real(clamp_max - zero_point)
        self.args = (real(scale), int(rounding), int(zero_point), low, high, float(far_low), float(far_high))
        self.float32 = np.dtype(x_dtype) == np.float32
        if self.float32:
            reciprocal = _exact_reciprocal(scale, rounding, int(zero_point), low, high) if real is np.float64 else None
            factor, divide = (real(scale), True) if reciprocal is None else (np.float64(reciprocal), False)
            self.args = (factor, divide, *self.args[1:], *_float32_key_bounds(far_low, far_high))
        self.entry = None  # the core's compiled overload, from the first call (the arguments' types are fixed)

    def __call__(self, x, out):
        flat = x.reshape(-1)
        arguments = ((flat, flat.view(np.int32)) if self.float32 else (flat,)) + self.args + (out.reshape(-1),)
        if self.entry is None:
            self.entry = compiled_entry(_quantize32_core if self.float32 else _quantize_core, arguments)
        return self.entry(*arguments)


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


@jit
def _dequantize_core_split(codes, high, low, zero_point, out):
    # float32 lanes for a scale that is not a float32: ``high``, the scale to few enough bits that its
    # product with a code difference is exact in float32, plus ``low``, the rest of the scale in float32.
    # Not always the float64 product narrowed: _split_scale takes it only where it is, for every code.
    for i in range(codes.size):
        difference = np.float32(np.int32(codes[i]) - zero_point)
        out[i] = difference * high + difference * low


@functools.lru_cache(maxsize=1024)
def _split_scale(code_dtype, scale, zero_point):
    """``(high, low)`` for :func:`_dequantize_core_split` where it gives ``dequantize_codes``' float64
    values, bit for bit, for every code of ``code_dtype`` (a one- or two-byte integer type; all of
    them tried, once per dtype, scale and zero point); else ``None``."""
    info = np.iinfo(code_dtype)
    codes = np.arange(int(info.min), int(info.max) + 1).astype(code_dtype)
    span = max(abs(int(info.min) - zero_point), abs(int(info.max) - zero_point))
    mantissa, exponent = np.frexp(scale)
    kept = 24 - span.bit_length()  # bits of the scale whose product with a difference is exact in float32
    high = np.float32(np.ldexp(np.round(np.ldexp(mantissa, kept)), int(exponent) - kept))
    low = np.float32(scale - float(high))
    if not (np.isfinite(high) and np.isfinite(low)):
        return None
    return (high, low) if splits_exactly(codes, scale, zero_point, high, low) else None


def splits_exactly(codes, scale, zero_point, high, low) -> bool:
    """Whether :func:`_dequantize_core_split` by ``(high, low)`` gives the bits of the float64 core's
    values for every one of ``codes``."""
    expected, split = np.empty(codes.size, np.float32), np.empty(codes.size, np.float32)
    _dequantize_core(codes, float(scale), float(zero_point), expected)
    _dequantize_core_split(codes, np.float32(high), np.float32(low), np.int32(zero_point), split)
    return np.array_equal(expected.view(np.uint32), split.view(np.uint32))


def _dequantize_plan(code_dtype, scale, zero_point):
    """``(core, arguments)`` of :func:`dequantize_codes` for codes of ``code_dtype``: the arguments
    between the flat codes and the flat output."""
    zero_point_fits = float(zero_point).is_integer() and abs(zero_point) <= 1 << 16
    narrow = np.dtype(code_dtype).itemsize <= 2 and zero_point_fits
    if narrow and float(np.float32(scale)) == float(scale):
        return _dequantize_core32, (np.float32(scale), np.int32(zero_point))
    split = _split_scale(np.dtype(code_dtype), float(scale), int(zero_point)) if narrow else None
    if split is not None:
        return _dequantize_core_split, (*split, np.int32(zero_point))
    return _dequantize_core, (float(scale), float(zero_point))


def dequantize_codes(codes, scale, zero_point):
    """float32 ``scale * (codes - zero_point)``, formed in float64 and rounded once.

    Returns a float32 array of the shape of ``codes``.
    """
    core, arguments = _dequantize_plan(codes.dtype, scale, zero_point)
    out = np.empty(codes.shape, np.float32)
    core(np.ascontiguousarray(codes).reshape(-1), *arguments, out.reshape(-1))
    return out


class _DequantizeLaunch:
    """:func:`dequantize_codes` of codes of one dtype, its parameters fixed; see :func:`dequantize_launcher`."""

    def __init__(self, code_dtype, scale, zero_point):
        self.code_dtype = np.dtype(code_dtype)
        self.core, self.args = _dequantize_plan(self.code_dtype, scale, zero_point)
        self.entry = None  # the core's compiled overload, from the first call

    def __call__(self, codes):
        if codes.dtype != self.code_dtype:
            raise TypeError(f"dequantize launch for {self.code_dtype} codes called with {codes.dtype}")
        out = np.empty(codes.shape, np.float32)
        arguments = (np.ascontiguousarray(codes).reshape(-1), *self.args, out.reshape(-1))
        if self.entry is None:
            self.entry = compiled_entry(self.core, arguments)
        self.entry(*arguments)
        return out


def dequantize_launcher(code_dtype, scale, zero_point):
    """``launch(codes) -> float32 array``: :func:`dequantize_codes` of ``codes`` of dtype ``code_dtype``
    with this scale and zero point, for a caller that dequantizes many times (``Model.run``): what
    depends only on the parameters (the core, a scale split, the compiled overload) is worked out once."""
    return _DequantizeLaunch(code_dtype, scale, zero_point)


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
