"""Min/max statistics without histograms (``TensorStats(histogram=False)``): what ``convert`` keeps when
every range method is min/max, the same extremes as the full statistics."""

from __future__ import annotations

import numpy as np
import pytest

from intsim.converter.calibration import TensorStats, calibrate, choose_range
from intsim.errors import ValidationError


def test_extremes_equal_the_full_statistics():
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, (4, 3, 5)).astype(np.float32) for s in (1e-3, 2.0, 0.5)] + [np.arange(6)]
    full, lean = TensorStats("x"), TensorStats("x", histogram=False)
    for b in batches:
        full.update(b)
        lean.update(b)
    assert (lean.min, lean.max, lean.count) == (full.min, full.max, full.count)
    assert type(lean.min) is float and lean.histogram is None and lean.nbytes == 0
    for method in ("minmax",):
        assert choose_range(lean, method, 8, True, False) == choose_range(full, method, 8, True, False)


@pytest.mark.parametrize("values, message", [([1.0, np.nan], "values must be finite, found 1 non-finite"),
                                             ([-np.inf], "values must be finite"),
                                             (["x"], "values must be real numbers, found dtype <U1")])
def test_bad_values_are_named(values, message):
    with pytest.raises(ValidationError, match=message):
        TensorStats("act", histogram=False).update(np.asarray(values))


@pytest.mark.parametrize("method", ["mse", "percentile"])
def test_methods_that_read_a_histogram_refuse_statistics_without_one(method):
    stats = TensorStats("act", histogram=False)
    stats.update(np.ones(4, np.float32))
    with pytest.raises(ValidationError, match=f"method '{method}' reads a histogram; these statistics kept none"):
        choose_range(stats, method, 8, True, False)


def test_calibrate_passes_the_choice_on():
    data = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    stats = calibrate(lambda b: {"x": b}, data, ["x"], batch_size=3, progress=False, histogram=False)
    assert stats["x"].histogram is None
    assert (stats["x"].min, stats["x"].max) == (float(data.min()), float(data.max()))
