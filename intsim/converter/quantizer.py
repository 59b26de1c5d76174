"""The profile's quantizer (white paper eq. 2-4), written once for calibration, PTQ and QAT: its format
(bits, signedness, symmetry, narrow range, power-of-two scales), the scale and zero point of a range,
quantize and fake-quantize, the grid search of a clipping range (MSE, cross-entropy) and weight
quantization.  The conventions are in :mod:`intsim.converter.calibration`'s docstring."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from intsim.errors import ValidationError
from intsim.codes import code_range as _bits_range, storage_dtype

DEGENERATE_SCALE = 2.0**-23
GRID_STEPS = 100  # candidates per grid search: clipping fractions 1/100, 2/100, ..., 1


# --------------------------------------------------------------------------
# The quantizer format and its parameters.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantFormat:
    """A validated quantizer format; ``params`` is the one vectorised rule from range to (scale, zero point)."""

    bits: int
    signed: bool
    symmetric: bool
    narrow_range: bool
    power_of_two: bool

    @classmethod
    def checked(cls, bits, signed, symmetric, narrow_range, power_of_two, where: str) -> "QuantFormat":
        if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
            raise ValidationError(f"{where}: bits must be an integer in [2, 16], found {bits!r}")
        flags = {"signed": signed, "symmetric": symmetric, "narrow_range": narrow_range, "power_of_two": power_of_two}
        for name, value in flags.items():
            if not isinstance(value, (bool, np.bool_)):
                raise ValidationError(f"{where}: {name} must be a bool, found {value!r}")
        return cls(int(bits), *(bool(v) for v in flags.values()))

    @property
    def qmin(self) -> int:
        lo = _bits_range(self.bits, self.signed)[0]
        return lo + 1 if self.signed and self.narrow_range else lo

    @property
    def qmax(self) -> int:
        return _bits_range(self.bits, self.signed)[1]

    def params(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """Scale (float64) and zero point (int64) for ranges ``lo <= hi`` of any shape; no validation.

        A range too wide for float64 gets an infinite scale, for the caller to report.
        """
        qmin, qmax = self.qmin, self.qmax
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        with np.errstate(over="ignore"):
            scale = np.maximum(-lo, hi) / (2 ** (self.bits - 1) - 1) if self.symmetric else (hi - lo) / (qmax - qmin)
        scale = np.where(scale > 0, scale, DEGENERATE_SCALE)
        if self.power_of_two:
            # scale = m * 2**e with m in [0.5, 1): the next power of two up is 2**e, or scale itself when m == 0.5.
            mantissa, exponent = np.frexp(scale)
            scale = np.ldexp(1.0, np.where(mantissa == 0.5, exponent - 1, exponent))
        if self.symmetric:
            return scale, np.full(scale.shape, 0 if self.signed else 2 ** (self.bits - 1), np.int64)
        real_zero_point = qmin - lo / scale  # maps lo to qmin exactly
        zero_point = np.rint(real_zero_point)
        # Zero points that keep both lo and hi inside [qmin, qmax] without rounding past them.  A scale rounded
        # up to a power of two leaves room for them; then the rounded zero point is moved into that room.
        no_clip_lo, no_clip_hi = np.ceil(real_zero_point), np.floor(qmax - hi / scale)
        zero_point = np.where(no_clip_lo <= no_clip_hi, np.clip(zero_point, no_clip_lo, no_clip_hi), zero_point)
        return scale, np.clip(zero_point, qmin, qmax).astype(np.int64)


def code_range(bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """Inclusive integer code range ``(qmin, qmax)``.

    ``narrow_range`` drops the most negative code of a signed range and does
    nothing to an unsigned one.
    """
    fmt = QuantFormat.checked(bits, signed, False, narrow_range, False, "code_range")
    return fmt.qmin, fmt.qmax


def quantization_params(lo, hi, bits: int, signed: bool, symmetric: bool, *, narrow_range: bool = False,
                        power_of_two: bool = False) -> tuple[float, int]:
    """Scale and zero point of the quantizer that covers ``[lo, hi]`` (white paper §2.2).

    The range is first widened to contain 0, so that 0 is exactly representable
    (its code is ``zero_point``).

    Asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and ``zero_point =
    rint(qmin - lo / scale)`` clamped to ``[qmin, qmax]``.  ``lo`` and ``hi``
    then land within half a step of ``qmin`` and ``qmax``.

    Symmetric: ``scale = max(|lo|, |hi|) / (2**(bits-1) - 1)``; ``zero_point``
    is 0 for signed codes and ``2**(bits-1)`` for unsigned ones (see the
    module docstring).

    ``power_of_two``: the scale is rounded *up* to a power of two, so the
    quantizer never clips more of ``[lo, hi]`` than the plain one; the zero
    point is then recomputed, and where the wider grid leaves room it is chosen
    so that ``lo`` and ``hi`` map inside ``[qmin, qmax]`` with no rounding past
    the ends.

    ``lo == hi == 0`` gives scale :data:`DEGENERATE_SCALE` (2**-23) and the
    zero point the rules above give (``qmin`` when asymmetric).

    Parameters
    ----------
    lo, hi : float
        Finite, ``lo <= hi``.
    bits : int
        2..16.
    signed, symmetric, narrow_range, power_of_two : bool

    Returns
    -------
    scale : float
        Positive, finite.
    zero_point : int
        In ``[qmin, qmax]``.
    """
    where = "quantization_params"
    fmt = QuantFormat.checked(bits, signed, symmetric, narrow_range, power_of_two, where)
    lo, hi = _checked_range(lo, hi, where)
    scale, zero_point = fmt.params(np.float64(lo), np.float64(hi))
    if not np.isfinite(scale):
        raise ValidationError(f"{where}: range [{lo}, {hi}] is too wide for float64: its scale is {float(scale)}")
    return float(scale), int(zero_point)


def _checked_range(lo, hi, where: str) -> tuple[float, float]:
    for name, value in (("lo", lo), ("hi", hi)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValidationError(f"{where}: {name} must be a real number, found {value!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValidationError(f"{where}: range must be finite, found lo={lo}, hi={hi}")
    if lo > hi:
        raise ValidationError(f"{where}: range must have lo <= hi, found lo={lo}, hi={hi}")
    return lo, hi


# --------------------------------------------------------------------------
# Quantize and fake-quantize.
# --------------------------------------------------------------------------


def _codes(x, scale, zero_point, qmin, qmax):
    """Float64 codes ``clip(rint(x / scale) + zero_point, qmin, qmax)``; no validation."""
    return np.clip(np.rint(x / scale) + zero_point, qmin, qmax)


def _fake_quantize(x, scale, zero_point, qmin, qmax):
    return (_codes(x, scale, zero_point, qmin, qmax) - zero_point) * scale


def finite_float_array(x, name: str, where: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValidationError(f"{where}: {name} must be real numbers, found dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = arr[~finite]
        raise ValidationError(f"{where}: {name} must be finite, found {bad.size} non-finite value(s), e.g. {bad[0]}")
    return arr


def _checked_quantizer(x, scale, zero_point, qmin, qmax, axis, where):
    """Validated float64 ``x`` and ``scale``/``zero_point`` shaped to broadcast along ``axis``."""
    x = finite_float_array(x, "x", where)
    for name, value in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValidationError(f"{where}: {name} must be an integer, found {value!r}")
    if not qmin < qmax:
        raise ValidationError(f"{where}: need qmin < qmax, found qmin={qmin}, qmax={qmax}")
    scale = np.asarray(scale)
    zero_point = np.asarray(zero_point)
    if scale.dtype.kind not in "fiu" or not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValidationError(f"{where}: scale must be finite and > 0, found {scale}")
    if zero_point.dtype.kind not in "iu":
        raise ValidationError(f"{where}: zero_point must be integers, found dtype {zero_point.dtype}")
    if np.any(zero_point < qmin) or np.any(zero_point > qmax):
        raise ValidationError(f"{where}: zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}], found {zero_point}")
    if scale.ndim > 1 or zero_point.ndim > 1:
        raise ValidationError(f"{where}: scale and zero_point must be scalars or 1-D per-channel arrays, "
                              f"found shapes {scale.shape} and {zero_point.shape}")
    channels = max(scale.size, zero_point.size)
    if channels > 1:
        if not -x.ndim <= axis < x.ndim:
            raise ValidationError(f"{where}: axis {axis} is out of range for x of shape {x.shape}")
        axis %= x.ndim
        for name, value in (("scale", scale), ("zero_point", zero_point)):
            if value.size not in (1, x.shape[axis]):
                raise ValidationError(f"{where}: {name} has {value.size} entries but x has {x.shape[axis]} "
                                      f"channels along axis {axis} (shape {x.shape})")
        shape = (-1,) + (1,) * (x.ndim - axis - 1)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    else:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return x, scale.astype(np.float64), zero_point.astype(np.int64)


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int, *, axis: int = 0) -> np.ndarray:
    """Quantize then dequantize: ``(clip(rint(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    ``rint`` rounds ties to even.  Computed in float64; returned as ``x``'s
    dtype when that is a float type, float64 otherwise.

    Parameters
    ----------
    x : array of float
        Finite.
    scale, zero_point : scalar or 1-D array
        Positive finite scales; integer zero points in ``[qmin, qmax]``.  A 1-D
        array of ``C > 1`` entries is per channel along ``axis``.
    qmin, qmax : int
        Inclusive code range, ``qmin < qmax``.
    axis : int
        Channel axis of ``x`` for per-channel parameters.
    """
    where = "fake_quantize"
    x = np.asarray(x)
    out_dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    x, scale, zero_point = _checked_quantizer(x, scale, zero_point, qmin, qmax, axis, where)
    return _fake_quantize(x, scale, zero_point, qmin, qmax).astype(out_dtype, copy=False)


def quantize(x, scale, zero_point, qmin: int, qmax: int, dtype, *, axis: int = 0) -> np.ndarray:
    """Integer codes ``clip(rint(x / scale) + zero_point, qmin, qmax)`` as ``dtype`` (ties to even).

    Parameters as :func:`fake_quantize`; ``dtype`` is an integer dtype that
    holds ``[qmin, qmax]``.
    """
    where = "quantize"
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise ValidationError(f"{where}: dtype must be an integer dtype, found {dtype}")
    x, scale, zero_point = _checked_quantizer(x, scale, zero_point, qmin, qmax, axis, where)
    info = np.iinfo(dtype)
    if qmin < info.min or qmax > info.max:
        raise ValidationError(f"{where}: dtype {dtype} holds [{info.min}, {info.max}], "
                              f"not [qmin, qmax] = [{qmin}, {qmax}]")
    return _codes(x, scale, zero_point, qmin, qmax).astype(dtype)


# --------------------------------------------------------------------------
# Grid search of a clipping range (white paper §3.1, MSE and cross-entropy based).
# --------------------------------------------------------------------------


def search_range(loss: Callable, lo: np.ndarray, hi: np.ndarray, fmt: QuantFormat) -> tuple[np.ndarray, np.ndarray]:
    """The clipping range among shrunk copies of ``[lo, hi]`` (one per row) with the least ``loss``.

    ``loss(cand_lo, cand_hi)`` takes ``[C, K]`` candidate ranges and returns
    ``[C, K]`` losses.  Candidates shrink the range by ``k / GRID_STEPS`` for
    ``k = 1..GRID_STEPS``; fraction 1 is the min/max range itself, so the
    result never has a larger loss than min/max.  Symmetric formats shrink
    ``±max(|lo|, |hi|)``.  Asymmetric formats shrink both ends together, then
    each end on its own with the other held (one pass of coordinate descent).
    Among equal losses the widest candidate wins.
    """
    fractions = np.arange(1, GRID_STEPS + 1) / GRID_STEPS
    lo, hi = np.minimum(lo, 0.0)[:, None], np.maximum(hi, 0.0)[:, None]
    rows = np.arange(lo.shape[0])

    def best(cand_lo, cand_hi):
        losses = loss(cand_lo, cand_hi)[:, ::-1]  # reversed, so argmin takes the widest of equal losses
        pick = GRID_STEPS - 1 - np.argmin(losses, axis=1)
        return cand_lo[rows, pick], cand_hi[rows, pick]

    if fmt.symmetric:
        magnitude = np.maximum(-lo, hi) * fractions
        return best(-magnitude, magnitude)
    best_lo, best_hi = best(lo * fractions, hi * fractions)
    best_lo, _ = best(lo * fractions, np.broadcast_to(best_hi[:, None], (lo.shape[0], GRID_STEPS)))
    _, best_hi = best(np.broadcast_to(best_lo[:, None], (lo.shape[0], GRID_STEPS)), hi * fractions)
    return best_lo, best_hi


def _squared_error_antiderivative(v, qmin: int, qmax: int):
    """An antiderivative ``F(v)`` of ``(Q(v) - v)**2``, ``Q(v) = clip(round(v), qmin, qmax)``, codes as reals.

    ``F(qmin - 1/2) = qmin / 12``.  Inside ``[qmin - 1/2, qmax + 1/2]`` the error is a sawtooth: each unit cell
    adds 1/12, and ``r = v - round(v)`` in [-1/2, 1/2) adds ``(r**3 + 1/8) / 3``.
    Outside, the error is the distance to the end code: ``(v - qmax)**3 / 3``.
    """
    inside = np.clip(v, qmin - 0.5, qmax + 0.5)
    cell = np.floor(inside + 0.5)
    r = inside - cell
    sawtooth = cell / 12 + (r**3 + 0.125) / 3
    below = np.minimum(v - (qmin - 0.5), 0.0)  # <= 0
    above = np.maximum(v - (qmax + 0.5), 0.0)  # >= 0
    # Beyond the ends: integral of (u - qmax)**2 from qmax + 1/2, and of (qmin - u)**2 up to qmin - 1/2.
    return sawtooth + ((above + 0.5) ** 3 - 0.125) / 3 - ((0.5 - below) ** 3 - 0.125) / 3


def histogram_squared_error(stats, fmt: QuantFormat):
    """Loss for :func:`search_range`: the expected squared error of the quantizer over the histogram.

    Each bin's count is spread uniformly over the bin; the mean squared error
    of a bin is ``scale**2 * (F(v1) - F(v0)) / (v1 - v0)`` with ``v`` the bin
    edges in code units and ``F`` :func:`_squared_error_antiderivative`.
    """
    nonzero = np.flatnonzero(stats.histogram)
    counts = stats.histogram[nonzero].astype(np.float64)
    edges = stats.bin_edges
    lower, upper = edges[nonzero], edges[nonzero + 1]

    def loss(cand_lo, cand_hi):
        scale, zero_point = fmt.params(cand_lo, cand_hi)
        scale, zero_point = scale.reshape(-1, 1), zero_point.reshape(-1, 1)
        v0, v1 = lower / scale + zero_point, upper / scale + zero_point
        mean_code_error = (_squared_error_antiderivative(v1, fmt.qmin, fmt.qmax)
                           - _squared_error_antiderivative(v0, fmt.qmin, fmt.qmax)) / (v1 - v0)
        return ((mean_code_error @ counts) * scale[:, 0] ** 2 / counts.sum()).reshape(cand_lo.shape)

    return loss


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(rows: np.ndarray, fmt: QuantFormat):
    """Loss for :func:`search_range`: mean cross-entropy of softmax(fake-quantized rows) against softmax(rows)."""
    probabilities = np.exp(_log_softmax(rows))

    def loss(cand_lo, cand_hi):
        scale, zero_point = fmt.params(cand_lo, cand_hi)
        out = np.empty(scale.shape)
        for idx in np.ndindex(scale.shape):
            quantized = _fake_quantize(rows, scale[idx], zero_point[idx], fmt.qmin, fmt.qmax)
            out[idx] = -np.mean(np.sum(probabilities * _log_softmax(quantized), axis=-1))
        return out

    return loss


# --------------------------------------------------------------------------
# Weights.
# --------------------------------------------------------------------------


def _weight_squared_error(channels: np.ndarray, fmt: QuantFormat):
    """Loss for :func:`search_range`: per-channel mean squared error of the fake-quantized weights."""

    def loss(cand_lo, cand_hi):
        scale, zero_point = fmt.params(cand_lo, cand_hi)
        out = np.empty(scale.shape)
        for k in range(scale.shape[1]):
            s, z = scale[:, k, None], zero_point[:, k, None]
            out[:, k] = np.mean((_fake_quantize(channels, s, z, fmt.qmin, fmt.qmax) - channels) ** 2, axis=1)
        return out

    return loss


_WEIGHT_RANGES = {
    "minmax": lambda channels, lo, hi, fmt: (lo, hi),
    "mse": lambda channels, lo, hi, fmt: search_range(_weight_squared_error(channels, fmt), lo, hi, fmt),
}
WEIGHT_METHODS = tuple(_WEIGHT_RANGES)


def quantize_weights(w, bits: int, signed: bool, symmetric: bool, narrow_range: bool, per_channel: bool, axis: int = 0,
                     power_of_two: bool = False, method: str = "minmax") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a weight tensor per tensor or per output channel (white paper §2.4.2, §3.1).

    Parameters
    ----------
    w : array of float
        Finite, not empty.
    bits, signed, symmetric, narrow_range, power_of_two
        The quantizer format, as in :func:`quantization_params`.
    per_channel : bool
        One scale per index of ``axis`` (e.g. axis 0 of an OHWI convolution
        weight) instead of one for the tensor.
    method : str
        ``"minmax"``: each channel's min and max.  ``"mse"``: per channel, the
        clipping range (grid search, see :data:`GRID_STEPS`) that minimises the
        squared error of the channel's own weights; never worse than min/max.

    Returns
    -------
    codes : array
        ``w``'s shape, in the storage dtype of ``bits``/``signed`` (int8,
        uint8, int16, uint16).
    scale : float64 array
        ``[C]`` per channel or ``[1]`` per tensor.
    zero_point : int64 array
        Same shape as ``scale``.
    """
    where = "quantize_weights"
    fmt = QuantFormat.checked(bits, signed, symmetric, narrow_range, power_of_two, where)
    if method not in _WEIGHT_RANGES:
        raise ValidationError(f"{where}: method must be one of {', '.join(WEIGHT_METHODS)}, found {method!r}")
    w = finite_float_array(w, "weights", where)
    if w.size == 0:
        raise ValidationError(f"{where}: weights are empty (shape {w.shape})")
    if per_channel:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -w.ndim <= axis < w.ndim:
            raise ValidationError(f"{where}: axis {axis!r} is out of range for weights of shape {w.shape}")
        channels = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    else:
        channels = w.reshape(1, -1)
    lo, hi = _WEIGHT_RANGES[method](channels, channels.min(axis=1), channels.max(axis=1), fmt)
    scale, zero_point = fmt.params(lo, hi)
    if not np.all(np.isfinite(scale)):
        raise ValidationError(f"{where}: weight range [{lo.min()}, {hi.max()}] is too wide for float64")
    codes = _codes(channels, scale[:, None], zero_point[:, None], fmt.qmin, fmt.qmax)
    if per_channel:
        codes = np.moveaxis(codes.reshape(np.moveaxis(w, axis, 0).shape), 0, axis)
    return codes.reshape(w.shape).astype(storage_dtype(fmt.bits, fmt.signed)), scale, zero_point
