"""Import a fully-int8 TFLite model as an integer graph that runs like LiteRT's reference kernels.

:func:`load_tflite` reads the flatbuffer with the ``tflite`` schema package (no
LiteRT at run time) and maps each operator through a handler registry onto
intsim ops, computing every multiplier, shift, clamp and table exactly as the
LiteRT kernel's ``Prepare`` does (``OpResolverType.BUILTIN_REF``), so that
``Model(load_tflite(path)).run_int`` equals LiteRT bit for bit.

Particularities of the reference kernels reproduced here (file names under
``tflite/kernels/``):

- convolutions: per-channel ``QuantizeMultiplier(double(s_x) * double(s_w[c]) /
  double(s_y))`` and double rounding (``kernel_util.cc``
  ``PopulateConvolutionQuantizationParams``, ``reference/integer_ops/conv.h``);
- FULLY_CONNECTED requantizes in double precision: ``round(double(acc) *
  double(s_x) * double(s_w[c]) / double(s_y))``, half away from zero
  (``reference/integer_ops/fully_connected.h``), the ``float64_half_away`` rounding;
- fused activations clamp at ``z + round_f32(0 / s)`` and ``z + round_f32(6 / s)``
  in float32 (``kernel_util.cc`` ``CalculateActivationRangeQuantized``);
- ADD / SUB shift both centred inputs left by 20 before rescaling
  (``add.cc``, ``sub.cc``);
- SOFTMAX is gemmlowp's fixed-point exp pipeline (``reference/softmax.h``);
- LOGISTIC and TANH are 256-entry tables built in float32 (``LUTPopulate`` in
  ``internal/common.h``, called from ``activations.cc``); HARD_SWISH is an int16
  fixed-point pipeline (``reference/hard_swish.h``), tabulated here code by code;
- the fully-integer UNIDIRECTIONAL_SEQUENCE_LSTM and STRIDED_SLICE are in
  :mod:`intsim.importers.tflite_sequence`;
- a float input's QUANTIZE divides in float32 and rounds half away from zero
  (``reference/quantize.h`` ``AffineQuantize``: ``TfLiteRound(x / float(scale))``), so the
  graph records ``metadata["input_quantization"] = "float32_half_away"`` for
  :meth:`intsim.Model.run`; a float output's DEQUANTIZE (``reference/dequantize.h``:
  ``float(double(scale) * (q - zp))``) is exactly :func:`intsim.runtime.dequantize`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intsim.errors import ModelFormatError, UnsupportedOpError
from intsim.fixedpoint import (
    Rescale,
    doubling_high_mul_truncating,
    quantize_multiplier,
    rounding_divide_by_pot_scalar,
    rounding_high_mul,
    saturate,
)
from intsim.graph import Graph, Node, TensorInfo
from intsim.codes import dtype_range
from intsim.importers.tflite_sequence import strided_slice, unidirectional_sequence_lstm
from intsim.importers.tflite_verify import check_model, verify_tflite

try:
    import tflite as _schema
except ImportError:  # pragma: no cover - exercised only without the dependency
    _schema = None

_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}
_SAME, _VALID = 0, 1
_ADD_LEFT_SHIFT = 20  # add.cc / sub.cc, 8-bit inputs
_IDENTITY = Rescale.from_real(np.array([1.0]), "double")  # multiplier 2**30, shift 1: exact in double rounding


def _libm_float_function(name, numpy_fallback):
    """The C library's float32 ``name`` (``expf``, ``tanhf``), which LiteRT's tables call; numpy's otherwise."""
    path = ctypes.util.find_library("m")
    try:
        fn = getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError, TypeError):  # pragma: no cover - platforms without a C libm
        return lambda v: np.float32(numpy_fallback(np.float32(v)))
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return lambda v: np.float32(fn(float(v)))


_expf = _libm_float_function("expf", np.exp)
_tanhf = _libm_float_function("tanhf", np.tanh)


def _roundf(v) -> int:
    """C ``roundf`` of a float32: half away from zero."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v)) if abs(v) < 2**23 else int(v)


@dataclass
class _Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple
    scales: np.ndarray  # float32
    zero_points: np.ndarray
    quantized_dimension: int
    data: np.ndarray | None

    @property
    def scale(self) -> float:
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0])


class _Builder:
    """Collects intsim tensors and nodes while the operator handlers run."""

    def __init__(self, name, tensors):
        self.name = name
        self.tflite = tensors
        self.infos: dict[str, TensorInfo] = {}
        self.nodes: list[Node] = []
        self.alias: dict[int, int] = {}

    def tensor(self, index: int) -> _Tensor:
        return self.tflite[self.alias.get(index, index)]

    def info(self, index: int, batch_free=True) -> str:
        """The intsim tensor for TFLite tensor ``index`` (activations only), created on first use."""
        t = self.tensor(index)
        if t.dtype not in ("int8",):
            raise ModelFormatError(f"{self.name}: tensor {t.name!r} is {t.dtype}; only fully-int8 models are supported")
        if t.scales.size != 1:
            raise ModelFormatError(f"{self.name}: activation tensor {t.name!r} has {t.scales.size} scales, expected 1")
        if t.name not in self.infos:
            shape = tuple(t.shape)
            if batch_free and shape and shape[0] == 1:
                shape = (None,) + shape[1:]
            self.infos[t.name] = TensorInfo(t.name, t.dtype, shape, t.scale, t.zero_point)
        return t.name

    def fresh(self, like: str, shape, suffix) -> str:
        base = self.infos[like]
        name = f"{like}/{suffix}"
        self.infos[name] = TensorInfo(name, base.dtype, shape, base.scale, base.zero_point)
        return name

    def add(self, op, name, inputs, outputs, attrs=None, params=None):
        self.nodes.append(Node(op, name, inputs, outputs, attrs or {}, params or {}))


# --------------------------------------------------------------------------
# Quantization arithmetic of the kernels' Prepare functions.
# --------------------------------------------------------------------------


def _activation_clamp(act: int, out: _Tensor, op_name: str) -> list[int]:
    """``CalculateActivationRangeQuantized`` (kernel_util.cc): float32 ``f / scale``, ``roundf``."""
    lo, hi = dtype_range(out.dtype)
    scale = np.float32(out.scale)

    def quantize(f):
        return out.zero_point + _roundf(np.float32(f) / scale)

    kind = _ACTIVATIONS.get(act)
    if kind == "NONE":
        return [lo, hi]
    if kind == "RELU":
        return [max(lo, quantize(0.0)), hi]
    if kind == "RELU6":
        return [max(lo, quantize(0.0)), min(hi, quantize(6.0))]
    if kind == "RELU_N1_TO_1":
        return [max(lo, quantize(-1.0)), min(hi, quantize(1.0))]
    raise UnsupportedOpError(f"{op_name}: fused activation {act} is not supported")


def _same_pads(in_size, k, stride, dilation, padding):
    """``ComputePaddingHeightWidth``: (before, after), the odd pixel after."""
    eff = (k - 1) * dilation + 1
    out = (in_size + stride - 1) // stride if padding == _SAME else (in_size - eff + stride) // stride
    total = max((out - 1) * stride + eff - in_size, 0)
    return total // 2, total // 2 + total % 2


def _spatial_pads(x: _Tensor, kh, kw, sh, sw, dh, dw, padding):
    if padding not in (_SAME, _VALID):
        raise ModelFormatError(f"tensor {x.name!r}: padding {padding} is neither SAME ({_SAME}) nor VALID ({_VALID})")
    if min(kh, kw, sh, sw, dh, dw) < 1:
        raise ModelFormatError(f"tensor {x.name!r}: window {kh}x{kw}, strides {sh}x{sw} and dilations {dh}x{dw} "
                               f"must all be >= 1")
    top, bottom = _same_pads(x.shape[1], kh, sh, dh, padding)
    left, right = _same_pads(x.shape[2], kw, sw, dw, padding)
    return [top, left, bottom, right]


def _conv_real_multipliers(x: _Tensor, w: _Tensor, y: _Tensor, channels: int) -> np.ndarray:
    """``double(s_x) * double(s_w[c]) / double(s_y)`` per output channel (per-tensor weights broadcast)."""
    s_w = np.broadcast_to(w.scales.astype(np.float64), (channels,))
    return np.array([float(x.scales[0]) * float(s) / float(y.scales[0]) for s in s_w])


def _bias(b: _Tensor | None, channels: int) -> np.ndarray:
    if b is None:
        return np.zeros(channels, np.int32)
    if b.dtype != "int32" or b.data is None:
        found = b.dtype if b.data is not None else f"{b.dtype} without data (buffer missing or empty)"
        raise ModelFormatError(f"bias {b.name!r} must be a constant int32 tensor, found {found}")
    if b.data.size != channels:
        raise ModelFormatError(f"bias {b.name!r} must hold {channels} values, found shape {b.data.shape}")
    if np.any(b.zero_points):  # the TFLite quantization spec: int32 biases are symmetric
        raise ModelFormatError(f"bias {b.name!r} must have zero points 0, found {b.zero_points.tolist()}")
    return b.data.astype(np.int32).reshape(channels)


def _weights(w: _Tensor, op_name: str) -> np.ndarray:
    if w.dtype != "int8" or w.data is None:
        found = w.dtype if w.data is not None else f"{w.dtype} without data (buffer missing or empty)"
        raise ModelFormatError(f"{op_name}: weights {w.name!r} must be a constant int8 tensor, found {found}")
    if np.any(w.zero_points != 0):
        raise ModelFormatError(f"{op_name}: weights {w.name!r} must be symmetric (zero point 0)")
    return w.data.astype(np.int8)


# --------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------


def _lut_float32(fn, x: _Tensor, y: _Tensor) -> np.ndarray:
    """``LUTPopulate<int8_t>`` (internal/common.h): every step in float32, ``roundf``, clamp."""
    lo, hi = dtype_range(y.dtype)
    inverse_scale = np.float32(1.0) / np.float32(y.scale)
    table = np.empty(hi - lo + 1, np.int8)
    for i, code in enumerate(range(lo, hi + 1)):
        dequantized = np.float32(x.scale) * np.float32(code - x.zero_point)
        transformed = fn(dequantized)
        rescaled = _roundf(np.float32(transformed * inverse_scale))
        table[i] = min(max(rescaled + y.zero_point, lo), hi)
    return table


def _sigmoid_f32(v):
    return np.float32(np.float32(1.0) / (np.float32(1.0) + _expf(-v)))


def _downscale_int32_to_int16_multiplier(multiplier: int) -> int:
    """``DownScaleInt32ToInt16Multiplier`` (internal/common.h): round to the top 16 bits."""
    if multiplier >= 2**31 - 1 - 2**15:
        return 2**15 - 1
    return (multiplier + 2**15) >> 16


def _hard_swish_table(x: _Tensor, y: _Tensor) -> np.ndarray:
    """The output code of ``reference_ops::HardSwish`` (reference/hard_swish.h) for every int8 input code.

    Multipliers as ``HardSwishPrepare`` (activations.cc): float32 scales
    ``s_x / 128 / s_y`` and ``(s_x / 128) / (3 / 32768)``, ``QuantizeMultiplier``,
    then cut to int16.
    """
    hires_input_scale = np.float32(1.0 / 128.0) * np.float32(x.scale)
    out_m, out_exp = quantize_multiplier(float(np.float32(hires_input_scale / np.float32(y.scale))))
    relu_m, relu_exp = quantize_multiplier(float(np.float32(hires_input_scale / np.float32(3.0 / 32768.0))))
    out_m16, relu_m16 = _downscale_int32_to_int16_multiplier(int(out_m)), _downscale_int32_to_int16_multiplier(int(relu_m))
    out_exp, relu_exp = int(out_exp), int(relu_exp)
    if out_exp > 0:
        raise UnsupportedOpError(f"HARD_SWISH: output multiplier exponent {out_exp} > 0 is rejected by LiteRT")
    lo, hi = dtype_range(y.dtype)
    table = np.empty(hi - lo + 1, np.int8)
    for i, code in enumerate(range(lo, hi + 1)):
        hires = (code - x.zero_point) * 128  # |code - zp| <= 255: fits int16
        preshift_output = int(saturate(rounding_high_mul(hires, out_m16, 15), 16))
        reluish = hires
        if relu_exp > 0:
            reluish = int(saturate(reluish << (relu_exp - 1), 16))
        reluish = int(saturate(rounding_high_mul(reluish, relu_m16, 15), 16))
        if relu_exp > 0:
            reluish = int(saturate(reluish << 1, 16))
        if relu_exp < 0:
            reluish = int(rounding_divide_by_pot_scalar(reluish, -relu_exp))
        reluish = (reluish + 2**15) >> 1
        value = int(doubling_high_mul_truncating(reluish, preshift_output, 16))
        value = int(rounding_divide_by_pot_scalar(value, -out_exp)) + y.zero_point
        table[i] = min(max(value, lo), hi)
    return table


# --------------------------------------------------------------------------
# Operator handlers: (builder, op name, inputs, outputs, options) -> None
# --------------------------------------------------------------------------

QOPERATOR_OPS = {}


def handles(*names):
    def wrap(fn):
        for n in names:
            QOPERATOR_OPS[n] = fn
        return fn

    return wrap


def _options(op, cls_name):
    table = op.BuiltinOptions()
    if table is None:
        return None
    expected = getattr(_schema.BuiltinOptions, cls_name)
    if op.BuiltinOptionsType() != expected:
        raise ModelFormatError(f"builtin options of type {op.BuiltinOptionsType()} where {cls_name} "
                               f"({expected}) is expected")
    opts = getattr(_schema, cls_name)()
    opts.Init(table.Bytes, table.Pos)
    return opts


@handles("CONV_2D", "DEPTHWISE_CONV_2D")
def _conv(b: _Builder, kind, name, op, ins, outs):
    x, w, y = b.tensor(ins[0]), b.tensor(ins[1]), b.tensor(outs[0])
    bias = b.tensor(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    opts = _options(op, "Conv2DOptions" if kind == "CONV_2D" else "DepthwiseConv2DOptions")
    weight = _weights(w, name)
    cin = x.shape[3]
    if kind == "CONV_2D":
        groups = cin // weight.shape[3]  # grouped convolution: filter [O, KH, KW, I / groups]
    else:
        weight = np.ascontiguousarray(np.transpose(weight, (3, 1, 2, 0)))  # [1, KH, KW, C*m] -> [C*m, KH, KW, 1]
        groups = cin
    cout = weight.shape[0]
    kh, kw = weight.shape[1:3]
    sh, sw = opts.StrideH(), opts.StrideW()
    dh, dw = opts.DilationHFactor(), opts.DilationWFactor()
    params = {
        "weight": weight,
        "weight_zero_point": np.zeros(cout, np.int64),
        "bias": _bias(bias, cout),
        **Rescale.from_real(_conv_real_multipliers(x, w, y, cout), "double").params(),
    }
    attrs = {
        "strides": [sh, sw], "dilations": [dh, dw], "groups": groups,
        "pads": _spatial_pads(x, kh, kw, sh, sw, dh, dw, opts.Padding()),
        "clamp": _activation_clamp(opts.FusedActivationFunction(), y, name),
    }
    b.add("conv2d", name, [b.info(ins[0])], [b.info(outs[0])], attrs, params)


@handles("FULLY_CONNECTED")
def _fully_connected(b: _Builder, kind, name, op, ins, outs):
    x, w, y = b.tensor(ins[0]), b.tensor(ins[1]), b.tensor(outs[0])
    bias = b.tensor(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    opts = _options(op, "FullyConnectedOptions")
    weight = _weights(w, name)
    cout, depth = weight.shape
    real = _conv_real_multipliers(x, w, y, cout)
    params = {
        "weight": weight,
        "weight_zero_point": np.zeros(cout, np.int64),
        "bias": _bias(bias, cout),
        **Rescale.from_real(real, "float64_half_away").params(),
    }
    attrs = {"rounding": "float64_half_away", "clamp": _activation_clamp(opts.FusedActivationFunction(), y, name)}
    src, dst = b.info(ins[0]), b.info(outs[0])
    if len(x.shape) != 2:
        flat = b.fresh(src, (None, depth), "flat")
        b.add("reshape", f"{name}/flatten", [src], [flat], {"shape": [-1, depth]})
        src = flat
    if len(y.shape) != 2:
        out2d = b.fresh(dst, (None, cout), "2d")
        b.add("fully_connected", name, [src], [out2d], attrs, params)
        b.add("reshape", f"{name}/unflatten", [out2d], [dst], {"shape": [0] + list(y.shape[1:])})
    else:
        b.add("fully_connected", name, [src], [dst], attrs, params)


@handles("ADD", "SUB")
def _add(b: _Builder, kind, name, op, ins, outs):
    x1, x2, y = b.tensor(ins[0]), b.tensor(ins[1]), b.tensor(outs[0])
    opts = _options(op, "AddOptions" if kind == "ADD" else "SubOptions")
    twice_max = 2.0 * max(x1.scale, x2.scale)
    reals = (x1.scale / twice_max, x2.scale / twice_max, twice_max / (2.0**_ADD_LEFT_SHIFT * y.scale))
    params = {}
    for prefix, real in zip(("a_", "b_", "out_"), reals):
        params.update(Rescale.from_real(np.array([real]), "double").params(prefix))
    act = opts.FusedActivationFunction() if opts is not None else 0
    attrs = {"left_shift": _ADD_LEFT_SHIFT, "subtract": kind == "SUB", "clamp": _activation_clamp(act, y, name)}
    b.add("add", name, [b.info(ins[0]), b.info(ins[1])], [b.info(outs[0])], attrs, params)


@handles("MUL")
def _mul(b: _Builder, kind, name, op, ins, outs):
    x1, x2, y = b.tensor(ins[0]), b.tensor(ins[1]), b.tensor(outs[0])
    opts = _options(op, "MulOptions")
    real = float(x1.scale) * float(x2.scale) / float(y.scale)
    act = opts.FusedActivationFunction() if opts is not None else 0
    inputs = [_constant_or_info(b, i, name) for i in ins[:2]]
    b.add("mul", name, inputs, [b.info(outs[0])], {"clamp": _activation_clamp(act, y, name)},
          Rescale.from_real(np.array([real]), "double").params())


def _constant_or_info(b: _Builder, index: int, name: str) -> str:
    t = b.tensor(index)
    if t.data is None:
        return b.info(index)
    tname = b.info(index, batch_free=False)
    b.add("constant", f"{name}/const{index}", [], [tname], {}, {"value": t.data.astype(t.dtype).reshape(t.shape)})
    return tname


@handles("RESHAPE")
def _reshape(b: _Builder, kind, name, op, ins, outs):
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    target = list(y.shape)
    if x.shape and target and x.shape[0] == 1 and target[0] == 1:
        target[0] = 0  # keep the batch
    b.add("reshape", name, [b.info(ins[0])], [b.info(outs[0], batch_free=target[0] == 0)], {"shape": target})


@handles("MAX_POOL_2D", "AVERAGE_POOL_2D")
def _pool(b: _Builder, kind, name, op, ins, outs):
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    opts = _options(op, "Pool2DOptions")
    kh, kw, sh, sw = opts.FilterHeight(), opts.FilterWidth(), opts.StrideH(), opts.StrideW()
    attrs = {"kernel": [kh, kw], "strides": [sh, sw], "pads": _spatial_pads(x, kh, kw, sh, sw, 1, 1, opts.Padding())}
    clamp = _activation_clamp(opts.FusedActivationFunction(), y, name)
    dst = b.info(outs[0])
    pooled = dst if clamp == list(dtype_range(y.dtype)) else b.fresh(dst, b.infos[dst].shape, "unclamped")
    b.add("max_pool" if kind == "MAX_POOL_2D" else "avg_pool", name, [b.info(ins[0])], [pooled], attrs)
    if pooled != dst:
        b.add("rescale", f"{name}/activation", [pooled], [dst], {"clamp": clamp}, _IDENTITY.params())


@handles("RELU", "RELU6")
def _relu(b: _Builder, kind, name, op, ins, outs):
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    real = float(np.float32(x.scale) / np.float32(y.scale))  # ReluPrepare divides in float32
    clamp = _activation_clamp({"RELU": 1, "RELU6": 3}[kind], y, name)
    b.add("rescale", name, [b.info(ins[0])], [b.info(outs[0])], {"clamp": clamp},
          Rescale.from_real(np.array([real]), "double").params())


@handles("CONCATENATION")
def _concat(b: _Builder, kind, name, op, ins, outs):
    y = b.tensor(outs[0])
    opts = _options(op, "ConcatenationOptions")
    for i in ins:
        t = b.tensor(i)
        if (t.scale, t.zero_point) != (y.scale, y.zero_point):
            raise ModelFormatError(f"{name}: int8 CONCATENATION input {t.name!r} is quantized unlike its output")
    clamp = _activation_clamp(opts.FusedActivationFunction(), y, name)
    n = len(ins)
    params = {"multiplier": np.repeat(_IDENTITY.multiplier, n), "shift": np.repeat(_IDENTITY.shift, n)}
    b.add("concat", name, [_constant_or_info(b, i, name) for i in ins], [b.info(outs[0])],
          {"axis": int(opts.Axis()), "clamp": clamp}, params)


@handles("PAD")
def _pad(b: _Builder, kind, name, op, ins, outs):
    pads, y = b.tensor(ins[1]), b.tensor(outs[0])
    if pads.data is None:
        raise UnsupportedOpError(f"{name}: {kind} with non-constant paddings is not supported")
    paddings = pads.data.reshape(-1, 2).astype(int)
    value = y.zero_point
    b.add("pad", name, [b.info(ins[0])], [b.info(outs[0])],
          {"pads_before": paddings[:, 0].tolist(), "pads_after": paddings[:, 1].tolist(), "value": value})


@handles("LOGISTIC", "TANH", "HARD_SWISH")
def _table(b: _Builder, kind, name, op, ins, outs):
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    if kind == "HARD_SWISH":
        table = _hard_swish_table(x, y)
    else:
        table = _lut_float32(_sigmoid_f32 if kind == "LOGISTIC" else _tanhf, x, y)
    b.add("lut", name, [b.info(ins[0])], [b.info(outs[0])], {}, {"table": table})


@handles("SOFTMAX")
def _softmax(b: _Builder, kind, name, op, ins, outs):
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    opts = _options(op, "SoftmaxOptions")
    if y.zero_point != -128 or abs(y.scale - 1 / 256) > 0.001 / 256:
        raise ModelFormatError(f"{name}: int8 SOFTMAX output must have scale 1/256 and zero point -128")
    beta = float(np.float32(opts.Beta())) if opts is not None else 1.0
    # PreprocessSoftmaxScaling (quantization_util.cc), 5 integer bits for x - max.
    real = min(beta * float(x.scale) * 2.0 ** (31 - 5), 2.0**31 - 1.0)
    mult, left_shift = quantize_multiplier(real)
    # CalculateInputRadius(5, left_shift, 31)
    radius = math.floor((2**5 - 1) * 2.0 ** (31 - 5) / 2.0 ** int(left_shift))
    params = {"input_multiplier": np.array([mult], np.int32), "input_left_shift": np.array([left_shift], np.int32),
              "diff_min": np.array([-radius], np.int32)}
    b.add("softmax_gemmlowp", name, [b.info(ins[0])], [b.info(outs[0])], {}, params)


# --------------------------------------------------------------------------
# Reading the flatbuffer.
# --------------------------------------------------------------------------


def _builtin_names():
    return {v: k for k, v in vars(_schema.BuiltinOperator).items() if not k.startswith("_")}


def _read_tensors(model, subgraph, where) -> list[_Tensor]:
    tensors = []
    for i in range(subgraph.TensorsLength()):
        t = subgraph.Tensors(i)
        type_code = t.Type()
        if type_code not in _TYPES:
            raise ModelFormatError(f"{where}: tensor {i} has unsupported type code {type_code}")
        dtype = _TYPES[type_code]
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        q = t.Quantization()
        scales = np.zeros(0, np.float32)
        zps = np.zeros(0, np.int64)
        qdim = 0
        if q is not None and q.ScaleLength():
            scales = q.ScaleAsNumpy().astype(np.float32)
            if not (np.isfinite(scales).all() and (scales > 0).all()):
                raise ModelFormatError(f"{where}: tensor {i} has quantization scales {scales.tolist()[:8]}; "
                                       f"scales must be finite and > 0")
            zps = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(scales.size, np.int64)
            qdim = q.QuantizedDimension()
        data = None
        buf = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        if buf is not None and buf.DataLength():
            raw = buf.DataAsNumpy().tobytes()
            count = math.prod(shape)
            expected = count * np.dtype(dtype).itemsize
            if len(raw) != expected:
                raise ModelFormatError(f"{where}: tensor {i} holds {len(raw)} bytes, its shape {shape} needs {expected}")
            data = np.frombuffer(raw, dtype=dtype).reshape(shape)
        name = t.Name().decode("utf-8", "replace") if t.Name() else f"tensor{i}"
        tensors.append(_Tensor(i, name, dtype, shape, scales, zps, qdim, data))
    seen = {}
    for t in tensors:  # intsim tensor names must be unique
        if t.name in seen:
            t.name = f"{t.name}#{t.index}"
        seen[t.name] = t
    return tensors


def load_tflite(path) -> Graph:
    """Load a fully-int8 ``.tflite`` model as an integer :class:`~intsim.graph.Graph` (``tflite`` profile).

    The graph takes and returns the int8 codes of the model's int8 input and
    output tensors; a float model edge (QUANTIZE after a float input,
    DEQUANTIZE before a float output) is dropped, and the graph's
    ``metadata["input_quantization"]`` is set to ``"float32_half_away"`` when an
    input's was, so :meth:`intsim.Model.run` on floats equals LiteRT's float
    outputs.  The batch dimension is left free when the model's is 1.

    Raises
    ------
    ModelFormatError
        The file is not a TFLite flatbuffer, is truncated or corrupt, or is not
        a fully-int8 model.
    UnsupportedOpError
        An operator (named by its builtin name) has no integer lowering here.
    """
    if _schema is None:  # pragma: no cover
        raise ModelFormatError("reading .tflite files needs the 'tflite' package (pip install tflite)")
    path = Path(path)
    where = str(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{where}: cannot read: {exc}") from None
    verify_tflite(blob, where)
    try:
        return _build(blob, path.stem, where)
    except (ModelFormatError, UnsupportedOpError) as exc:
        if str(exc).startswith(where):
            raise
        raise type(exc)(f"{where}: {exc}") from None
    except Exception as exc:  # the flatbuffer reader fails in many ways on a damaged file
        raise ModelFormatError(f"{where}: corrupt or truncated TFLite file ({type(exc).__name__}: {exc})") from None


def _build(blob: bytes, name: str, where: str) -> Graph:
    model = _schema.Model.GetRootAsModel(blob, 0)
    if model.SubgraphsLength() < 1:
        raise ModelFormatError(f"{where}: the model has no subgraph")
    check_model(model, where)
    subgraph = model.Subgraphs(0)
    tensors = _read_tensors(model, subgraph, where)
    names = _builtin_names()
    ops = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), f"builtin {code.BuiltinCode()}")
        ops.append((kind, op, [int(v) for v in op.InputsAsNumpy()], [int(v) for v in op.OutputsAsNumpy()]))
    inputs = [int(v) for v in subgraph.InputsAsNumpy()]
    outputs = [int(v) for v in subgraph.OutputsAsNumpy()]
    b = _Builder(name, tensors)
    # Float edges: QUANTIZE of a float graph input, DEQUANTIZE to a float graph output.
    body = []
    metadata = {"source": "tflite"}
    for kind, op, ins, outs in ops:
        if kind == "QUANTIZE" and tensors[ins[0]].dtype == "float32" and ins[0] in inputs:
            inputs[inputs.index(ins[0])] = outs[0]
            metadata["input_quantization"] = "float32_half_away"
        elif kind == "DEQUANTIZE" and tensors[outs[0]].dtype == "float32" and outs[0] in outputs:
            outputs[outputs.index(outs[0])] = ins[0]
        else:
            body.append((kind, op, ins, outs))
    for t in inputs + outputs:
        if tensors[t].dtype != "int8":
            raise ModelFormatError(f"{where}: model edge tensor {tensors[t].name!r} is {tensors[t].dtype}; "
                                   f"only fully-int8 models are supported")
    graph_inputs = [b.info(t) for t in inputs]
    for n, (kind, op, ins, outs) in enumerate(body):
        handler = QOPERATOR_OPS.get(kind)
        if handler is None:
            raise UnsupportedOpError(f"{where}: operator {n} is TFLite builtin {kind}, which intsim does not import; "
                                     f"supported: {', '.join(sorted(QOPERATOR_OPS))}")
        handler(b, kind, f"{n}:{kind.lower()}", op, ins, outs)
    return Graph(name, "tflite", list(b.infos.values()), b.nodes, graph_inputs, [b.info(t) for t in outputs],
                 metadata=metadata)


@handles("UNIDIRECTIONAL_SEQUENCE_LSTM")
def _lstm(b: _Builder, kind, name, op, ins, outs):
    unidirectional_sequence_lstm(b, kind, name, op, ins, outs, _options(op, "UnidirectionalSequenceLSTMOptions"))


@handles("STRIDED_SLICE")
def _strided_slice(b: _Builder, kind, name, op, ins, outs):
    strided_slice(b, kind, name, op, ins, outs, _options(op, "StridedSliceOptions"))


@handles("MEAN")
def _mean(b: _Builder, kind, name, op, ins, outs):
    x, axes_t, y = b.tensor(ins[0]), b.tensor(ins[1]), b.tensor(outs[0])
    opts = _options(op, "ReducerOptions")
    if axes_t.data is None:
        raise UnsupportedOpError(f"{name}: MEAN with non-constant axes is not supported")
    rank = len(x.shape)
    if any(not -rank <= int(a) < rank for a in axes_t.data.reshape(-1)):
        raise ModelFormatError(f"{name}: MEAN axes {axes_t.data.reshape(-1).tolist()} are out of range for rank {rank}")
    axes = sorted({int(a) % rank for a in axes_t.data.reshape(-1)})
    count = math.prod(x.shape[a] for a in axes)
    # reduce.cc: QuantizeMultiplier(double(s_x) / double(s_y)); reference/reduce.h
    # QuantizedMeanOrSum then folds 1/N in: multiplier * 2**k // N, shift - k,
    # k = floor(log2 N) limited to 32 and to 31 + shift.
    mult, shift = (int(v) for v in quantize_multiplier(float(x.scale) / float(y.scale)))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    params = {"multiplier": np.array([(mult << k) // count], np.int32), "shift": np.array([shift - k], np.int32)}
    keepdims = bool(opts.KeepDims()) if opts is not None else False
    b.add("mean", name, [b.info(ins[0])], [b.info(outs[0])], {"axes": axes, "keepdims": keepdims}, params)
