"""The QOperator-level lowerings of what a QDQ model leaves outside onnxruntime's QLinear kernels.

:func:`intsim.importers.onnx_qdq.qdq_to_qoperator` rewrites such groups into nodes of the private
``intsim.qdq`` domain (float islands ``FloatConv``, ``FloatAdd``, ``FloatMaxPool``, ``FloatGemm``,
``FloatMatMul``, ``FloatGlobalAveragePool``, ``FloatAveragePool``, ``FloatClip``; ``Requantize`` for a
lone ``DQ -> Q`` pair) and keeps integer ops on codes (``Cast``, ``Sub``, ``Gather``); the handlers
here lower them, registered with the QOperator importer (:func:`intsim.importers.onnx_qop.handles`).
"""

from __future__ import annotations

from types import SimpleNamespace

import json

import numpy as np
from onnx import TensorProto

from intsim.codes import dtype_range
from intsim.errors import UnsupportedOpError
from intsim.importers.onnx_qop import OPERAND_QUANT, TO_NHWC, binary_operands, handles, lower_max_pool, window_attrs
from intsim.importers.onnxruntime_tables import ort_lookup_table


def _dequantize_constant(imp, node, index, axis=0) -> np.ndarray:
    """``DequantizeLinear`` of the constant at input ``index`` (scale, zero point follow it), per tensor or
    per ``axis``: ``float32(q - z) * s`` in float32, the constant's shape."""
    codes = np.asarray(imp.const(node, index, "constant")).astype(np.int64)
    scale = np.float32(imp.const(node, index + 1, "scale"))
    zero_point = np.asarray(imp.const(node, index + 2, "zero point")).astype(np.int64)
    if scale.size > 1 or zero_point.size > 1:
        if not 0 <= axis < codes.ndim or scale.size != codes.shape[axis] or zero_point.size not in (1, scale.size):
            raise UnsupportedOpError(f"{imp.where(node)}: constant {node.input[index]!r} of shape {codes.shape}: "
                                     f"per-channel scale of {scale.size} values on axis {axis} does not fit")
        shape = [1] * codes.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape if zero_point.size > 1 else ())
    return (codes - zero_point).astype(np.float32) * scale


def _dq_axes(imp, node) -> list:
    return list(imp.attrs(node).get("dq_axes", []))


@handles("FloatConv")
def _float_conv(imp, node):
    """``Q(Conv(DQ(x), DQ(w), DQ(b)))`` in float32: :class:`intsim.graph.ops.float_island.Conv2DFloat32`."""
    y_scale, y_zp, y_dtype = imp.quant(node, 0, 1, "output")
    x = imp.nhwc(node, 2)
    x_scale, _, _ = imp.quant(node, 3, 4, "input")
    axes = _dq_axes(imp, node) + [0, 0, 0]
    if axes[1] != 0:
        raise UnsupportedOpError(f"{imp.where(node)}: weight scales per axis {axes[1]} (only per output channel)")
    weight = _dequantize_constant(imp, node, 5)
    cout = weight.shape[0]
    bias = np.zeros(cout, np.float32)
    if len(node.input) > 8 and node.input[8]:
        bias = _dequantize_constant(imp, node, 8).reshape(cout)
    window = window_attrs(imp, node, weight.shape[2:])
    attrs = {"strides": window["strides"], "dilations": window["dilations"], "pads": window["pads"],
             "groups": int(imp.attrs(node).get("group", 1))}
    params = {"weight": np.ascontiguousarray(weight.transpose(0, 2, 3, 1), np.float32),
              "bias": bias.astype(np.float32), "x_scale": np.array([x_scale], np.float32),
              "y_scale": np.array([y_scale], np.float32)}
    out = node.output[0]
    imp.emit("conv2d_float32", node.name or out, [x], attrs, params, out, y_dtype, y_scale, y_zp, out, TO_NHWC)


@handles("FloatAdd")
def _float_add(imp, node):
    """``Q(DQ(a) + DQ(b))`` in float32: :class:`intsim.graph.ops.float_island.AddFloat32`."""
    y_scale, y_zp, y_dtype = imp.quant(node, 0, 1, "output")
    shifted = SimpleNamespace(input=list(node.input[2:]), name=node.name, op_type=node.op_type,
                              attribute=node.attribute)
    a_scale, _, _ = imp.quant(shifted, 1, 2, "A")
    b_scale, _, _ = imp.quant(shifted, 4, 5, "B")
    a, b, perm = binary_operands(imp, shifted)
    params = {"a_scale": np.array([a_scale], np.float32), "b_scale": np.array([b_scale], np.float32),
              "y_scale": np.array([y_scale], np.float32)}
    out = node.output[0]
    imp.emit("add_float32", node.name or out, [a, b], {}, params, out, y_dtype, y_scale, y_zp, out, perm)


@handles("FloatMaxPool")
def _float_max_pool(imp, node):
    """``Q(MaxPool(DQ(x)))`` with a positive input scale: dequantizing is increasing, so the float maximum
    is the dequantized maximum code; MaxPool on codes, then ``Q(DQ(.))`` as a table (float32, exact)."""
    y_q = imp.quant(node, 0, 1, "output")
    x_q = imp.quant(node, 3, 4, "input")
    if not x_q[0] > 0:
        raise UnsupportedOpError(f"{imp.where(node)}: input scale {x_q[0]} must be > 0")
    pooled = imp.unique(f"{node.output[0]}/max_codes")
    lower_max_pool(imp, SimpleNamespace(input=[node.input[2]], output=[pooled], name=pooled, op_type="MaxPool",
                                   attribute=node.attribute))
    table = ort_lookup_table(lambda v: v, *x_q, *y_q)
    tensor, perm = imp.values[pooled]
    out = node.output[0]
    imp.emit("lut", node.name or out, [tensor], {}, {"table": table}, out, y_q[2], y_q[0], y_q[1], out, perm)


@handles("FloatGemm")
def _float_gemm(imp, node):
    """``Q(DQ(A) DQ(B)^T + beta DQ(C))`` in float32 (``alpha`` 1, ``transA`` 0, ``transB`` 1, B constant):
    :class:`intsim.graph.ops.float_island.GemmFloat32`.  ``beta C`` is formed in float32, as MLAS scales C.

    With ``transB`` 0, onnxruntime (1.32, measured) rewrites ``DQ(B) -> Gemm`` into ``MatMulNBits``
    (as it does ``DQ(B) -> MatMul``), a kernel intsim does not model: an error naming the node.
    """
    attrs = imp.attrs(node)
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0) or not attrs.get("transB", 0):
        raise UnsupportedOpError(
            f"{imp.where(node)}: a float Gemm with alpha {attrs.get('alpha', 1.0)}, transA {attrs.get('transA', 0)}, "
            f"transB {attrs.get('transB', 0)} has no lowering (expected 1, 0, 1; with transB 0 onnxruntime runs "
            f"DQ(B) -> Gemm as MatMulNBits, which intsim does not model)")
    y_scale, y_zp, y_dtype = imp.quant(node, 0, 1, "output")
    a = imp.layout(node, 2, None)
    a_scale, _, _ = imp.quant(node, 3, 4, "A")
    axes = _dq_axes(imp, node) + [0, 0, 0]
    weight = _dequantize_constant(imp, node, 5, axes[1])
    if weight.ndim != 2:
        raise UnsupportedOpError(f"{imp.where(node)}: B must be a 2-D constant, found shape {weight.shape}")
    bias = np.zeros(weight.shape[0], np.float32)
    if len(node.input) > 8 and node.input[8]:
        c = _dequantize_constant(imp, node, 8, axes[2])
        if c.size != weight.shape[0]:
            raise UnsupportedOpError(f"{imp.where(node)}: C of shape {c.shape} must hold one value per output "
                                     f"column ({weight.shape[0]})")
        bias = np.float32(np.float32(attrs.get("beta", 1.0)) * c.reshape(-1))
    params = {"weight": np.ascontiguousarray(weight.T, np.float32), "bias": np.ascontiguousarray(bias, np.float32),
              "a_scale": np.array([a_scale], np.float32), "y_scale": np.array([y_scale], np.float32)}
    out = node.output[0]
    imp.emit("gemm_float32", node.name or out, [a], {}, params, out, y_dtype, y_scale, y_zp, out, None)


@handles("FloatMatMul")
def _float_matmul(imp, node):
    """``Q(DQ(A) DQ(B))`` of two activations in float32: :class:`intsim.graph.ops.float_island.MatMulFloat32`.

    A constant B is no island: onnxruntime (1.32, measured) rewrites ``DQ(B) -> MatMul`` into
    ``MatMulNBits``, a kernel intsim does not model: an error naming the node.
    """
    if node.input[5] in imp.constants:
        raise UnsupportedOpError(f"{imp.where(node)}: a float MatMul with a constant B runs in onnxruntime as "
                                 f"MatMulNBits (the DQMatMulToMatMulNBits fusion), which intsim does not model")
    y_scale, y_zp, y_dtype = imp.quant(node, 0, 1, "output")
    a, b = imp.layout(node, 2, None), imp.layout(node, 5, None)
    params = {f"{k}_scale": np.array([imp.quant(node, s, s + 1, k)[0]], np.float32) for k, s in (("a", 3), ("b", 6))}
    params["y_scale"] = np.array([y_scale], np.float32)
    out = node.output[0]
    imp.emit("matmul_float32", node.name or out, [a, b], {}, params, out, y_dtype, y_scale, y_zp, out, None)


@handles("FloatGlobalAveragePool", "FloatAveragePool")
def _float_average_pool(imp, node):
    """``Q(GlobalAveragePool(DQ(x)))`` / ``Q(AveragePool(DQ(x)))`` in float32, in onnxruntime's order:
    :class:`intsim.graph.ops.float_island.GlobalAvgPoolFloat32` / ``AvgPoolFloat32Island``."""
    y_scale, y_zp, y_dtype = imp.quant(node, 0, 1, "output")
    x = imp.nhwc(node, 2)
    x_scale, _, _ = imp.quant(node, 3, 4, "input")
    _, height, width, _ = imp.tensors[x].shape
    params = {"x_scale": np.array([x_scale], np.float32), "y_scale": np.array([y_scale], np.float32)}
    op, attrs = "global_avg_pool_float32", {}
    if node.op_type == "FloatAveragePool":
        window = window_attrs(imp, node, None)
        if window["dilations"] != [1, 1]:
            raise UnsupportedOpError(f"{imp.where(node)}: dilations {window['dilations']} are not supported")
        op = "avg_pool_float32_island"
        attrs = {"kernel": window["kernel"], "strides": window["strides"], "pads": window["pads"],
                 "count_include_pad": bool(imp.attrs(node).get("count_include_pad", 0))}
    out = node.output[0]
    imp.emit(op, node.name or out, [x], attrs, params, out, y_dtype, y_scale, y_zp, out, TO_NHWC)


# metadata_props key of a file intsim.export.qdq writes: JSON {codes: [scale, zero point, dtype]} for the
# outputs of its table lookups (a table read by another table has no reader that says).
CODE_QUANTIZATION = "intsim.code_quantization"

# The private domain's nodes read their operands as the QLinear ops do: [y_scale, y_zp, x, x_scale, x_zp, ...].
ISLAND_OPERANDS = {"intsim.qdq": lambda node: {2: (3, 4), 5: (6, 7)}}


@handles("FloatClip")
def _float_clip(imp, node):
    """``Q(Clip(DQ(x), min, max))`` in float32: elementwise, so one ``lut`` of onnxruntime's float32 values."""
    attrs = imp.attrs(node)
    lo, hi = np.float32(attrs["min"]), np.float32(attrs["max"])
    _table_of(imp, node, lambda v: np.minimum(np.maximum(v, lo), hi))


@handles("Requantize")
def _requantize(imp, node):
    """A lone ``DQ -> Q`` pair: ``Q(DQ(x))`` in float32, one ``lut``."""
    _table_of(imp, node, lambda v: v)


def _table_of(imp, node, fn):
    y_q, x_q = imp.quant(node, 0, 1, "output"), imp.quant(node, 3, 4, "input")
    tensor, perm = imp.value(node, 2)
    out = node.output[0]
    table = ort_lookup_table(fn, *x_q, *y_q)
    imp.emit("lut", node.name or out, [tensor], {}, {"table": table}, out, y_q[2], y_q[0], y_q[1], out, perm)


# --------------------------------------------------------------------------
# Integer ops on codes: a table lookup (Cast -> [Sub] -> Gather of a constant table) and a gather of rows
# or columns of NCHW codes (a nearest resize), as Model.to_onnx_qdq writes them.
# --------------------------------------------------------------------------


@handles("Cast")
def _cast(imp, node):
    to = imp.attrs(node).get("to")
    if to not in (TensorProto.INT32, TensorProto.INT64):
        raise UnsupportedOpError(f"{imp.where(node)}: a Cast of codes is lowered only to int32 / int64 (an index), "
                                 f"found to={to}")
    tensor, perm = imp.value(node, 0)
    imp.code_indices[node.output[0]] = (tensor, perm, 0)


@handles("Sub")
def _sub(imp, node):
    offset = imp.const(node, 1, "subtrahend")
    if node.input[0] not in imp.code_indices or offset is None or offset.size != 1 or offset.dtype.kind not in "iu":
        raise UnsupportedOpError(f"{imp.where(node)}: only an index of codes minus an integer constant is lowered")
    tensor, perm, added = imp.code_indices[node.input[0]]
    imp.code_indices[node.output[0]] = (tensor, perm, added - int(offset.reshape(())))


@handles("Gather")
def _gather(imp, node):
    axis = int(imp.attrs(node).get("axis", 0))
    if node.input[1] in imp.code_indices:
        _table_lookup(imp, node, axis)
        return
    index = imp.const(node, 1, "indices")
    if axis not in (2, 3) or index is None or index.ndim != 1:
        raise UnsupportedOpError(f"{imp.where(node)}: only a gather of rows or columns (axis 2 or 3) of NCHW codes "
                                 f"by constant indices is lowered")
    tensor = imp.nhwc(node, 0)
    info = imp.tensors[tensor]
    if None in info.shape[1:3]:
        raise UnsupportedOpError(f"{imp.where(node)}: the spatial size must be known, found {info.shape}")
    extent = info.shape[axis - 1]
    if index.size and not (-extent <= index.min() and index.max() < extent):
        raise UnsupportedOpError(f"{imp.where(node)}: indices {index.min()}..{index.max()} outside [-{extent}, "
                                 f"{extent - 1}]")
    rows = {2: np.asarray(index, np.int64) % extent, 3: np.arange(info.shape[1], dtype=np.int64)}
    cols = {3: np.asarray(index, np.int64) % extent, 2: np.arange(info.shape[2], dtype=np.int64)}
    out = node.output[0]
    imp.emit("resize_nearest", node.name or out, [tensor], {}, {"index_h": rows[axis], "index_w": cols[axis]}, out,
             info.dtype, info.scale, info.zero_point, out, TO_NHWC)


def _table_lookup(imp, node, axis):
    table = imp.const(node, 0, "table")
    if table is None or table.ndim != 1 or axis != 0:
        raise UnsupportedOpError(f"{imp.where(node)}: a gather by an index of codes must read a constant 1-D table")
    tensor, perm, added = imp.code_indices[node.input[1]]
    info = imp.tensors[tensor]
    lo, hi = dtype_range(info.dtype)
    index = np.arange(lo, hi + 1, dtype=np.int64) + added
    if index.min() < -table.size or index.max() >= table.size:
        raise UnsupportedOpError(f"{imp.where(node)}: {info.dtype} codes index entries {index.min()}..{index.max()} "
                                 f"of a table of {table.size}")
    y_scale, y_zp, y_dtype = _reader_quantization(imp, node.output[0])
    if table.dtype != np.dtype(y_dtype):
        raise UnsupportedOpError(f"{imp.where(node)}: table of {table.dtype} read as {y_dtype} codes")
    out = node.output[0]
    imp.emit("lut", node.name or out, [tensor], {}, {"table": table[index]}, out, y_dtype, y_scale, y_zp, out, perm)


_MOVES_CODES = ("Flatten", "Reshape", "Resize", "Squeeze", "Transpose", "Unsqueeze", "MaxPool", "Gather")


def _reader_quantization(imp, name, seen=()):
    """The ``(scale, zero point, dtype)`` the first reader of code tensor ``name`` takes it with (through
    ops that only move codes)."""
    for node in imp.model.graph.node:
        quant = OPERAND_QUANT.get(node.op_type, ISLAND_OPERANDS.get(node.domain, lambda n: {}))(node)
        for index, (s, z) in quant.items():
            if index < len(node.input) and node.input[index] == name:
                return imp.quant(node, s, z, f"input {index}")
    for node in imp.model.graph.node:
        if node.op_type in _MOVES_CODES and node.input and node.input[0] == name and node.output[0] not in seen:
            return _reader_quantization(imp, node.output[0], (*seen, name))
    written = {p.key: p.value for p in imp.model.metadata_props}.get(CODE_QUANTIZATION)
    recorded = json.loads(written).get(name) if written else None
    if isinstance(recorded, list) and len(recorded) == 3:
        scale, zero_point, dtype = recorded
        if dtype in ("uint8", "int8", "uint16", "int16") and np.isfinite(scale) and scale > 0:
            lo, hi = dtype_range(dtype)
            if isinstance(zero_point, int) and lo <= zero_point <= hi:
                return np.float32(scale), zero_point, dtype
    raise UnsupportedOpError(f"codes {name!r}: no reader says how they are quantized (nor the file's "
                             f"{CODE_QUANTIZATION!r} metadata)")
