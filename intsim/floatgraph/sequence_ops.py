"""The float reference of the canonical ops of sequence models (:mod:`intsim.importers.onnx_sequence`) and
of the fused forms :mod:`intsim.floatgraph.patterns` recognises (Gelu, MaskedSoftmax): ONNX semantics,
computed in float64 and rounded once to float32 as in :mod:`intsim.floatgraph.execute`.  Logic and
index ops keep their input's dtype, so they run on integer graph inputs and constants too.
"""

from __future__ import annotations

import numpy as np

from intsim.floatgraph.execute import register_op as _op

# Numerical Recipes' erfc (Chebyshev fit, fractional error below 1.2e-7 for every x): erf in numpy
# without scipy, well inside float32 rounding for GELU.
_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
                      1.48851587, -0.82215223, 0.17087277)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64, absolute error below 1.2e-7."""
    x = np.asarray(x, np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in reversed(_ERFC_COEFFICIENTS[1:]):
        poly = (poly + c) * t
    erfc = t * np.exp(-z * z + _ERFC_COEFFICIENTS[0] + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """``0.5 x (1 + erf(x / sqrt 2))``, or with ``approximate="tanh"``
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    """Normalise over the last axis: ``(x - mean) / sqrt(var + epsilon) * scale + bias`` (float64)."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    var = (centred**2).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + epsilon) * scale.astype(np.float64) + bias.astype(np.float64)


def gather_elements(data: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """ONNX GatherElements: ``out[..., j, ...] = data[..., indices[..., j, ...], ...]`` along ``axis``; the
    indices may be shorter than ``data`` on the other axes (their shape is the output's)."""
    window = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))
    return np.take_along_axis(data[window], indices.astype(np.int64), axis)


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


_op("Gather")(lambda attrs, data, indices: np.take(data, indices.astype(np.int64), axis=attrs["axis"]))
_op("GatherElements")(lambda attrs, data, indices: gather_elements(data, indices, attrs["axis"]))
_op("Neg")(lambda attrs, x: np.negative(x))
_op("Not")(lambda attrs, x: np.logical_not(x))
_op("Equal")(lambda attrs, a, b: np.equal(a, b))
_op("And")(lambda attrs, a, b: np.logical_and(a, b))
_op("Or")(lambda attrs, a, b: np.logical_or(a, b))
_op("Less")(lambda attrs, a, b: np.less(a, b))
_op("Greater")(lambda attrs, a, b: np.greater(a, b))
_op("Where")(lambda attrs, condition, a, b: np.where(condition, a, b))
_op("Cast")(lambda attrs, x: x.astype(attrs["to"]))
_op("LayerNormalization")(lambda attrs, x, scale, bias: _f32(layer_norm(x, scale, bias, attrs["epsilon"])))
_op("Gelu")(lambda attrs, x: _f32(gelu(x, attrs.get("approximate", "none"))))


@_op("MaskedSoftmax")
def _masked_softmax(attrs, x, mask):
    """Softmax over the last axis of ``x`` where ``mask`` (broadcast, after ``mask_axes`` are inserted)
    is non-zero; masked positions are 0, and a row with no kept position is all 0."""
    keep = np.expand_dims(mask != 0, tuple(attrs["mask_axes"]))
    z = np.where(keep, x.astype(np.float64), -np.inf)
    top = z.max(axis=-1, keepdims=True)
    e = np.where(keep, np.exp(z - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return _f32(e / np.where(total > 0, total, 1.0))
