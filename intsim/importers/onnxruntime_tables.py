"""onnxruntime's float32 tables, reproduced: ``QlinearBuildLookupTable`` (QLinearSigmoid, QLinearLeakyRelu,
a requantizing QLinearConcat input), ``MlasComputeLogistic``, and ``QLinearSoftmax``'s exp table.

Built once when a model is imported (floats stop at the converter); the ops hold the tables.
"""

from __future__ import annotations

import numpy as np

from intsim.codes import dtype_range
from intsim.kernels.naive.onnxruntime_ops import fma_float32

_f32 = np.float32


def ort_lookup_table(fn, x_scale, x_zero_point, x_dtype, y_scale, y_zero_point, y_dtype) -> np.ndarray:
    """onnxruntime's ``QlinearBuildLookupTable`` as an intsim ``lut`` table.

    ``v = float32(x_scale) * float32(x - x_zero_point)`` for every code ``x``,
    ``f = fn(v)`` (float32 in, float32 out), then ``MlasQuantizeLinear``:
    ``clamp(rint(f / y_scale), min - z_y, max - z_y) + z_y`` with a float32
    division.  Entry ``i`` belongs to code ``dtype_min(x) + i`` (intsim's
    ``lut`` order; onnxruntime indexes by the raw byte).
    """
    lo, hi = dtype_range(x_dtype)
    codes = np.arange(lo, hi + 1, dtype=np.int64)
    v = _f32(x_scale) * (codes - x_zero_point).astype(np.float32)
    f = np.asarray(fn(v.astype(np.float32)), dtype=np.float32)
    y_lo, y_hi = dtype_range(y_dtype)
    q = np.clip(f / _f32(y_scale), _f32(y_lo - y_zero_point), _f32(y_hi - y_zero_point))
    return (np.rint(q).astype(np.int64) + y_zero_point).astype(np.dtype(y_dtype))


# MlasLogisticConstants (core/mlas/lib/logistic.cpp): Eigen's rational approximation.
_LOGISTIC_RANGE = 18.0
_ALPHA = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
          2.48287947061529e-01)  # alpha_9, alpha_7, alpha_5, alpha_3, alpha_1
_BETA = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
         1.16817656904453e-01, 9.93151921023180e-01)  # beta_10 .. beta_0


def mlas_logistic(values: np.ndarray) -> np.ndarray:
    """``MlasComputeLogistic`` of float32 ``values`` as the x86-64 FMA3 kernel computes it.

    Clamp to [-18, 18]; ``p = x * poly_alpha(x^2)``, ``q = poly_beta(x^2)``
    by Horner steps that are fused multiply-adds; ``clamp(p / q + 0.5, 0, 1)``
    in float32 (``core/mlas/lib/logistic.cpp``).
    """
    alpha = [_f32(a) for a in _ALPHA]
    beta = [_f32(b) for b in _BETA]
    out = np.empty(values.shape, np.float32)
    for i, value in enumerate(np.asarray(values, np.float32).reshape(-1)):
        x = np.clip(value, _f32(-_LOGISTIC_RANGE), _f32(_LOGISTIC_RANGE))
        x2 = _f32(x * x)
        p = fma_float32(x2, alpha[0], alpha[1])
        for coefficient in alpha[2:]:
            p = fma_float32(p, x2, coefficient)
        p = _f32(p * x)
        q = fma_float32(x2, beta[0], beta[1])
        for coefficient in beta[2:]:
            q = fma_float32(q, x2, coefficient)
        out.reshape(-1)[i] = np.clip(_f32(_f32(p / q) + _f32(0.5)), _f32(0.0), _f32(1.0))
    return out


def qlinear_softmax_table(x_scale, reduce_len) -> np.ndarray:
    """onnxruntime's ``QLinearSoftmax`` table (``qlinear_softmax.cc``): entry ``d + 255`` holds
    ``float32(exp((d + shift) * s_x))`` for the code distance ``d = x - max`` in ``[-255, 0]``, computed in
    double, where ``shift = max(0, ln(FLT_MAX / reduce_len) - 5) / s_x`` keeps a row's float32 sum finite."""
    s = np.float64(_f32(x_scale))
    shift = max(0.0, float(np.log(np.float64(np.finfo(np.float32).max) / reduce_len)) - 5.0) / s
    return np.exp((np.arange(-255, 1, dtype=np.float64) + shift) * s).astype(np.float32)
