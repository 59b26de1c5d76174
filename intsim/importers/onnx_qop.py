"""Import an already-quantized ONNX model in QOperator format as an intsim integer graph.

Layout: ONNX tensors are NCHW, intsim's spatial ops NHWC.  Every 4-D tensor
is held NHWC inside; ``transpose`` nodes sit at the NCHW edges (after the
graph input, before a 4-D graph output, before ``Flatten`` / ``Reshape`` of
a tensor with spatial extent).  ``graph.metadata["onnx_tensors"]`` maps each
ONNX code tensor to the intsim tensor holding it and the permutation
(``intsim = onnx.transpose(perm)``, ``perm`` ``None`` for the same layout);
``graph.metadata["onnx_inputs"]`` / ``["onnx_outputs"]`` map the float graph
inputs / outputs to the code tensors.

The derivation in full, with the peer's source files: ``docs/peers.md``, *What onnxruntime computes, per QOperator op*.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx

from intsim.errors import IntsimError, ModelFormatError, UnsupportedOpError, ValidationError
from intsim.floatgraph.execute import COORDINATE_MODES, NEAREST_MODES, resize_source_indices
from intsim.fixedpoint import Rescale
from intsim.graph import Graph, Node, TensorInfo
from intsim.codes import dtype_range
from intsim.importers.onnx import read_onnx
from intsim.importers.onnx_ops import read_initializer
from intsim.importers.onnxruntime_tables import mlas_logistic, ort_lookup_table, qlinear_softmax_table
from intsim.kernels.naive.onnxruntime_ops import fma_float32
from intsim.graph.ops import get_op
from intsim.profiles import get_profile

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]
ROUNDING = "float32_rint"  # MlasRequantizeOutput: float32 multiply, round to nearest even

CODE_DTYPES = ("uint8", "int8")
# QuantizeLinear / DequantizeLinear (and the float islands of a QDQ model) also carry 16-bit codes; the
# QLinear kernels take 8-bit codes only.
WIDE_CODE_DTYPES = CODE_DTYPES + ("uint16", "int16")
QOPERATOR_OPS = {}
_f32 = np.float32


def _operand_quant_pairs(*pairs):
    return lambda node: dict(pairs)


# ONNX op -> node -> {code input index: (its scale input index, its zero point input index)}
OPERAND_QUANT = {
    **{op: _operand_quant_pairs((0, (1, 2))) for op in (
        "QLinearConv", "QGemm", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu",
        "QLinearSigmoid", "DequantizeLinear")},
    **{op: _operand_quant_pairs((0, (1, 2)), (3, (4, 5))) for op in ("QLinearMatMul", "QLinearAdd", "QLinearMul")},
    "QLinearConcat": lambda node: {2 + 3 * i: (3 + 3 * i, 4 + 3 * i) for i in range((len(node.input) - 2) // 3)},
}


def handles(*op_types):
    def wrap(fn):
        for op_type in op_types:
            QOPERATOR_OPS[op_type] = fn
        return fn

    return wrap


def load_onnx_qoperator(model, profile="onnxruntime") -> Graph:
    """Build the integer graph of a QOperator-format ONNX model.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        A model as ``onnxruntime.quantization.quantize_static`` writes it with
        ``quant_format=QuantFormat.QOperator``: uint8 or int8 activations,
        int8 weights (per-tensor or per-channel scales).
    profile : str, Path or Profile
        ``"onnxruntime"`` (exact int32 accumulation: VNNI, AVX-512, ARM) or
        ``"onnxruntime_avx2"`` (u8s8 pair saturation of AVX2 without VNNI; depthwise
        convs and s8s8 stay exact, as there).
        Every multiply-accumulate node rounds ``float32_rint`` whatever the profile.

    Returns
    -------
    Graph
        NHWC inside, ONNX-layout code tensors at the inputs and outputs (see the
        module docstring for the metadata that maps ONNX tensor names).

    Raises
    ------
    UnsupportedOpError
        An op with no exact integer lowering here, or a float op between the
        quantized input and output; names the node, the op and its opset.
    ModelFormatError
        The file is not an ONNX model.
    ValidationError
        Inconsistent quantization parameters (a weight that is not int8, per-channel
        weight zero points that differ where onnxruntime requires them equal, ...).
    """
    return _QOperatorImporter(read_onnx(model), get_profile(profile)).run()


class _QOperatorImporter:
    def __init__(self, model: onnx.ModelProto, profile):
        self.model = model
        self.profile = profile
        self.opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        graph = model.graph
        self.constants = {t.name: read_initializer(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                values = [a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
                if len(node.output) != 1 or len(values) != 1:
                    raise ModelFormatError(f"Constant {node.name!r}: expected one output and a tensor 'value' "
                                           f"attribute, found {len(node.output)} output(s) and attributes "
                                           f"{[a.name for a in node.attribute]}")
                self.constants[node.output[0]] = read_initializer(values[0].t)
        self.float_inputs = {vi.name: vi for vi in graph.input if vi.name not in self.constants}
        self.float_outputs = [vi.name for vi in graph.output]
        self.tensors: dict[str, TensorInfo] = {}
        self.nodes: list[Node] = []
        # ONNX code tensor name -> (intsim tensor name, perm or None): intsim = onnx.transpose(perm).
        self.values: dict[str, tuple[str, list | None]] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.onnx_inputs: dict[str, str] = {}
        self.onnx_outputs: dict[str, str] = {}
        self.inexact: dict[str, str] = {}
        self.overrides: dict[int, tuple[str, list | None]] = {}  # the current node's inputs, own_quantization
        # An int32 / int64 tensor computed from codes (Cast, Sub): name -> (code tensor, perm, added offset).
        self.code_indices: dict[str, tuple[str, list | None, int]] = {}

    # --- driver ---------------------------------------------------------
    def run(self) -> Graph:
        live = self._live_nodes()
        for index, node in enumerate(self.model.graph.node):
            if index not in live:
                continue
            handler = QOPERATOR_OPS.get(node.op_type)
            if handler is None:
                domain = node.domain or "ai.onnx"
                raise UnsupportedOpError(
                    f"node {node.name!r}: op {domain}:{node.op_type} (opset {self.opsets.get(domain, '?')}) has no "
                    f"integer lowering in the QOperator importer; supported: {', '.join(sorted(QOPERATOR_OPS))}"
                )
            try:
                self.own_quantization(node)
                handler(self, node)
            except IntsimError:
                raise
            except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
                    AttributeError) as exc:
                raise ValidationError(f"{self.where(node)}: malformed node ({type(exc).__name__}: {exc})") from None
            self.overrides = {}
        missing = [name for name in self.float_outputs if name not in self.onnx_outputs]
        if missing:
            raise UnsupportedOpError(f"graph outputs {missing} are not produced by DequantizeLinear of a code tensor")
        metadata = {
            "source": "onnx_qoperator",
            "onnx_tensors": {k: {"tensor": v[0], "perm": v[1]} for k, v in self.values.items()},
            "onnx_inputs": self.onnx_inputs,
            "onnx_outputs": self.onnx_outputs,
            "inexact_nodes": self.inexact,
        }
        return Graph(self.model.graph.name or "qoperator", self.profile, self.tensors, self.nodes,
                     self.inputs, self.outputs, metadata)

    def _live_nodes(self) -> set:
        """Indices of the nodes that the graph outputs depend on (quantize_static leaves dead Constants behind)."""
        nodes = self.model.graph.node
        producers = {out: index for index, node in enumerate(nodes) for out in node.output}
        live, stack = set(), list(self.float_outputs)
        while stack:
            index = producers.get(stack.pop())
            if index is None or index in live:
                continue
            live.add(index)
            stack.extend(nodes[index].input)
        return live

    # --- helpers --------------------------------------------------------
    def where(self, node) -> str:
        return f"{node.op_type} {node.name!r}"

    def const(self, node, index, what):
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            return None
        if name not in self.constants:
            raise UnsupportedOpError(f"{self.where(node)}: {what} {name!r} must be a constant (initializer)")
        return self.constants[name]

    def scalar(self, node, index, what):
        value = self.const(node, index, what)
        if value is None or value.size != 1:
            raise ValidationError(f"{self.where(node)}: {what} must be a single value, found {value!r}")
        return value.reshape(())

    def quant(self, node, scale_index, zp_index, what):
        """``(float32 scale, zero point, dtype name)`` of one quantized operand: a float32 scale, finite
        and > 0, and an int8 or uint8 zero point, the types onnxruntime's QLinear kernels accept (16-bit
        ones too for the nodes that are not QLinear kernels)."""
        scale = self.scalar(node, scale_index, f"{what} scale")
        zp = self.scalar(node, zp_index, f"{what} zero point")
        if scale.dtype != np.float32 or not np.isfinite(scale) or not scale > 0:
            raise ValidationError(f"{self.where(node)}: {what} scale must be a finite float32 > 0, found "
                                  f"{scale.dtype} {scale!r}")
        allowed = CODE_DTYPES if node.op_type.startswith("QLinear") or node.op_type == "QGemm" else WIDE_CODE_DTYPES
        if zp.dtype.name not in allowed:
            raise ValidationError(f"{self.where(node)}: {what} zero point must be {' or '.join(allowed)}, "
                                  f"found {zp.dtype}")
        return _f32(scale), int(zp), zp.dtype.name

    def own_quantization(self, node):
        """Rebind each code input of ``node`` to a tensor quantized as the node's own scale and zero point
        say (onnxruntime reads them from the node, not from the producer): where they differ from the
        producer's tensor, an identity ``lut`` relabels the very same codes.  The zero point's type must
        be the codes' type, as onnxruntime's type constraints require."""
        self.overrides = {}
        for index, (s, z) in OPERAND_QUANT.get(node.op_type, lambda n: {})(node).items():
            if index >= len(node.input) or node.input[index] not in self.values:
                continue
            tensor, perm = self.values[node.input[index]]
            info = self.tensors[tensor]
            scale, zp, dtype = self.quant(node, s, z, f"input {index}")
            if dtype != info.dtype:
                raise ValidationError(f"{self.where(node)}: input {index} zero point is {dtype} but the codes "
                                      f"{node.input[index]!r} are {info.dtype}")
            if (float(scale), zp) != (info.scale, info.zero_point):
                out = self.unique(f"{node.input[index]}/{node.name or node.output[0]}_quantization")
                lo, hi = dtype_range(dtype)
                table = np.arange(lo, hi + 1).astype(dtype)
                self.emit("lut", out, [tensor], {}, {"table": table}, out, dtype, scale, zp)
                self.overrides[index] = (out, perm)

    def add_tensor(self, name, dtype, shape, scale, zero_point) -> str:
        self.tensors[name] = TensorInfo(name, dtype, shape, float(scale), zero_point)
        return name

    def emit(self, op, name, inputs, attrs, params, out_name, out_dtype, scale, zero_point, onnx_name=None, perm=None):
        """Append a node; infer its output shape with the op registry; record the ONNX mapping."""
        node = Node(op, name, list(inputs), [out_name], attrs, params)
        shape = get_op(op, name).infer(node, [self.tensors[t] for t in inputs], SimpleNamespace(profile=self.profile))[0]
        self.add_tensor(out_name, out_dtype, shape, scale, zero_point)
        self.nodes.append(node)
        if onnx_name is not None:
            self.values[onnx_name] = (out_name, perm)
        return out_name

    def unique(self, base) -> str:
        name, i = base, 1
        names = set(self.tensors) | {n.name for n in self.nodes}
        while name in names:
            name, i = f"{base}_{i}", i + 1
        return name

    def value(self, node, index) -> tuple[str, list | None]:
        if index in self.overrides:
            return self.overrides[index]
        name = node.input[index]
        if name not in self.values:
            raise UnsupportedOpError(
                f"{self.where(node)}: input {name!r} is not an integer code tensor (a float op between "
                f"QuantizeLinear and DequantizeLinear has no integer lowering)"
            )
        return self.values[name]

    def layout(self, node, index, perm) -> str:
        """The intsim tensor holding input ``index`` in layout ``perm`` (``None``: ONNX layout)."""
        tensor, held = self.value(node, index)
        if held == perm:
            return tensor
        info = self.tensors[tensor]
        to_onnx = TO_NCHW if held == TO_NHWC else None
        if held is not None and to_onnx is None:
            raise UnsupportedOpError(f"{self.where(node)}: input held in layout {held}, cannot convert")
        step = to_onnx if perm is None else TO_NHWC
        suffix = "nchw" if perm is None else "nhwc"
        out = self.unique(f"{node.input[index]}/{suffix}")
        return self.emit("transpose", out, [tensor], {"perm": step}, {}, out, info.dtype, info.scale,
                         info.zero_point)

    def nhwc(self, node, index) -> str:
        tensor, held = self.value(node, index)
        if len(self.tensors[tensor].shape) != 4:
            raise UnsupportedOpError(f"{self.where(node)}: only 2-D spatial ops (4-D NCHW inputs) are supported, "
                                     f"found shape {self.tensors[tensor].shape}")
        return self.layout(node, index, TO_NHWC)

    def attrs(self, node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _rescale_params(scales_f32: np.ndarray) -> dict:
    """``multiplier`` / ``shift`` / ``scale`` of a float32 requantization scale (exactly as float32)."""
    return Rescale.from_real(np.asarray(scales_f32, np.float32).astype(np.float64).reshape(-1), ROUNDING).params()


def window_attrs(imp, node, kernel_rank_from) -> dict:
    attrs = imp.attrs(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(f"{imp.where(node)}: auto_pad {auto_pad!r} is not supported; export explicit pads")
    kernel = list(attrs.get("kernel_shape", kernel_rank_from))
    if len(kernel) != 2:
        raise UnsupportedOpError(f"{imp.where(node)}: only 2-D windows are supported, found kernel {kernel}")
    if attrs.get("ceil_mode", 0):
        raise UnsupportedOpError(f"{imp.where(node)}: ceil_mode=1 is not supported")
    window = {
        "kernel": kernel,
        "strides": attrs.get("strides", [1, 1]),
        "dilations": attrs.get("dilations", [1, 1]),
        "pads": attrs.get("pads", [0, 0, 0, 0]),  # ONNX (top, left, bottom, right)
    }
    for key, value in window.items():
        length, lo = (4, 0) if key == "pads" else (2, 1)
        if not (isinstance(value, (list, tuple)) and len(value) == length
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo for v in value)):
            raise ValidationError(f"{imp.where(node)}: {key} must be {length} integers >= {lo}, found {value!r}")
        window[key] = [int(v) for v in value]
    return window


# --------------------------------------------------------------------------
# Edges: QuantizeLinear at the input, DequantizeLinear at the output.
# --------------------------------------------------------------------------


@handles("QuantizeLinear")
def _quantize_linear(imp, node):
    source = node.input[0]
    if source not in imp.float_inputs:
        raise UnsupportedOpError(f"{imp.where(node)}: QuantizeLinear is supported only on a graph input, "
                                 f"found it on {source!r}")
    scale, zp, dtype = imp.quant(node, 1, 2, "output")
    vi = imp.float_inputs[source]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if not dims or any(d is not None and d < 1 for d in dims):
        raise ValidationError(f"{imp.where(node)}: graph input {source!r} must have a batch dimension and sizes "
                              f">= 1, found {dims}")
    dims[0] = None  # any batch
    code = imp.add_tensor(node.output[0], dtype, dims, scale, zp)
    imp.inputs.append(code)
    imp.onnx_inputs[source] = code
    imp.values[code] = (code, None)


@handles("DequantizeLinear")
def _dequantize_linear(imp, node):
    if node.output[0] not in imp.float_outputs:
        raise UnsupportedOpError(f"{imp.where(node)}: DequantizeLinear is supported only on a graph output")
    tensor = imp.layout(node, 0, None)
    imp.outputs.append(tensor)
    imp.onnx_outputs[node.output[0]] = tensor


# --------------------------------------------------------------------------
# Multiply-accumulate ops.
# --------------------------------------------------------------------------


def _weight_zero_points(zp, channels):
    return np.ascontiguousarray(np.broadcast_to(np.asarray(zp).reshape(-1), (channels,)).astype(np.int64))


def _int32_bias(imp, node, bias, channels):
    """The int32 bias (or QGemm ``C``) of ``channels`` outputs: onnxruntime takes int32 only, one value or one per
    output channel."""
    if bias is None:
        return np.zeros(channels, np.int32)
    if bias.dtype != np.int32 or bias.size not in (1, channels):
        raise ValidationError(f"{imp.where(node)}: bias must be int32 with 1 or {channels} values, found {bias.dtype} "
                              f"of shape {bias.shape}")
    return np.ascontiguousarray(np.broadcast_to(bias.reshape(-1), (channels,)))


def _weight_quant(imp, node, w, scale, zp):
    """Check a weight's float32 scales and int8 zero points: one value, or one per output channel."""
    channels = w.shape[0] if w.ndim else 1
    for what, value, dtype in (("scale", scale, np.float32), ("zero point", zp, np.int8)):
        if value is None or value.dtype != dtype or value.size not in (1, channels):
            found = "none" if value is None else f"{value.dtype} of shape {value.shape}"
            raise ValidationError(f"{imp.where(node)}: weight {what} must be {np.dtype(dtype)} with 1 or {channels} "
                                  f"values, found {found}")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValidationError(f"{imp.where(node)}: weight scales must be finite and > 0, found {scale.tolist()}")


def _int8_weight(imp, node, w):
    if w.dtype != np.int8:
        raise ValidationError(f"{imp.where(node)}: weights must be int8 (u8s8 / s8s8), found {w.dtype}")
    return w


@handles("QLinearConv")
def _qlinear_conv(imp, node):
    x = imp.nhwc(node, 0)
    x_scale, _, _ = imp.quant(node, 1, 2, "input")
    w = _int8_weight(imp, node, imp.const(node, 3, "weight"))
    if w.ndim != 4:
        raise UnsupportedOpError(f"{imp.where(node)}: only 2-D convolutions (4-D weights) are supported, found "
                                 f"weight shape {w.shape}")
    w_zp = imp.const(node, 5, "weight zero point")
    _weight_quant(imp, node, w, imp.const(node, 4, "weight scale"), w_zp)
    w_scale = _f32(imp.const(node, 4, "weight scale")).reshape(-1)
    y_scale, y_zp, y_dtype = imp.quant(node, 6, 7, "output")
    if np.unique(np.asarray(w_zp)).size > 1:
        raise ValidationError(f"{imp.where(node)}: onnxruntime requires every per-channel weight zero point to be "
                              f"equal, found {np.unique(w_zp).tolist()}")
    cout = w.shape[0]
    bias = _int32_bias(imp, node, imp.const(node, 8, "bias"), cout)
    scales = (x_scale * w_scale) / y_scale  # float32, qlinearconv.cc ComputeOutputScale
    window = window_attrs(imp, node, w.shape[2:])
    if window["kernel"] != list(w.shape[2:]):
        raise ValidationError(f"{imp.where(node)}: kernel_shape {window['kernel']} contradicts the weight's "
                              f"{list(w.shape[2:])}")
    groups = imp.attrs(node).get("group", 1)
    if not isinstance(groups, int) or groups < 1 or cout % groups:
        raise ValidationError(f"{imp.where(node)}: group must be an integer >= 1 dividing the {cout} output "
                              f"channels, found {groups!r}")
    attrs = {"strides": window["strides"], "dilations": window["dilations"], "pads": window["pads"],
             "groups": groups, "rounding": ROUNDING}
    if w.shape[1] == 1 and cout == groups:
        attrs["pairwise_int16"] = False  # qlinearconv.cc: depthwise kernels, exact on every ISA
    params = {
        "weight": np.ascontiguousarray(w.transpose(0, 2, 3, 1)),  # OIHW -> OHWI
        "weight_zero_point": _weight_zero_points(w_zp, cout),
        "bias": bias,
        **_rescale_params(np.broadcast_to(scales, (cout,))),
    }
    out = node.output[0]
    imp.emit("conv2d", node.name or out, [x], attrs, params, out, y_dtype, y_scale, y_zp, out, TO_NHWC)


def _fully_connected(imp, node, a_index, weight_out_in, w_zp, bias, scales, y_q):
    y_scale, y_zp, y_dtype = y_q
    a = imp.layout(node, a_index, None)
    if len(imp.tensors[a].shape) != 2:
        raise UnsupportedOpError(f"{imp.where(node)}: only a 2-D activation operand is supported, "
                                 f"found {imp.tensors[a].shape}")
    cout = weight_out_in.shape[0]
    params = {
        "weight": np.ascontiguousarray(weight_out_in),
        "weight_zero_point": _weight_zero_points(w_zp, cout),
        "bias": bias,
        **_rescale_params(np.broadcast_to(scales, (cout,))),
    }
    out = node.output[0]
    imp.emit("fully_connected", node.name or out, [a], {"rounding": ROUNDING}, params, out, y_dtype, y_scale, y_zp,
             out, None)


@handles("QGemm")
def _qgemm(imp, node):
    attrs = imp.attrs(node)
    if attrs.get("transA", 0):
        raise UnsupportedOpError(f"{imp.where(node)}: transA=1 is not supported")
    a_scale, _, _ = imp.quant(node, 1, 2, "A")
    b = _int8_weight(imp, node, imp.const(node, 3, "B"))
    b_scale = _f32(imp.const(node, 4, "B scale")).reshape(-1)
    if len(node.input) < 9 or not node.input[7]:
        raise UnsupportedOpError(f"{imp.where(node)}: a float output (no y_scale) is not supported")
    y_q = imp.quant(node, 7, 8, "output")
    weight = b if attrs.get("transB", 0) else b.T
    cout = weight.shape[0]
    bias = _int32_bias(imp, node, imp.const(node, 6, "C"), cout)
    alpha = _f32(attrs.get("alpha", 1.0))
    scales = ((alpha * a_scale) * b_scale) / y_q[0]  # float32, quant_gemm.cc ComputeOutputScale
    _fully_connected(imp, node, 0, weight, imp.const(node, 5, "B zero point"), bias, scales, y_q)


@handles("QLinearMatMul")
def _qlinear_matmul(imp, node):
    a_scale, _, _ = imp.quant(node, 1, 2, "A")
    y_q = imp.quant(node, 6, 7, "output")
    if node.input[3] in imp.constants:
        b = _int8_weight(imp, node, imp.const(node, 3, "B"))
        if b.ndim != 2:
            raise UnsupportedOpError(f"{imp.where(node)}: a constant B must be 2-D, found shape {b.shape}")
        b_scale = _f32(imp.const(node, 4, "B scale")).reshape(-1)
        scales = (a_scale * b_scale) / y_q[0]  # float32, quantize_linear_matmul.cc
        bias = np.zeros(b.shape[1], np.int32)
        _fully_connected(imp, node, 0, b.T, imp.const(node, 5, "B zero point"), bias, scales, y_q)
        return
    b_scale, _, _ = imp.quant(node, 4, 5, "B")
    a, b = imp.layout(node, 0, None), imp.layout(node, 3, None)
    scale = (a_scale * b_scale) / y_q[0]
    out = node.output[0]
    imp.emit("matmul", node.name or out, [a, b], {"rounding": ROUNDING}, _rescale_params(np.array([scale])), out,
             y_q[2], y_q[0], y_q[1], out, None)


# --------------------------------------------------------------------------
# Pooling.
# --------------------------------------------------------------------------


def _pool_input(imp, node):
    """``(x, x_scale, y_q)`` of a QLinear pooling node: NHWC input with a known spatial size."""
    if imp.attrs(node).get("channels_last", 0):
        raise UnsupportedOpError(f"{imp.where(node)}: channels_last=1 is not supported")
    x = imp.nhwc(node, 0)
    _, h, w, _ = imp.tensors[x].shape
    if h is None or w is None:
        raise UnsupportedOpError(f"{imp.where(node)}: the spatial size must be known")
    return x, imp.quant(node, 1, 2, "input")[0], imp.quant(node, 3, 4, "output")


def _global_mean(imp, node, x, x_scale, y_q):
    y_scale, y_zp, y_dtype = y_q
    _, h, w, _ = imp.tensors[x].shape
    scale = x_scale / (y_scale * _f32(h * w))  # float32, qlgavgpool.cpp CheckQLinearGlobalAveragePoolScaleAndSize
    out = node.output[0]
    imp.emit("mean", node.name or out, [x], {"axes": [1, 2], "keepdims": True, "rounding": ROUNDING},
             _rescale_params(np.array([scale])), out, y_dtype, y_scale, y_zp, out, TO_NHWC)


@handles("QLinearGlobalAveragePool")
def _qlinear_global_average_pool(imp, node):
    _global_mean(imp, node, *_pool_input(imp, node))


@handles("QLinearAveragePool")
def _qlinear_average_pool(imp, node):
    x, x_scale, y_q = _pool_input(imp, node)
    window = window_attrs(imp, node, None)
    if window["dilations"] != [1, 1]:
        raise UnsupportedOpError(f"{imp.where(node)}: dilations {window['dilations']} are not supported")
    if window["kernel"] == list(imp.tensors[x].shape[1:3]) and not any(window["pads"]):
        # qlinear_pool.cc: a window over the whole image falls back to QLinearGlobalAveragePool.
        _global_mean(imp, node, x, x_scale, y_q)
        return
    y_scale, y_zp, y_dtype = y_q
    attrs = {"kernel": window["kernel"], "strides": window["strides"], "pads": window["pads"],
             "count_include_pad": bool(imp.attrs(node).get("count_include_pad", 0))}
    params = {"x_scale": np.array([x_scale], np.float32), "y_scale": np.array([y_scale], np.float32)}
    out = node.output[0]
    imp.emit("avg_pool_float32", node.name or out, [x], attrs, params, out, y_dtype, y_scale, y_zp, out, TO_NHWC)


@handles("MaxPool")
def lower_max_pool(imp, node):
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOpError(f"{imp.where(node)}: the Indices output is not supported")
    x = imp.nhwc(node, 0)
    info = imp.tensors[x]
    if info.dtype not in ("uint8", "int8"):
        raise UnsupportedOpError(f"{imp.where(node)}: MaxPool on {info.dtype} codes is not supported")
    window = window_attrs(imp, node, None)
    out = node.output[0]
    imp.emit("max_pool", node.name or out, [x], window, {}, out, info.dtype, info.scale, info.zero_point, out,
             TO_NHWC)


# --------------------------------------------------------------------------
# Elementwise ops.
# --------------------------------------------------------------------------


def binary_operands(imp, node):
    """``(a, b, perm)``: the two code operands of a QLinear binary op, in one layout.

    A constant operand (an initializer of codes) becomes an intsim ``constant``
    node.  Operands of different shapes or layouts broadcast in ONNX layout.
    """
    for index, (s, z) in ((0, (1, 2)), (3, (4, 5))):
        name = node.input[index]
        if name in imp.constants and name not in imp.values:
            scale, zp, dtype = imp.quant(node, s, z, f"input {index}")
            value = np.asarray(imp.constants[name])
            if value.dtype != np.dtype(dtype):
                raise ValidationError(f"{imp.where(node)}: constant {name!r} must hold {dtype} codes like its "
                                      f"zero point, found {value.dtype}")
            tensor = imp.unique(name)
            imp.emit("constant", tensor, [], {}, {"value": value}, tensor, dtype, scale, zp, name, None)
    (a, perm_a), (b, perm_b) = imp.value(node, 0), imp.value(node, 3)
    if imp.tensors[a].shape != imp.tensors[b].shape or perm_a != perm_b:
        return imp.layout(node, 0, None), imp.layout(node, 3, None), None
    return a, b, perm_a


@handles("QLinearAdd")
def _qlinear_add(imp, node):
    a_scale, a_zp, _ = imp.quant(node, 1, 2, "A")
    b_scale, b_zp, _ = imp.quant(node, 4, 5, "B")
    y_scale, y_zp, y_dtype = imp.quant(node, 6, 7, "output")
    a, b, perm_a = binary_operands(imp, node)
    a_q, b_q = (a, a_scale, a_zp), (b, b_scale, b_zp)
    if _input0_is_scalar_per_span(imp.tensors[a].shape, imp.tensors[b].shape):
        # qlinear_binary_op.cc: a span where A is one value calls MlasQLinearAdd(B, ..., &A, ...): the
        # operands trade places in the fused multiply-adds below.
        a_q, b_q = b_q, a_q
    (a, a_scale, a_zp), (b, b_scale, b_zp) = a_q, b_q
    # qladd_avx2.cpp, all float32: the zero points go into one offset, added before rounding.
    a_ratio, b_ratio = _f32(a_scale / y_scale), _f32(b_scale / y_scale)
    offset = _f32(_f32(y_zp) - fma_float32(a_ratio, _f32(a_zp), _f32(b_ratio * _f32(b_zp))))
    params = {"a_ratio": np.array([a_ratio], np.float32), "b_ratio": np.array([b_ratio], np.float32),
              "offset": np.array([offset], np.float32)}
    out = node.output[0]
    imp.emit("add_float32_fma", node.name or out, [a, b], {}, params, out, y_dtype, y_scale, y_zp, out, perm_a)


def _input0_is_scalar_per_span(shape_a, shape_b) -> bool:
    """Whether onnxruntime's broadcaster sees input 0 as one value in every span of the output.

    A span is the run of output elements along the innermost axis whose size
    is not 1 (unknown sizes count as not 1); input 0 is one value there when
    its own size on that axis is 1, or when it holds a single element.
    """
    rank = max(len(shape_a), len(shape_b))
    a = (1,) * (rank - len(shape_a)) + tuple(shape_a)
    b = (1,) * (rank - len(shape_b)) + tuple(shape_b)
    if all(d == 1 for d in a):
        return True
    for da, db in zip(reversed(a), reversed(b)):
        if da != 1 or db != 1:
            return da == 1
    return False


@handles("QLinearMul")
def _qlinear_mul(imp, node):
    a_scale, _, _ = imp.quant(node, 1, 2, "A")
    b_scale, _, _ = imp.quant(node, 4, 5, "B")
    y_scale, y_zp, y_dtype = imp.quant(node, 6, 7, "output")
    a, b, perm = binary_operands(imp, node)
    ratio = _f32(_f32(a_scale * b_scale) / y_scale)  # qlmul.cpp: ScaleA * ScaleB / ScaleC in float32
    out = node.output[0]
    imp.emit("mul_float32", node.name or out, [a, b], {}, {"ratio": np.array([ratio], np.float32)}, out, y_dtype,
             y_scale, y_zp, out, perm)


def _table_node(imp, node, fn, x_q, y_q):
    """An intsim ``lut`` node with onnxruntime's float32 table (``QlinearBuildLookupTable``)."""
    (x_scale, x_zp, x_dtype), (y_scale, y_zp, y_dtype) = x_q, y_q
    tensor, perm = imp.value(node, 0)
    table = ort_lookup_table(fn, x_scale, x_zp, x_dtype, y_scale, y_zp, y_dtype)
    out = node.output[0]
    imp.emit("lut", node.name or out, [tensor], {}, {"table": table}, out, y_dtype, y_scale, y_zp, out, perm)


@handles("QLinearLeakyRelu")
def _qlinear_leaky_relu(imp, node):
    alpha = _f32(imp.attrs(node).get("alpha", 0.01))
    _table_node(imp, node, lambda v: np.where(v >= 0, v, alpha * v).astype(np.float32),
                imp.quant(node, 1, 2, "input"), imp.quant(node, 3, 4, "output"))


@handles("QLinearSigmoid")
def _qlinear_sigmoid(imp, node):
    _table_node(imp, node, mlas_logistic, imp.quant(node, 1, 2, "input"), imp.quant(node, 3, 4, "output"))


@handles("QLinearSoftmax")
def _qlinear_softmax(imp, node):
    x_scale, _, x_dtype = imp.quant(node, 1, 2, "input")
    y_scale, y_zp, y_dtype = imp.quant(node, 3, 4, "output")
    if x_dtype != y_dtype:
        raise ValidationError(f"{imp.where(node)}: input and output must be one type, found {x_dtype} and {y_dtype}")
    tensor, perm = imp.value(node, 0)
    rank = len(imp.tensors[tensor].shape)
    attrs = imp.attrs(node)
    axis = int(attrs.get("axis", -1)) % rank
    if attrs.get("opset", 13) < 13 and axis != rank - 1:
        raise UnsupportedOpError(f"{imp.where(node)}: a Softmax of opset < 13 over the axes from {axis} on (not the "
                                 f"last alone) is not supported")
    reduce_len = imp.tensors[tensor].shape[axis]
    if reduce_len is None:
        raise UnsupportedOpError(f"{imp.where(node)}: the softmax axis must have a known size")
    params = {"table": qlinear_softmax_table(x_scale, reduce_len),
              "y_multiplier": np.array([np.floor(_f32(1.0) / y_scale)], np.float32)}
    out = node.output[0]
    imp.emit("softmax_qlinear", node.name or out, [tensor], {"axis": perm.index(axis) if perm else axis}, params,
             out, y_dtype, y_scale, y_zp, out, perm)


@handles("QLinearConcat")
def _qlinear_concat(imp, node):
    y_scale, y_zp, y_dtype = imp.quant(node, 0, 1, "output")
    axis = int(imp.attrs(node)["axis"])
    groups = [(2 + 3 * i, 3 + 3 * i, 4 + 3 * i) for i in range((len(node.input) - 2) // 3)]
    held = {tuple(imp.value(node, t)[1] or ()) for t, _, _ in groups}
    perm = TO_NHWC if held == {tuple(TO_NHWC)} else None
    parts = []
    for t, s, z in groups:
        tensor = imp.layout(node, t, perm)
        x_q = imp.quant(node, s, z, f"input {t}")
        if x_q != (y_scale, y_zp, y_dtype):
            table = ort_lookup_table(lambda v: v, *x_q, y_scale, y_zp, y_dtype)
            requantized = imp.unique(f"{node.input[t]}/requantized")
            tensor = imp.emit("lut", requantized, [tensor], {}, {"table": table}, requantized, y_dtype, y_scale,
                              y_zp)
        parts.append(tensor)
    rank = len(imp.tensors[parts[0]].shape)
    axis %= rank
    if perm is not None:
        axis = perm.index(axis)
    out = node.output[0]
    ones = Rescale.from_real(np.ones(len(parts)), ROUNDING).params()
    imp.emit("concat", node.name or out, parts, {"axis": axis, "rounding": ROUNDING}, ones, out, y_dtype, y_scale,
             y_zp, out, perm)


# --------------------------------------------------------------------------
# Layout ops on codes (the output keeps the input's quantization).
# --------------------------------------------------------------------------


def _same_quant(imp, node, op, attrs, tensor):
    info = imp.tensors[tensor]
    out = node.output[0]
    imp.emit(op, node.name or out, [tensor], attrs, {}, out, info.dtype, info.scale, info.zero_point, out, None)


@handles("Flatten")
def _flatten(imp, node):
    tensor, perm = imp.value(node, 0)
    shape = imp.tensors[tensor].shape
    if perm == TO_NHWC and shape[1] == 1 and shape[2] == 1:
        source = tensor  # H = W = 1: NHWC and NCHW flatten alike
    else:
        source = imp.layout(node, 0, None)
    _same_quant(imp, node, "flatten", {"axis": int(imp.attrs(node).get("axis", 1))}, source)


@handles("Reshape")
def _reshape(imp, node):
    target = imp.const(node, 1, "shape")
    if imp.attrs(node).get("allowzero", 0):
        raise UnsupportedOpError(f"{imp.where(node)}: allowzero=1 is not supported")
    _same_quant(imp, node, "reshape", {"shape": [int(d) for d in target]}, imp.layout(node, 0, None))


@handles("Transpose")
def _transpose(imp, node):
    tensor = imp.layout(node, 0, None)
    perm = imp.attrs(node).get("perm", list(range(len(imp.tensors[tensor].shape)))[::-1])
    _same_quant(imp, node, "transpose", {"perm": [int(p) for p in perm]}, tensor)


@handles("Resize")
def _resize(imp, node):
    """A nearest-neighbour Resize of the spatial axes, on codes (onnxruntime drops its Q/DQ): intsim's
    ``resize_nearest`` with onnxruntime's source indices (:func:`intsim.floatgraph.execute.resize_source_indices`)."""
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in imp.attrs(node).items()}
    mode = (attrs.get("coordinate_transformation_mode", "half_pixel"), attrs.get("nearest_mode", "round_prefer_floor"))
    if attrs.get("mode", "nearest") != "nearest" or mode[0] not in COORDINATE_MODES or mode[1] not in NEAREST_MODES \
            or "axes" in attrs or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError(f"{imp.where(node)}: only a nearest Resize of every axis (keep_aspect_ratio_policy "
                                 f"stretch) is lowered, found {attrs}")
    x = imp.nhwc(node, 0)
    shape = imp.tensors[x].shape
    onnx_shape = [shape[0], shape[3], shape[1], shape[2]]
    sizes = imp.const(node, 3, "sizes")
    if sizes is None:
        scales = imp.const(node, 2, "scales").astype(np.float64)
        sizes = [None if d is None else int(np.floor(d * s)) for d, s in zip(onnx_shape, scales)]
        if any(d is not None and d * s != t for d, s, t in zip(onnx_shape, scales, sizes)):
            raise UnsupportedOpError(f"{imp.where(node)}: scales {scales.tolist()} give a fractional output size")
    sizes = [None if d is None else int(d) for d in sizes]
    if sizes[1] != onnx_shape[1] or (onnx_shape[0] is not None and sizes[0] != onnx_shape[0]) or None in onnx_shape[2:]:
        raise UnsupportedOpError(f"{imp.where(node)}: only H and W of a known NCHW size resize, {onnx_shape} -> {sizes}")
    index_h, index_w = (resize_source_indices(onnx_shape[a], sizes[a], *mode).astype(np.int64) for a in (2, 3))
    info = imp.tensors[x]
    out = node.output[0]
    imp.emit("resize_nearest", node.name or out, [x], {}, {"index_h": index_h, "index_w": index_w}, out, info.dtype,
             info.scale, info.zero_point, out, TO_NHWC)


@handles("Squeeze", "Unsqueeze")
def _squeeze(imp, node):
    axes = imp.attrs(node).get("axes")
    if axes is None:
        axes = imp.const(node, 1, "axes")
    op = "squeeze" if node.op_type == "Squeeze" else "unsqueeze"
    _same_quant(imp, node, op, {"axes": [int(a) for a in axes]}, imp.layout(node, 0, None))
