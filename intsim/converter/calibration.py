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

import numpy as np

from intsim.errors import ValidationError
from intsim.progress import Progress, progress_enabled

from intsim.converter.quantizer import (
    QuantFormat,
    finite_float_array,
    histogram_squared_error,
    search_range,
    softmax_cross_entropy,
)

HISTOGRAM_BINS = 2048


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
    histogram : bool
        ``False`` keeps only ``count``, ``min`` and ``max`` (and the rows):
        enough for the ``"minmax"`` and ``"cross_entropy"`` range methods, in
        one pass over each batch at its own dtype; :attr:`histogram` is then
        None.
    """

    def __init__(self, name: str = "tensor", *, bins: int = HISTOGRAM_BINS, keep_rows: int | None = None,
                 seed: int = 0, histogram: bool = True):
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
        self.histogram = np.zeros(self.bins, np.int64) if histogram else None
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
        return (0 if self.histogram is None else self.histogram.nbytes) + (0 if self._rows is None else self._rows.nbytes)

    def update(self, x) -> None:
        """Add a batch of values (any shape; with ``keep_rows``, at least 2-D)."""
        where = f"TensorStats {self.name!r}"
        if self.histogram is None and self.keep_rows is None:
            self._update_extremes(x, where)
            return
        x = finite_float_array(x, "values", where)
        if self.keep_rows is not None:
            if x.ndim < 2:
                raise ValidationError(f"{where}: keep_rows needs rows of at least 2-D values "
                                      f"([batch, classes]), found shape {x.shape}")
            if self._rows is not None and x.shape[-1] != self._rows.shape[1]:
                raise ValidationError(f"{where}: rows of {x.shape[-1]} values after rows of {self._rows.shape[1]}")
        if x.size == 0:
            return
        low, high = float(x.min()), float(x.max())
        if self.histogram is not None:
            self._add_to_histogram(x, low, high)
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        self.count += x.size
        if self.keep_rows is not None:
            self._sample_rows(x.reshape(-1, x.shape[-1]))

    def _add_to_histogram(self, x: np.ndarray, low: float, high: float) -> None:
        if self.count == 0:
            self._start_grid(low, high)
        elif low < self._origin or high > self._origin + self.bins * self._width:
            self._grow(low, high)
        index = np.clip(np.floor((x - self._origin) / self._width), 0, self.bins - 1).astype(np.int64)
        self.histogram += np.bincount(index.reshape(-1), minlength=self.bins)

    def _update_extremes(self, x, where: str) -> None:
        # min / max at the batch's own dtype (exact: the extremes of float32 values are float32 values), one
        # pass each; a NaN or an infinity shows in them, and then the full check names it.
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiub" or arr.size == 0:
            finite_float_array(arr, "values", where)
            return
        low, high = float(arr.min()), float(arr.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            finite_float_array(arr, "values", where)
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        self.count += arr.size

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


def _symmetric(lo: float, hi: float, fmt: QuantFormat) -> tuple[float, float]:
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
    lo, hi = search_range(histogram_squared_error(stats, fmt), np.array([stats.min]), np.array([stats.max]), fmt)
    return float(lo[0]), float(hi[0])


def _range_cross_entropy(stats, fmt, percentile, where):
    if stats.rows is None or len(stats.rows) == 0:
        raise ValidationError(f"{where}: cross_entropy needs rows of logits; collect them with "
                              f"TensorStats(keep_rows=N) or calibrate(keep_rows={{{stats.name!r}: N}})")
    loss = softmax_cross_entropy(stats.rows, fmt)
    lo, hi = search_range(loss, np.array([stats.min]), np.array([stats.max]), fmt)
    return float(lo[0]), float(hi[0])


_RANGE_METHODS = {
    "minmax": _range_minmax,
    "percentile": _range_percentile,
    "mse": _range_mse,
    "cross_entropy": _range_cross_entropy,
}
RANGE_METHODS = tuple(_RANGE_METHODS)
HISTOGRAM_METHODS = ("percentile", "mse")  # the methods that read TensorStats.histogram


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
        see :func:`search_range`) of the range with the least expected squared
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
    fmt = QuantFormat.checked(bits, signed, symmetric, narrow_range, power_of_two, where)
    if stats.count == 0:
        raise ValidationError(f"{where}: no values were observed")
    if stats.histogram is None and method in HISTOGRAM_METHODS:
        raise ValidationError(f"{where}: method {method!r} reads a histogram; these statistics kept none "
                              "(TensorStats(histogram=False))")
    return _RANGE_METHODS[method](stats, fmt, percentile, where)


# Ranges a function's outputs cannot leave.  An observed range is intersected with them: a float executor
# may return a value one float32 step outside (onnxruntime's Tanh gives 1.0000001), and at an exact
# [-1, 1] the asymmetric zero point round(-128 + 127.5) is a tie that such a step decides.
CODOMAINS = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "Tanh": (-1.0, 1.0)}


def bn_range(gamma, beta, n: float = 6.0, *, relu: bool = False, relu6: bool = False) -> tuple[float, float]:
    """Data-free range of a batch-normalised pre-activation (white paper §3.1, §4 "BN-based range setting").

    Channel ``c`` is taken to lie in ``beta[c] ± n * |gamma[c]|``; the per-tensor
    range is ``(min(beta - n|gamma|), max(beta + n|gamma|))``.  ``relu`` clips
    it to ``[0, inf)`` and ``relu6`` (which implies ``relu``) to ``[0, 6]``.
    """
    where = "bn_range"
    gamma = finite_float_array(gamma, "gamma", where)
    beta = finite_float_array(beta, "beta", where)
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


def reused_statistics(statistics, tensors, histogram: bool, keep_rows: Mapping[str, int]) -> dict[str, TensorStats]:
    """Statistics of an earlier :func:`calibrate` run, checked to serve another: one :class:`TensorStats` per
    watched tensor, with a histogram where a range method reads one and the kept rows where ``keep_rows``
    asks for them (``"cross_entropy"``).  The same float graph and calibration data are the caller's promise."""
    where = "statistics"
    if not isinstance(statistics, Mapping):
        raise ValidationError(f"{where}: expected a dict of tensor name to TensorStats (plan.statistics), "
                              f"found {type(statistics).__name__}")
    missing = [t for t in tensors if not isinstance(statistics.get(t), TensorStats)]
    if missing:
        raise ValidationError(f"{where}: no TensorStats for the quantization point(s) {missing[:5]}; "
                              f"found {sorted(statistics)[:5]} (statistics of another model?)")
    if histogram and any(statistics[t].histogram is None for t in tensors):
        raise ValidationError(f"{where}: the range methods read histograms; these statistics kept none")
    if any(statistics[t].rows is None for t in keep_rows):
        raise ValidationError(f"{where}: the cross_entropy range method reads kept rows of {sorted(keep_rows)}; "
                              "these statistics kept none")
    return {t: statistics[t] for t in tensors}


def calibrate(run_batch: Callable[[np.ndarray], Mapping], data: np.ndarray, tensors, *, batch_size: int = 64,
              keep_rows: Mapping[str, int] | None = None, progress: bool = True,
              histogram: bool = True) -> dict[str, TensorStats]:
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
    histogram : bool
        ``False``: keep no histograms (``TensorStats(histogram=False)``), for
        the range methods that need none (``"minmax"``, ``"cross_entropy"``).

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
    stats = {name: TensorStats(name, keep_rows=keep_rows.get(name), histogram=histogram) for name in tensors}
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
