"""Calibration: from float data to quantization ranges and parameters (white paper §3.1).

This is the float side of the converter.  It watches tensors while a float model
runs on calibration data, chooses a clipping range ``(lo, hi)`` per tensor, and
turns a range into a ``(scale, zero_point)`` pair for the profile's quantizer.
Nothing here runs on the integer graph.

Pipeline::

    stats = calibrate(run_batch, data, ["conv1", "logits"], keep_rows={"logits": 512})
    lo, hi = choose_range(stats["conv1"], "mse", bits=8, signed=True, symmetric=False)
    scale, zero_point = quantization_params(lo, hi, 8, True, False)

and, for weights, :func:`quantize_weights` does all three steps at once.

Conventions
-----------
Quantizer (white paper eq. 2-4)::

    code = clip(rint(x / scale) + zero_point, qmin, qmax)      rint: ties to even
    x_hat = (code - zero_point) * scale

*Signed* codes are ``[-2**(b-1), 2**(b-1) - 1]``; ``narrow_range`` drops the
most negative one (TFLite's int8 weights in [-127, 127]); it does nothing to an
unsigned range.  Note that :meth:`intsim.profiles.Profile.weight_range` narrows
only symmetric weights: pass ``narrow_range=profile.weight_narrow_range and
profile.weight_symmetric`` to match it.

*Symmetric* quantizers have a zero point fixed by the format, not by the data:
0 for signed codes and ``2**(b-1)`` for unsigned codes (onnxruntime's uint8
symmetric convention, and the one :mod:`intsim.examples` uses).  Both map
``±max(|lo|, |hi|)`` to ``zero_point ± (2**(b-1) - 1)``, so the scale is
``max(|lo|, |hi|) / (2**(b-1) - 1)`` in both cases.  The white paper's
"unsigned symmetric" quantizer for one-tailed data (zero point 0) is what the
asymmetric quantizer gives by itself when ``lo >= 0``.

A range that contains only 0 gets the scale :data:`DEGENERATE_SCALE` (2**-23,
float32's epsilon and the floor PyTorch's observers use): a power of two, so it
is also valid with ``power_of_two``, and large enough that a later requantization
multiplier ``s_in * s_w / s_out`` stays in range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from intsim.errors import ValidationError
from intsim.progress import Progress, progress_enabled
from intsim.codes import code_range as _bits_range, storage_dtype

DEGENERATE_SCALE = 2.0**-23
HISTOGRAM_BINS = 2048
GRID_STEPS = 100  # candidates per grid search: clipping fractions 1/100, 2/100, ..., 1



# --------------------------------------------------------------------------
# The quantizer format and its parameters.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Format:
    """A validated quantizer format; ``params`` is the one vectorised rule from range to (scale, zero point)."""

    bits: int
    signed: bool
    symmetric: bool
    narrow_range: bool
    power_of_two: bool

    @classmethod
    def checked(cls, bits, signed, symmetric, narrow_range, power_of_two, where: str) -> "_Format":
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
    fmt = _Format.checked(bits, signed, False, narrow_range, False, "code_range")
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
    fmt = _Format.checked(bits, signed, symmetric, narrow_range, power_of_two, where)
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


def _finite_float_array(x, name: str, where: str) -> np.ndarray:
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
    x = _finite_float_array(x, "x", where)
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


def _search_range(loss: Callable, lo: np.ndarray, hi: np.ndarray, fmt: _Format) -> tuple[np.ndarray, np.ndarray]:
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


def _histogram_squared_error(stats: "TensorStats", fmt: _Format):
    """Loss for :func:`_search_range`: the expected squared error of the quantizer over the histogram.

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


def _softmax_cross_entropy(rows: np.ndarray, fmt: _Format):
    """Loss for :func:`_search_range`: mean cross-entropy of softmax(fake-quantized rows) against softmax(rows)."""
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


def _weight_squared_error(channels: np.ndarray, fmt: _Format):
    """Loss for :func:`_search_range`: per-channel mean squared error of the fake-quantized weights."""

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
    "mse": lambda channels, lo, hi, fmt: _search_range(_weight_squared_error(channels, fmt), lo, hi, fmt),
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
    fmt = _Format.checked(bits, signed, symmetric, narrow_range, power_of_two, where)
    if method not in _WEIGHT_RANGES:
        raise ValidationError(f"{where}: method must be one of {', '.join(WEIGHT_METHODS)}, found {method!r}")
    w = _finite_float_array(w, "weights", where)
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


# --------------------------------------------------------------------------
# Streaming statistics.
# --------------------------------------------------------------------------


class TensorStats:
    """Statistics of one tensor over a stream of batches, in memory that does not grow with the stream.

    Attributes
    ----------
    name : str
        Used in error messages.
    count : int
        Number of values seen.
    min, max : float or None
        Exact extremes (None before the first value).
    histogram : int64 array
        ``bins`` counts over :attr:`bin_edges`.  The bin count is fixed; the
        range grows.  When a batch falls outside it, the range is widened to
        cover the batch by an integer factor ``k >= 2`` of the bin width, its
        lower edge moved down by a whole number of old bins, so that every old
        bin falls inside exactly one new bin and the old counts are merged
        without splitting.  The histogram is therefore the exact histogram of
        all values on the final grid, up to values within rounding of a bin
        edge (the moved edges are computed in float64).  The grid covers at
        most twice the data's range, so at least ``bins / 2`` bins span it.
    rows : float64 array or None
        With ``keep_rows=N``: a uniform random sample (reservoir sampling,
        algorithm R, seeded) of up to ``N`` rows of the tensor, a row being its
        last axis (the class axis of ``[batch, classes]`` logits).  The first
        ``N`` rows are kept as they come; row ``t > N`` replaces a random kept
        row with probability ``N / t``.  None without ``keep_rows``.
    """

    def __init__(self, name: str = "tensor", *, bins: int = HISTOGRAM_BINS, keep_rows: int | None = None,
                 seed: int = 0):
        where = f"TensorStats {name!r}"
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise ValidationError(f"{where}: bins must be an integer >= 2, found {bins!r}")
        if keep_rows is not None and (isinstance(keep_rows, bool) or not isinstance(keep_rows, (int, np.integer))
                                      or keep_rows < 1):
            raise ValidationError(f"{where}: keep_rows must be None or an integer >= 1, found {keep_rows!r}")
        self.name = name
        self.bins = int(bins)
        self.keep_rows = None if keep_rows is None else int(keep_rows)
        self.count = 0
        self.min: float | None = None
        self.max: float | None = None
        self.histogram = np.zeros(self.bins, np.int64)
        self._origin = 0.0  # bin i covers [origin + i * width, origin + (i + 1) * width)
        self._width = 0.0
        self._rows: np.ndarray | None = None
        self._rows_kept = 0
        self.rows_seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def bin_edges(self) -> np.ndarray:
        return self._origin + self._width * np.arange(self.bins + 1)

    @property
    def rows(self) -> np.ndarray | None:
        return None if self._rows is None else self._rows[: self._rows_kept]

    @property
    def nbytes(self) -> int:
        """Bytes held by the statistics' arrays: fixed by ``bins`` and ``keep_rows``."""
        return self.histogram.nbytes + (0 if self._rows is None else self._rows.nbytes)

    def update(self, x) -> None:
        """Add a batch of values (any shape; with ``keep_rows``, at least 2-D)."""
        where = f"TensorStats {self.name!r}"
        x = _finite_float_array(x, "values", where)
        if self.keep_rows is not None:
            if x.ndim < 2:
                raise ValidationError(f"{where}: keep_rows needs rows of at least 2-D values "
                                      f"([batch, classes]), found shape {x.shape}")
            if self._rows is not None and x.shape[-1] != self._rows.shape[1]:
                raise ValidationError(f"{where}: rows of {x.shape[-1]} values after rows of {self._rows.shape[1]}")
        if x.size == 0:
            return
        low, high = float(x.min()), float(x.max())
        if self.count == 0:
            self._start_grid(low, high)
        elif low < self._origin or high > self._origin + self.bins * self._width:
            self._grow(low, high)
        index = np.clip(np.floor((x - self._origin) / self._width), 0, self.bins - 1).astype(np.int64)
        self.histogram += np.bincount(index.reshape(-1), minlength=self.bins)
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        self.count += x.size
        if self.keep_rows is not None:
            self._sample_rows(x.reshape(-1, x.shape[-1]))

    def _too_wide(self, low: float, high: float) -> ValidationError:
        if self.min is not None:
            low, high = min(low, self.min), max(high, self.max)
        return ValidationError(f"TensorStats {self.name!r}: values from {low} to {high} span too many bin widths "
                               f"for a float64 histogram")

    def _start_grid(self, low: float, high: float) -> None:
        # A single value still needs a positive width, and one that float64 can add to the origin.
        span = max(high - low, max(abs(low), abs(high)) * 2.0**-20, 2.0**-40)
        if not math.isfinite(span):
            raise self._too_wide(low, high)
        self._origin, self._width = low, span / self.bins

    def _grow(self, low: float, high: float) -> None:
        width, bins = self._width, self.bins
        low, high = min(low, self._origin), max(high, self._origin + bins * width)
        # The new grid starts `below` old bins under the old origin and has `factor` old bins per new bin, so every
        # old bin lands in one new bin.  `factor` is the least that covers [low, high]; `below` centres the spare room.
        old_bins_below, old_bins_above = (self._origin - low) / width, (high - self._origin) / width
        if not math.isfinite(old_bins_below + old_bins_above):
            raise self._too_wide(low, high)
        least_below = math.ceil(old_bins_below)
        factor = max(math.ceil((least_below + old_bins_above) / bins), 2)
        # most_below <= (factor - 1) * bins keeps every old bin's new index, (i + below) // factor, under bins.
        most_below = min(factor * bins + math.floor(-old_bins_above), (factor - 1) * bins)
        below = max((least_below + most_below) // 2, least_below)
        new_index = np.fromiter(((i + below) // factor for i in range(bins)), np.int64, bins)
        merged = np.zeros(bins, np.int64)
        np.add.at(merged, new_index, self.histogram)
        self.histogram = merged
        self._origin -= below * width
        self._width *= factor

    def _sample_rows(self, rows: np.ndarray) -> None:
        if self._rows is None:
            self._rows = np.empty((self.keep_rows, rows.shape[1]))
        fill = min(self.keep_rows - self._rows_kept, len(rows))
        self._rows[self._rows_kept : self._rows_kept + fill] = rows[:fill]
        self._rows_kept += fill
        seen = self.rows_seen + np.arange(fill, len(rows))  # 0-based stream index of each later row
        slots = self._rng.integers(0, seen + 1)
        for i in np.flatnonzero(slots < self.keep_rows):
            self._rows[slots[i]] = rows[fill + i]
        self.rows_seen += len(rows)


# --------------------------------------------------------------------------
# Range setting (white paper §3.1).
# --------------------------------------------------------------------------


def _symmetric(lo: float, hi: float, fmt: _Format) -> tuple[float, float]:
    if fmt.symmetric:
        magnitude = max(-lo, hi, 0.0)
        return -magnitude, magnitude
    return lo, hi


def _range_minmax(stats, fmt, percentile, where):
    return _symmetric(stats.min, stats.max, fmt)


def _inverse_cdf(breakpoints: np.ndarray, cdf: np.ndarray, target: float) -> float:
    """The least ``x`` with ``cdf(x) >= target``, ``cdf`` piecewise linear through ``(breakpoints, cdf)``."""
    i = int(np.searchsorted(cdf, target, side="left"))
    if i == 0:
        return float(breakpoints[0])
    i = min(i, len(cdf) - 1)
    step = cdf[i] - cdf[i - 1]
    fraction = 0.0 if step == 0 else (target - cdf[i - 1]) / step
    return float(breakpoints[i - 1] + fraction * (breakpoints[i] - breakpoints[i - 1]))


def _range_percentile(stats, fmt, percentile, where):
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.integer, np.floating)) \
            or not 50 < percentile <= 100:
        raise ValidationError(f"{where}: percentile must be a number in (50, 100], found {percentile!r}")
    # Values are taken as uniform within each bin, so the CDF is linear between bin edges.
    edges = stats.bin_edges
    cdf = np.concatenate([[0], np.cumsum(stats.histogram)]).astype(np.float64)
    share = percentile / 100 * stats.count
    if fmt.symmetric:
        # mass(a) = CDF(a) - CDF(-a) is linear between the |edges|, so the same inversion applies.
        magnitudes = np.unique(np.concatenate([[0.0], np.abs(edges)]))
        mass = np.interp(magnitudes, edges, cdf) - np.interp(-magnitudes, edges, cdf)
        magnitude = min(_inverse_cdf(magnitudes, np.maximum.accumulate(mass), share), max(-stats.min, stats.max))
        return -magnitude, magnitude
    lo = _inverse_cdf(edges, cdf, stats.count - share)
    hi = _inverse_cdf(edges, cdf, share)
    return min(max(lo, stats.min), stats.max), min(max(hi, stats.min), stats.max)


def _range_mse(stats, fmt, percentile, where):
    lo, hi = _search_range(_histogram_squared_error(stats, fmt), np.array([stats.min]), np.array([stats.max]), fmt)
    return float(lo[0]), float(hi[0])


def _range_cross_entropy(stats, fmt, percentile, where):
    if stats.rows is None or len(stats.rows) == 0:
        raise ValidationError(f"{where}: cross_entropy needs rows of logits; collect them with "
                              f"TensorStats(keep_rows=N) or calibrate(keep_rows={{{stats.name!r}: N}})")
    loss = _softmax_cross_entropy(stats.rows, fmt)
    lo, hi = _search_range(loss, np.array([stats.min]), np.array([stats.max]), fmt)
    return float(lo[0]), float(hi[0])


_RANGE_METHODS = {
    "minmax": _range_minmax,
    "percentile": _range_percentile,
    "mse": _range_mse,
    "cross_entropy": _range_cross_entropy,
}
RANGE_METHODS = tuple(_RANGE_METHODS)


def choose_range(stats: TensorStats, method: str, bits: int, signed: bool, symmetric: bool, *,
                 percentile: float = 99.99, narrow_range: bool = False,
                 power_of_two: bool = False) -> tuple[float, float]:
    """The clipping range ``(lo, hi)`` of a tensor's quantizer (white paper §3.1).

    Methods (:data:`RANGE_METHODS`):

    ``"minmax"``
        The observed min and max.
    ``"percentile"``
        The ``100 - percentile`` and ``percentile`` percentiles, read from the
        histogram with values uniform within each bin; symmetric formats take
        the ``percentile`` percentile of ``|x|``.  ``percentile`` in (50, 100].
    ``"mse"``
        Grid search (:data:`GRID_STEPS` shrink fractions of the min/max range,
        see :func:`_search_range`) of the range with the least expected squared
        error of the actual quantizer (``bits``, signedness, symmetry, narrow
        range, power-of-two scale) over the histogram: rounding noise inside,
        clipping error outside.  Never worse than min/max by that measure.
    ``"cross_entropy"``
        For logits feeding a softmax: the same grid search, minimising the
        mean cross-entropy between softmax of the float rows kept by
        :class:`TensorStats` (``keep_rows``) and softmax of their
        fake-quantized copies.

    Symmetric formats get a symmetric range ``(-a, a)``.  Pass the result to
    :func:`quantization_params` with the same format.
    """
    where = f"choose_range {stats.name!r}" if isinstance(stats, TensorStats) else "choose_range"
    if not isinstance(stats, TensorStats):
        raise ValidationError(f"{where}: stats must be a TensorStats, found {type(stats).__name__}")
    if method not in _RANGE_METHODS:
        raise ValidationError(f"{where}: method must be one of {', '.join(RANGE_METHODS)}, found {method!r}")
    fmt = _Format.checked(bits, signed, symmetric, narrow_range, power_of_two, where)
    if stats.count == 0:
        raise ValidationError(f"{where}: no values were observed")
    return _RANGE_METHODS[method](stats, fmt, percentile, where)


def bn_range(gamma, beta, n: float = 6.0, *, relu: bool = False, relu6: bool = False) -> tuple[float, float]:
    """Data-free range of a batch-normalised pre-activation (white paper §3.1, §4 "BN-based range setting").

    Channel ``c`` is taken to lie in ``beta[c] ± n * |gamma[c]|``; the per-tensor
    range is ``(min(beta - n|gamma|), max(beta + n|gamma|))``.  ``relu`` clips
    it to ``[0, inf)`` and ``relu6`` (which implies ``relu``) to ``[0, 6]``.
    """
    where = "bn_range"
    gamma = _finite_float_array(gamma, "gamma", where)
    beta = _finite_float_array(beta, "beta", where)
    if gamma.ndim != 1 or gamma.shape != beta.shape or gamma.size == 0:
        raise ValidationError(f"{where}: gamma and beta must be 1-D arrays of the same non-zero length, "
                              f"found shapes {gamma.shape} and {beta.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)) or not 0 < n < math.inf:
        raise ValidationError(f"{where}: n must be a finite number > 0, found {n!r}")
    lo = float(np.min(beta - n * np.abs(gamma)))
    hi = float(np.max(beta + n * np.abs(gamma)))
    if relu or relu6:
        lo, hi = max(lo, 0.0), max(hi, 0.0)
    if relu6:
        lo, hi = min(lo, 6.0), min(hi, 6.0)
    return lo, hi


# --------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------


def calibrate(run_batch: Callable[[np.ndarray], Mapping], data: np.ndarray, tensors, *, batch_size: int = 64,
              keep_rows: Mapping[str, int] | None = None, progress: bool = True) -> dict[str, TensorStats]:
    """Run a float model over calibration data and collect :class:`TensorStats` per tensor.

    Parameters
    ----------
    run_batch : callable
        ``run_batch(batch) -> {name: float array}``; extra names are ignored.
    data : numpy array
        Samples along axis 0; an ``np.memmap`` is read one batch at a time.
    tensors : list of str
        The tensor names to watch.
    batch_size : int
        Samples per call of ``run_batch`` (the last batch may be smaller).
    keep_rows : dict, optional
        ``{name: N}``: keep a sample of ``N`` rows of these tensors for the
        ``"cross_entropy"`` range method.
    progress : bool
        Draw a progress bar on stderr when stderr is a terminal or
        ``INTSIM_PROGRESS=1`` (``INTSIM_PROGRESS=0`` turns it off).

    Returns
    -------
    dict of str to TensorStats
    """
    where = "calibrate"
    if not isinstance(data, np.ndarray):
        raise ValidationError(f"{where}: data must be a numpy array (or np.memmap), found {type(data).__name__}")
    if data.ndim == 0 or len(data) == 0:
        raise ValidationError(f"{where}: data has no samples (shape {data.shape})")
    if isinstance(tensors, str) or not all(isinstance(t, str) for t in tensors):
        raise ValidationError(f"{where}: tensors must be a list of tensor names, found {tensors!r}")
    tensors = list(tensors)
    if not tensors or len(set(tensors)) != len(tensors):
        raise ValidationError(f"{where}: tensors must be distinct names, at least one, found {tensors!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValidationError(f"{where}: batch_size must be an integer >= 1, found {batch_size!r}")
    keep_rows = {} if keep_rows is None else keep_rows
    if not isinstance(keep_rows, Mapping) or not set(keep_rows) <= set(tensors):
        raise ValidationError(f"{where}: keep_rows must map watched tensor names to row counts, found {keep_rows!r} "
                              f"for tensors {tensors}")
    stats = {name: TensorStats(name, keep_rows=keep_rows.get(name)) for name in tensors}
    total = len(data)
    bar = Progress(total, progress_enabled(progress))
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        outputs = run_batch(np.asarray(data[start:stop]))
        if not isinstance(outputs, Mapping):
            raise ValidationError(f"{where}: run_batch must return a dict of tensor name to array, "
                                  f"found {type(outputs).__name__} for samples {start}:{stop}")
        for name in tensors:
            if name not in outputs:
                raise ValidationError(f"{where}: run_batch returned no tensor {name!r} for samples {start}:{stop}; "
                                      f"it returned {sorted(outputs)}")
            try:
                stats[name].update(outputs[name])
            except ValidationError as exc:
                raise ValidationError(f"{where}, samples {start}:{stop}: {exc}") from None
        bar.update(stop)
    return stats
