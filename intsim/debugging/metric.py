"""The one number the PTQ debugging workflow ranks by, and the executions it is measured on.

The metric (white paper §3.7 ranks layers by "the loss each causes") is, in this order of preference:

* ``"accuracy"``: top-1 accuracy against the labels, when there are labels;
* ``"agreement"``: top-1 agreement with the float model, for a classifier (2-D output) without labels;
* ``"sqnr_db"``: the SQNR of the first output against the float output, for anything else.

A *drop* is ``reference - value``: for accuracy the float model's accuracy, for agreement 1 (float agrees
with itself), for SQNR the high-bit-width integer model's SQNR (step 1), float's own being infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph
from intsim.floatgraph.execute import run_float
from intsim.runtime import Model

METRICS = ("accuracy", "agreement", "sqnr_db")
# Without labels or classes, a model holds up when its output SQNR against float reaches this.
SQNR_HOLDS_DB = 30.0


@dataclass(frozen=True)
class Metric:
    """What "better" means for one model on one data set.

    Attributes
    ----------
    kind : str
        One of :data:`METRICS`.
    float_output : np.ndarray
        The float model's first output on the data.
    labels : np.ndarray or None
    reference : float
        The value a drop is measured from (module docstring).
    """

    kind: str
    float_output: np.ndarray
    labels: np.ndarray | None
    reference: float

    @classmethod
    def choose(cls, float_output: np.ndarray, labels: np.ndarray | None) -> "Metric":
        """Accuracy with labels, else agreement for a classifier (``[N, classes]`` output), else SQNR."""
        if labels is not None:
            if float_output.ndim != 2:
                raise ValidationError(f"debug: labels need a classifier's output [samples, classes]; the model's "
                                      f"first output has shape {float_output.shape}")
            return cls("accuracy", float_output, labels, float(np.mean(float_output.argmax(axis=1) == labels)))
        if float_output.ndim == 2 and float_output.shape[1] > 1:
            return cls("agreement", float_output, None, 1.0)
        return cls("sqnr_db", float_output, None, math.inf)

    def with_reference(self, reference: float) -> "Metric":
        return replace(self, reference=float(reference))

    def value(self, output: np.ndarray) -> float:
        """The metric of one execution's first output on the whole data set."""
        if self.kind == "accuracy":
            return float(np.mean(output.argmax(axis=1) == self.labels))
        if self.kind == "agreement":
            return float(np.mean(output.argmax(axis=1) == self.float_output.argmax(axis=1)))
        return self.output_sqnr_db(output)

    def output_sqnr_db(self, output: np.ndarray) -> float:
        """SQNR of ``output`` against the float output, in dB (infinite where they are equal)."""
        f = self.float_output.astype(np.float64)
        noise = float(np.sum((f - output.astype(np.float64)) ** 2))
        return math.inf if noise == 0.0 else 10.0 * math.log10(max(float(np.sum(f * f)), 1e-300) / noise)

    def drop(self, value: float) -> float:
        return self.reference - value

    def holds(self, value: float, tolerance: float) -> bool:
        """Within ``tolerance`` of the reference (accuracy, agreement), or at least :data:`SQNR_HOLDS_DB`."""
        return value >= SQNR_HOLDS_DB if self.kind == "sqnr_db" else self.drop(value) <= tolerance


def first_output(values) -> np.ndarray:
    return values[0] if isinstance(values, tuple) else values


def run_integer(model: Model, data: np.ndarray, batch_size: int) -> np.ndarray:
    """The integer model's first output, dequantized, on ``data`` in batches."""
    return np.concatenate([first_output(model.run(np.asarray(data[i:i + batch_size])))
                           for i in range(0, len(data), batch_size)])


def run_simulated(fg: FloatGraph, data: np.ndarray, batch_size: int, hook=None) -> np.ndarray:
    """A float graph's first output on ``data`` in batches, every tensor passed through ``hook``
    (a fake-quant hook: quantization simulation, white paper §2.3)."""
    out = fg.outputs[0]
    return np.concatenate([run_float(fg, [np.asarray(data[i:i + batch_size])], outputs=[out], hook=hook)[out]
                           for i in range(0, len(data), batch_size)])
