"""Write an integer graph as a QDQ ONNX model that onnxruntime runs (``Model.to_onnx_qdq``).

Every intsim code tensor becomes a ``QuantizeLinear`` output in the file, and every reader
dequantizes it through its own ``DequantizeLinear`` (the form ``quantize_static`` writes and the
form onnxruntime's ``EnsureUniqueDQForNodeUnit`` makes of any other).  Each op is written so that
onnxruntime's graph optimizer (``docs/qdq.md``, *Fusion rules*) turns it back into the kernel the
integer graph models:

- ``conv2d`` / ``fully_connected`` / ``matmul`` -> ``DQ -> Conv / Gemm / MatMul -> Q``, fused into
  ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul``.  onnxruntime forms the requantization scale
  in float32 from the file's scales (``(s_x s_w) / s_y``); the weight scale (the second operand's,
  for ``matmul``) is chosen, float32 value by float32 value, so that this product *is* the node's
  float32 scale (where a rounded product steps over it, the node's private input DQ and its output
  Q take powers of two).  The int32 bias is written as it is.
- int8 activations are written as uint8 codes with zero point + 128 (real values unchanged; what
  onnxruntime's ``QDQS8ToU8Transformer`` does on x86, where only uint8 activations fuse).
- a node's ``clamp`` narrower than its code range becomes ``DQ -> Clip -> Q`` (exact: every value
  is a dequantized code and the Q inverts the DQ).
- ``mean`` over H, W -> ``GlobalAveragePool`` (``QLinearGlobalAveragePool``, the input scale chosen
  as the weight scale above); ``add_float32_fma`` / ``mul_float32`` / ``avg_pool_float32`` ->
  ``Add`` / ``Mul`` / ``AveragePool`` (``QLinearAdd`` / ``QLinearMul`` / ``QLinearAveragePool``);
  ``max_pool``, ``concat`` and the layout ops -> the op between a DQ and a Q of the same
  quantization (onnxruntime drops them and moves codes).
- ``add`` with a float rounding (``convert`` under the ``onnxruntime`` profile) -> ``DQ(a) + DQ(b)``
  with the node's per-input ratios as the DQ scales, then ``Q`` to int16 with scale 1: the int16
  type keeps onnxruntime from fusing it (no 16-bit ``QLinearAdd``), so it runs the float32 sum and
  rint exactly as intsim does; a second ``DQ -> Q`` adds the output zero point and saturates.
- ``lut`` -> ``Cast`` to int32 and ``Gather`` from the table (integer ops: exact for any table);
  ``resize_nearest`` -> two ``Gather`` of rows and columns of the codes.
- ``softmax_qlinear`` -> ``DQ -> Softmax -> Q`` (``QLinearSoftmax``).
- float islands (``conv2d_float32``, ``gemm_float32``, ``matmul_float32``, ``add_float32``,
  ``global_avg_pool_float32``) -> the float op with float32 weights, its input DQ per axis so that
  onnxruntime's ``WeightBiasQuantization`` leaves the weights float: onnxruntime runs what it ran
  for the QDQ file the graph came from.

Where onnxruntime's arithmetic is not the node's (a profile that requantizes with integer
multipliers, intsim's own ``add`` under integer rounding, a 16-bit MAC that onnxruntime runs in
float32, a scale no float32 weight scale reaches), the file still runs, and
:attr:`QdqExport.inexact` names the node and says why: those are the nodes where onnxruntime's
codes may differ from intsim's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from intsim.codes import dtype_range
from intsim.errors import UnsupportedOpError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES
from intsim.graph import Graph
from intsim.graph.ops import clamp_bounds, rescale_params
from intsim.importers.onnx_islands import CODE_QUANTIZATION
from intsim.kernels.naive.onnxruntime_ops import fma_float32

OPSET = 21  # 16-bit QuantizeLinear / DequantizeLinear in the default domain
TO_NCHW = (0, 3, 1, 2)  # onnx = intsim.transpose(TO_NCHW) for an NHWC intsim tensor
_f32 = np.float32
_EXPORTERS = {}


def exports(*ops):
    def wrap(fn):
        for op in ops:
            _EXPORTERS[op] = fn
        return fn

    return wrap


@dataclass
class QdqExport:
    """What :func:`export_qdq` wrote.

    ``tensors`` maps every intsim code tensor to ``(ONNX code tensor, perm, code offset)``: the
    file's codes are ``intsim_codes.transpose(perm) + offset`` (``perm`` ``None`` for the same
    layout; offset 128 where int8 codes are written as uint8).  ``inexact`` maps the nodes whose
    onnxruntime arithmetic differs from intsim's to the reason.
    """

    path: Path
    tensors: dict = field(default_factory=dict)
    inexact: dict = field(default_factory=dict)


def export_qdq(graph: Graph, path, *, uint8_activations: bool | None = None) -> QdqExport:
    """Write ``graph`` as a QDQ ONNX model at ``path``.

    Parameters
    ----------
    graph : Graph
        Any integer graph (from ``convert``, a TFLite file or a QDQ / QOperator ONNX model).
    path : str or Path
        The ``.onnx`` file to write.
    uint8_activations : bool, optional
        Write int8 activations as uint8 with zero point + 128, as onnxruntime does on x86-64 before
        fusing; ``False`` keeps int8 (onnxruntime on ARM fuses int8 too).  Default: ``False`` for a
        graph read from a QDQ or QOperator ONNX model (its int8 tensors are the ones onnxruntime
        itself keeps int8, whose readers it runs as float islands or int8 ``QLinearAdd``), else
        ``True``.

    Returns
    -------
    QdqExport
        The path, the tensor map and the nodes onnxruntime computes differently, with why.

    Raises
    ------
    UnsupportedOpError
        An op with no QDQ form here, naming the node.
    """
    if uint8_activations is None:
        uint8_activations = graph.metadata.get("source") not in ("onnx_qdq", "onnx_qoperator")
    writer = _Writer(graph, uint8_activations)
    model = writer.run()
    path = Path(path)
    onnx.save(model, str(path))
    return QdqExport(path, writer.held_map(), writer.inexact)


class _Writer:
    def __init__(self, graph: Graph, uint8_activations: bool):
        self.graph = graph
        self.uint8 = uint8_activations
        self.nodes: list = []
        self.initializers: list = []
        self.names: set = set()
        self.held: dict[str, tuple[str, tuple | None]] = {}  # intsim tensor -> (onnx codes, perm)
        self.inexact: dict[str, str] = {}
        self.table_outputs: dict[str, list] = {}  # file codes written by a Gather -> [scale, zero point, dtype]

    # --- the file ----------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        graph = self.graph
        # A graph read from ONNX keeps that file's float edge names; others name the edges by their code tensors.
        float_names = {code: name for name, code in {**graph.metadata.get("onnx_inputs", {}),
                                                     **graph.metadata.get("onnx_outputs", {})}.items()}
        inputs = []
        for t in graph.inputs:
            info = graph.tensors[t]
            name = float_names.get(t, t)
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, _dims(info.shape)))
            self.names.add(name)
            self.quantize(t, name, None)
        for node in graph.nodes:
            exporter = _EXPORTERS.get(node.op)
            if exporter is None:
                raise UnsupportedOpError(f"{node.op} {node.name!r}: no QDQ ONNX form for op {node.op!r}; "
                                         f"supported: {', '.join(sorted(_EXPORTERS))}")
            reason = exporter(self, node)
            if reason:
                self.inexact[node.name] = reason
        outputs = []
        for t in graph.outputs:
            info = graph.tensors[t]
            out = self.unique(float_names.get(t, t))
            self.node("DequantizeLinear", [self.codes(t, None), *self.qparams(t)], [out])
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, _dims(info.shape)))
        onnx_graph = helper.make_graph(self.nodes, graph.name or "intsim", inputs, outputs, self.initializers)
        model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="intsim")
        model.ir_version = 10
        if self.table_outputs:  # what no reader of a table's output says (a table read by another table)
            helper.set_model_props(model, {CODE_QUANTIZATION: json.dumps(self.table_outputs)})
        return model

    def held_map(self) -> dict:
        return {t: (codes, perm, self.offset(t)) for t, (codes, perm) in self.held.items()}

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def node(self, op, inputs, outputs, name=None, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.unique(name or f"{outputs[0]}/{op}"),
                                           **attrs))
        return outputs[0]

    def init(self, base, array) -> str:
        name = self.unique(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    # --- code tensors --------------------------------------------------------
    def offset(self, t) -> int:
        return 128 if self.uint8 and self.graph.tensors[t].dtype == "int8" else 0

    def file_dtype(self, t) -> str:
        return "uint8" if self.offset(t) else self.graph.tensors[t].dtype

    def qparams(self, t, scale=None, repeat=None) -> list[str]:
        """The scale and zero point initializers of tensor ``t`` as the file holds its codes (each
        repeated ``repeat`` times for a per-axis DQ)."""
        info = self.graph.tensors[t]
        scale = _f32(info.scale if scale is None else scale)
        zp = np.array(info.zero_point + self.offset(t), self.file_dtype(t))
        if repeat is not None:
            scale, zp = np.full(repeat, scale), np.full(repeat, zp)
        return [self.init(f"{t}/scale", scale), self.init(f"{t}/zero_point", zp)]

    def quantize(self, t, source, perm, scale=None) -> str:
        """``Q(source)`` as the codes of intsim tensor ``t`` held in layout ``perm``."""
        codes = self.unique(f"{t}/q")
        self.node("QuantizeLinear", [source, *self.qparams(t, scale)], [codes])
        self.held[t] = (codes, perm)
        return codes

    def alias(self, t, codes, perm):
        self.held[t] = (codes, perm)

    def codes(self, t, perm) -> str:
        """The file's codes of ``t`` in layout ``perm``: a ``DQ -> Transpose -> Q`` (dropped by
        onnxruntime) where they are held in another."""
        codes, held = self.held[t]
        if held == perm:
            return codes
        inverse = np.argsort(held) if held is not None else np.arange(len(self.graph.tensors[t].shape))
        step = [int(inverse[p]) for p in (perm if perm is not None else range(len(inverse)))]
        moved = self.node("Transpose", [self.dequantize(t)], [self.unique(f"{t}/moved")], perm=step)
        out = self.unique(f"{t}/q")
        self.node("QuantizeLinear", [moved, *self.qparams(t)], [out])
        self.held[t] = (out, perm)
        return out

    def dequantize(self, t, perm="held", scale=None, per_axis=False) -> str:
        """A DQ of ``t``'s codes for one reader (``scale`` overrides the tensor's).  ``per_axis``
        writes the one scale and zero point once per element of the tensor's longest known axis:
        the same values, but no longer a per-tensor DQ, which keeps onnxruntime's
        ``WeightBiasQuantization`` from quantizing a float island's weights."""
        codes = self.held[t][0] if perm == "held" else self.codes(t, perm)
        if not per_axis:
            return self.node("DequantizeLinear", [codes, *self.qparams(t, scale)], [self.unique(f"{t}/dq")])
        shape = self.graph.tensors[t].shape
        held = self.held[t][1]
        dims = [shape[p] or 1 for p in (held if held is not None else range(len(shape)))]
        axis = int(np.argmax(dims))
        return self.node("DequantizeLinear", [codes, *self.qparams(t, scale, dims[axis])], [self.unique(f"{t}/dq")],
                         axis=axis)

    def finish(self, node, value, perm, scale=None) -> None:
        """``Q(value)`` into the node's output (with ``scale`` in place of the tensor's where given), then
        its clamp where narrower than the code range."""
        t = node.outputs[0]
        info = self.graph.tensors[t]
        lo, hi = clamp_bounds(node, info)
        full = dtype_range(info.dtype)
        self.quantize(t, value, perm, scale)
        if (lo, hi) == full:
            return
        bounds = [self.init(f"{t}/clamp_min", self.dequantized(t, lo)), self.init(f"{t}/clamp_max", self.dequantized(t, hi))]
        clipped = self.node("Clip", [self.dequantize(t), *bounds], [self.unique(f"{t}/clipped")])
        self.quantize(t, clipped, perm)

    def dequantized(self, t, code) -> np.float32:
        """``DequantizeLinear`` of one code as onnxruntime computes it: ``float32(code - z) * s``."""
        info = self.graph.tensors[t]
        return _f32(_f32(code - info.zero_point) * _f32(info.scale))

    # --- requantization scales -------------------------------------------
    def target_scales(self, node, channels) -> tuple[np.ndarray, str | None]:
        """The node's float32 requantization scale per channel, and why onnxruntime's differs (or ``None``)."""
        rescale = rescale_params(node, self.graph, channels=channels)
        if rescale.rounding in INTEGER_ROUNDING_MODES:
            real = rescale.multiplier.astype(np.float64) * 2.0 ** (rescale.shift.astype(np.float64) - self.graph.profile.multiplier_bits)
            return real.astype(np.float32), (f"requantizes with {rescale.rounding!r} rounding; onnxruntime with "
                                             f"float32 rint of the same real scale")
        reason = None if rescale.rounding == "float32_rint" else (
            f"requantizes with {rescale.rounding!r}; onnxruntime with float32 rint")
        return np.asarray(rescale.scale, np.float64).astype(np.float32), reason


def _dims(shape):
    return [d if d is not None else "N" for d in shape]


def solve_operand_scale(target, formed) -> np.float32 | None:
    """A float32 ``v`` with ``formed(v) == target``, where ``formed`` is onnxruntime's float32 formula
    of a requantization scale from one free operand scale (nondecreasing in ``v``), or ``None``.

    Starts from the estimate ``formed`` inverts to in float64 and walks float32 neighbours; a
    rounded product or quotient can step over ``target``, and then no float32 reaches it.
    """
    target = _f32(target)
    v = _f32(np.float64(target) / np.float64(formed(_f32(1.0))))
    seen = set()
    while v not in seen and len(seen) < 64:
        seen.add(v)
        got = formed(v)
        if got == target:
            return v
        v = np.nextafter(v, _f32(np.inf) if got < target else _f32(0.0), dtype=np.float32)
    return None


def _power_of_two(value) -> np.float32:
    return _f32(2.0 ** np.round(np.log2(np.float64(value))))


def mac_scales(targets, x_scale, y_scale):
    """``(x_scale, w_scales, y_scale)`` in float32 with ``(x_scale * w_scale) / y_scale == target`` in
    float32 for every target (onnxruntime's ``ComputeOutputScale``), or ``None``.

    The tensors' own scales first; where a target cannot be reached with them, the node's private
    input DQ and its output Q take the powers of two nearest those scales, which make both
    roundings exact, and the weight scale is the target times a power of two.
    """
    for sx, sy in ((_f32(x_scale), _f32(y_scale)), (_power_of_two(x_scale), _power_of_two(y_scale))):
        scales = [solve_operand_scale(t, lambda w: _f32(_f32(sx * w) / sy)) for t in np.asarray(targets).reshape(-1)]
        if all(v is not None for v in scales):
            return sx, np.array(scales, np.float32), sy
    return None


# --------------------------------------------------------------------------
# Multiply-accumulate ops.
# --------------------------------------------------------------------------


def _mac_reason(ex, node, dtypes) -> str | None:
    wide = [d for d in dtypes if np.dtype(d).itemsize > 1]
    if wide:
        return f"{'/'.join(wide)} operands: onnxruntime runs this node in float32 (no 16-bit QLinear kernel)"
    if not ex.uint8 and "int8" in dtypes[:1]:
        return "int8 activations: onnxruntime on x86-64 runs an int8 convolution in float32"
    return None


def _mac_quantization(ex, node, channels, x, y):
    """``(x_scale, w_scales, y_scale, reason)`` for the file, ``reason`` ``None`` where exact."""
    targets, reason = ex.target_scales(node, channels)
    sx, sy = ex.graph.tensors[x].scale, ex.graph.tensors[y].scale
    solved = mac_scales(targets, sx, sy)
    if solved is None:
        return _f32(sx), (targets * _f32(sy) / _f32(sx)).astype(np.float32), _f32(sy), (
            reason or "no float32 scales give the node's requantization scale")
    return (*solved, reason)


def _weights(ex, node, weight, x_scale, scales, axis=0) -> tuple[str, str]:
    """``(weight DQ, bias DQ)`` of a weight-stationary node (``weight`` already in ONNX layout)."""
    zp = node.params["weight_zero_point"]
    if np.unique(zp).size != 1:
        raise UnsupportedOpError(f"{node.op} {node.name!r}: onnxruntime needs one weight zero point for every "
                                 f"channel, found {np.unique(zp).tolist()}")
    if weight.dtype not in (np.int8, np.uint8):
        raise UnsupportedOpError(f"{node.op} {node.name!r}: weights must be 8-bit for a QDQ file here, found "
                                 f"{weight.dtype}")
    name = node.name
    w_zp = np.full(scales.shape, zp[0], weight.dtype)
    w = ex.node("DequantizeLinear", [ex.init(f"{name}/weight", weight), ex.init(f"{name}/weight_scale", scales),
                                     ex.init(f"{name}/weight_zero_point", w_zp)],
                [ex.unique(f"{name}/weight/dq")], axis=axis)
    bias_scale = (x_scale * scales).astype(np.float32)
    b = ex.node("DequantizeLinear", [ex.init(f"{name}/bias", node.params["bias"].astype(np.int32)),
                                     ex.init(f"{name}/bias_scale", bias_scale),
                                     ex.init(f"{name}/bias_zero_point", np.zeros(scales.shape, np.int32))],
                [ex.unique(f"{name}/bias/dq")], axis=0)
    return w, b


@exports("conv2d")
def _conv2d(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    sx, scales, sy, reason = _mac_quantization(ex, node, node.params["weight"].shape[0], x, y)
    w, b = _weights(ex, node, np.ascontiguousarray(node.params["weight"].transpose(0, 3, 1, 2)), sx, scales)
    pads = list(node.attrs.get("pads", (0, 0, 0, 0)))
    conv = ex.node("Conv", [ex.dequantize(x, TO_NCHW, scale=sx), w, b], [ex.unique(f"{y}/conv")], name=node.name,
                   strides=list(node.attrs.get("strides", (1, 1))), dilations=list(node.attrs.get("dilations", (1, 1))),
                   pads=pads, group=int(node.attrs.get("groups", 1)))
    ex.finish(node, conv, TO_NCHW, sy)
    return reason or _mac_reason(ex, node, [ex.graph.tensors[x].dtype, ex.graph.tensors[y].dtype])


@exports("fully_connected")
def _fully_connected(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    sx, scales, sy, reason = _mac_quantization(ex, node, node.params["weight"].shape[0], x, y)
    w, b = _weights(ex, node, node.params["weight"], sx, scales)
    gemm = ex.node("Gemm", [ex.dequantize(x, None, scale=sx), w, b], [ex.unique(f"{y}/gemm")], name=node.name,
                   transB=1)
    ex.finish(node, gemm, None, sy)
    return reason or _mac_reason(ex, node, [ex.graph.tensors[x].dtype, ex.graph.tensors[y].dtype])


@exports("matmul")
def _matmul(ex, node):
    (a, b), y = node.inputs, node.outputs[0]
    sa, (sb,), sy, reason = _mac_quantization(ex, node, 1, a, y)
    product = ex.node("MatMul", [ex.dequantize(a, None, scale=sa), ex.dequantize(b, None, scale=sb)],
                      [ex.unique(f"{y}/matmul")], name=node.name)
    ex.finish(node, product, None, sy)
    return reason or _mac_reason(ex, node, [ex.graph.tensors[t].dtype for t in (a, b, y)])


# --------------------------------------------------------------------------
# Elementwise ops and pools.
# --------------------------------------------------------------------------


def _same_layout(ex, node):
    """The layout every input is held in where they all agree and have one shape, else ``None`` (ONNX's)."""
    held = {ex.held[t][1] for t in node.inputs}
    shapes = {ex.graph.tensors[t].shape for t in node.inputs}
    return held.pop() if len(held) == 1 and len(shapes) == 1 else None


@exports("add_float32_fma")
def _add_float32_fma(ex, node):
    perm = _same_layout(ex, node)
    (a, b), y = node.inputs, node.outputs[0]
    q = {t: (_f32(ex.graph.tensors[t].scale), _f32(ex.graph.tensors[t].zero_point + ex.offset(t))) for t in (a, b, y)}
    a_ratio, b_ratio = _f32(q[a][0] / q[y][0]), _f32(q[b][0] / q[y][0])
    # onnxruntime may swap the operands (a span where A is one value), so either order is its formula.
    formed = {(r1, r2, _f32(q[y][1] - fma_float32(r1, z1, _f32(r2 * z2))))
              for r1, z1, r2, z2 in ((a_ratio, q[a][1], b_ratio, q[b][1]), (b_ratio, q[b][1], a_ratio, q[a][1]))}
    stored = tuple(_f32(node.params[k].reshape(-1)[0]) for k in ("a_ratio", "b_ratio", "offset"))
    reason = None if stored in formed else "onnxruntime forms its float32 ratios and offset differently from the file's"
    total = ex.node("Add", [ex.dequantize(a, perm), ex.dequantize(b, perm)], [ex.unique(f"{y}/add")], name=node.name)
    ex.finish(node, total, perm)
    return reason


@exports("mul_float32")
def _mul_float32(ex, node):
    perm = _same_layout(ex, node)
    (a, b), y = node.inputs, node.outputs[0]
    s = [_f32(ex.graph.tensors[t].scale) for t in (a, b, y)]
    ratio = _f32(_f32(s[0] * s[1]) / s[2])  # qlmul.cpp
    reason = None if _f32(node.params["ratio"].reshape(-1)[0]) == ratio else "onnxruntime forms another float32 ratio"
    product = ex.node("Mul", [ex.dequantize(a, perm), ex.dequantize(b, perm)], [ex.unique(f"{y}/mul")], name=node.name)
    ex.finish(node, product, perm)
    return reason


@exports("add")
def _add(ex, node):
    perm = _same_layout(ex, node)
    (a, b), y = node.inputs, node.outputs[0]
    rescales = {p: rescale_params(node, ex.graph, p) for p in ("a_", "b_", "out_")}
    if rescales["out_"].rounding != "float32_rint":
        total = ex.node("Sub" if node.attrs.get("subtract") else "Add",
                        [ex.dequantize(a, perm), ex.dequantize(b, perm)], [ex.unique(f"{y}/add")], name=node.name)
        ex.finish(node, total, perm)
        return (f"intsim's add rescales each input then the sum ({rescales['out_'].rounding!r}); onnxruntime's "
                f"QLinearAdd rounds once in float32")
    # float32: real = float32(a - za) * ratio_a + float32(b - zb) * ratio_b, rint, + zo: a DQ's product is the
    # first term exactly; the int16 Q (scale 1) rounds the sum and keeps the group out of QLinearAdd.
    ratios = [_f32(rescales[p].scale.reshape(-1)[0]) for p in ("a_", "b_")]
    total = ex.node("Sub" if node.attrs.get("subtract") else "Add",
                    [ex.dequantize(a, perm, scale=ratios[0]), ex.dequantize(b, perm, scale=ratios[1])],
                    [ex.unique(f"{y}/add")], name=node.name)
    unit = [ex.init(f"{y}/unit_scale", _f32(1.0)), ex.init(f"{y}/sum_zero_point", np.array(0, np.int16))]
    rounded = ex.node("QuantizeLinear", [total, *unit], [ex.unique(f"{y}/sum")])
    real = ex.node("DequantizeLinear", [rounded, *unit], [ex.unique(f"{y}/sum/dq")])
    out_zp = np.array(ex.graph.tensors[y].zero_point + ex.offset(y), ex.file_dtype(y))
    codes = ex.unique(f"{y}/q")
    ex.node("QuantizeLinear", [real, ex.init(f"{y}/unit_scale", _f32(1.0)), ex.init(f"{y}/zero_point", out_zp)],
            [codes])
    ex.alias(y, codes, perm)
    lo, hi = clamp_bounds(node, ex.graph.tensors[y])
    if (lo, hi) != dtype_range(ex.graph.tensors[y].dtype):
        bounds = [ex.init(f"{y}/clamp_min", ex.dequantized(y, lo)), ex.init(f"{y}/clamp_max", ex.dequantized(y, hi))]
        clipped = ex.node("Clip", [ex.dequantize(y), *bounds], [ex.unique(f"{y}/clipped")])
        ex.quantize(y, clipped, perm)
    if np.dtype(ex.graph.tensors[y].dtype).itemsize > 1:
        return "a 16-bit output: the file saturates the rounded sum to int16 before adding the zero point"
    return None


@exports("mean")
def _mean(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    info = ex.graph.tensors[x]
    if len(info.shape) != 4 or list(node.attrs.get("axes", [])) not in ([1, 2], [-3, -2]):
        raise UnsupportedOpError(f"mean {node.name!r}: only the mean over H and W of an NHWC tensor has a QDQ form "
                                 f"here, found axes {node.attrs.get('axes')} of shape {info.shape}")
    targets, reason = ex.target_scales(node, 1)
    count = _f32(info.shape[1] * info.shape[2])
    sx, sy = _mean_scales(targets[0], info.scale, ex.graph.tensors[y].scale, count)
    if sx is None:
        sx, sy = _f32(targets[0] * _f32(ex.graph.tensors[y].scale) * count), _f32(ex.graph.tensors[y].scale)
        reason = reason or "no float32 scales give the node's requantization scale"
    pooled = ex.node("GlobalAveragePool", [ex.dequantize(x, TO_NCHW, scale=sx)], [ex.unique(f"{y}/pooled")],
                     name=node.name)
    if node.attrs.get("keepdims", False):
        ex.finish(node, pooled, TO_NCHW, sy)
    else:  # Q right after the pool (the group onnxruntime fuses), then a Flatten on codes
        kept = ex.node("QuantizeLinear", [pooled, *ex.qparams(y, sy)], [ex.unique(f"{y}/pooled/q")])
        flat = ex.node("Flatten", [ex.node("DequantizeLinear", [kept, *ex.qparams(y)], [ex.unique(f"{y}/pooled/dq")])],
                       [ex.unique(f"{y}/flat")], axis=1)
        ex.finish(node, flat, None)
    return reason or _mac_reason(ex, node, [info.dtype])


def _mean_scales(target, x_scale, y_scale, count):
    """``(x_scale, y_scale)`` in float32 with ``x_scale / (y_scale * count) == target`` in float32
    (``QLinearGlobalAveragePool``), or ``(None, None)``: the tensors' output scale first, else one
    whose product with ``count`` is a power of two (then the quotient is exact)."""
    sy = _f32(y_scale)
    sx = solve_operand_scale(target, lambda v: _f32(v / _f32(sy * count)))
    if sx is not None:
        return sx, sy
    power = _power_of_two(y_scale * count)
    for sy in (_f32(power / count), *np.nextafter(_f32(power / count), [_f32(0), _f32(np.inf)]).astype(np.float32)):
        if _f32(sy * count) == power:
            return _f32(_f32(target) * power), sy
    return None, None


@exports("avg_pool_float32", "avg_pool_float32_island")
def _avg_pool(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    attrs = node.attrs
    pooled = ex.node("AveragePool", [ex.dequantize(x, TO_NCHW)], [ex.unique(f"{y}/pooled")], name=node.name,
                     kernel_shape=list(attrs["kernel"]), strides=list(attrs.get("strides", (1, 1))),
                     pads=list(attrs.get("pads", (0, 0, 0, 0))),
                     count_include_pad=int(bool(attrs.get("count_include_pad", False))))
    ex.finish(node, pooled, TO_NCHW)
    return None


@exports("max_pool")
def _max_pool(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    a = node.attrs
    pooled = ex.node("MaxPool", [ex.dequantize(x, TO_NCHW)], [ex.unique(f"{y}/pooled")], name=node.name,
                     kernel_shape=list(a["kernel"]), strides=list(a.get("strides", (1, 1))),
                     dilations=list(a.get("dilations", (1, 1))), pads=list(a.get("pads", (0, 0, 0, 0))))
    ex.finish(node, pooled, TO_NCHW)
    return None if ex.graph.tensors[x].same_quantization(ex.graph.tensors[y]) else \
        "input and output quantized differently: onnxruntime does not fuse, it requantizes in float32"


@exports("concat")
def _concat(ex, node):
    held = {ex.held[t][1] for t in node.inputs}
    perm = held.pop() if len(held) == 1 else None
    rank = len(ex.graph.tensors[node.inputs[0]].shape)
    axis = int(node.attrs["axis"]) % rank
    onnx_axis = list(perm).index(axis) if perm is not None else axis
    y = node.outputs[0]
    joined = ex.node("Concat", [ex.dequantize(t, perm) for t in node.inputs], [ex.unique(f"{y}/concat")],
                     name=node.name, axis=int(onnx_axis))
    ex.finish(node, joined, perm)
    out = ex.graph.tensors[y]
    if all(ex.graph.tensors[t].same_quantization(out) for t in node.inputs):
        return None
    return "inputs quantized unlike the output: onnxruntime requantizes them with its own float32 tables"


@exports("lut")
def _lut(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    table = node.params["table"].astype(np.int64) + ex.offset(y)
    codes, perm = ex.held[x]
    index = ex.node("Cast", [codes], [ex.unique(f"{x}/index")], to=TensorProto.INT32)
    lo = dtype_range(ex.file_dtype(x))[0]
    if lo:
        index = ex.node("Sub", [index, ex.init(f"{x}/code_min", np.array(lo, np.int32))], [ex.unique(f"{x}/index")])
    out = ex.unique(f"{y}/q")
    ex.node("Gather", [ex.init(f"{node.name}/table", table.astype(ex.file_dtype(y))), index], [out], name=node.name)
    ex.alias(y, out, perm)
    info = ex.graph.tensors[y]
    ex.table_outputs[out] = [info.scale, info.zero_point + ex.offset(y), ex.file_dtype(y)]
    return None


@exports("transpose")
def _transpose(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    codes, held = ex.held[x]
    q = list(node.attrs["perm"])
    # onnx = x.transpose(held) and y = x.transpose(q): the same codes hold y in layout inverse(q)[held].
    inverse = list(np.argsort(q))
    base = held if held is not None else range(len(q))
    perm = tuple(int(inverse[p]) for p in base)
    ex.alias(y, codes, None if perm == tuple(range(len(q))) else perm)
    return None


def _layout_op(onnx_op, attrs_of):
    def export(ex, node):
        x, y = node.inputs[0], node.outputs[0]
        inputs, attrs = attrs_of(ex, node)
        moved = ex.node(onnx_op, [ex.dequantize(x, None), *inputs], [ex.unique(f"{y}/{onnx_op.lower()}")],
                        name=node.name, **attrs)
        ex.quantize(y, moved, None)
        return None

    return export


_EXPORTERS["reshape"] = _layout_op("Reshape", lambda ex, n: (
    [ex.init(f"{n.name}/shape", np.array(n.attrs["shape"], np.int64))], {}))
_EXPORTERS["flatten"] = _layout_op("Flatten", lambda ex, n: ([], {"axis": int(n.attrs.get("axis", 1))}))
_EXPORTERS["squeeze"] = _layout_op("Squeeze", lambda ex, n: (
    [ex.init(f"{n.name}/axes", np.array(n.attrs["axes"], np.int64))], {}))
_EXPORTERS["unsqueeze"] = _layout_op("Unsqueeze", lambda ex, n: (
    [ex.init(f"{n.name}/axes", np.array(n.attrs["axes"], np.int64))], {}))


@exports("constant")
def _constant(ex, node):
    y = node.outputs[0]
    value = node.params["value"].astype(np.int64) + ex.offset(y)
    ex.alias(y, ex.init(f"{y}/codes", value.astype(ex.file_dtype(y))), None)
    return None


# --------------------------------------------------------------------------
# Float islands (a QDQ model's groups onnxruntime leaves in float32): written back as float ops
# between a DQ and a Q, with their float32 weights, so onnxruntime runs the same float kernels.
# --------------------------------------------------------------------------

_SUMMATION_ORDER = ("a float island: onnxruntime sums in MLAS's float32 order, intsim in the profile's "
                    "float_island_order (MLAS's, measured on x86-64, under onnxruntime)")


def _scale(node, key) -> np.float32:
    return _f32(node.params[key].reshape(-1)[0])


@exports("conv2d_float32")
def _conv2d_float32(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    a = node.attrs
    weight = ex.init(f"{node.name}/weight", np.ascontiguousarray(node.params["weight"].transpose(0, 3, 1, 2)))
    conv = ex.node("Conv", [ex.dequantize(x, TO_NCHW, scale=_scale(node, "x_scale"), per_axis=True), weight,
                            ex.init(f"{node.name}/bias", node.params["bias"].astype(np.float32))],
                   [ex.unique(f"{y}/conv")], name=node.name, strides=list(a.get("strides", (1, 1))),
                   dilations=list(a.get("dilations", (1, 1))), pads=list(a.get("pads", (0, 0, 0, 0))),
                   group=int(a.get("groups", 1)))
    ex.finish(node, conv, TO_NCHW, _scale(node, "y_scale"))
    return _SUMMATION_ORDER


@exports("gemm_float32")
def _gemm_float32(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    gemm = ex.node("Gemm", [ex.dequantize(x, None, scale=_scale(node, "a_scale"), per_axis=True),
                            ex.init(f"{node.name}/weight", node.params["weight"].astype(np.float32)),
                            ex.init(f"{node.name}/bias", node.params["bias"].astype(np.float32))],
                   [ex.unique(f"{y}/gemm")], name=node.name)
    ex.finish(node, gemm, None, _scale(node, "y_scale"))
    return _SUMMATION_ORDER


@exports("add_float32")
def _add_float32(ex, node):
    perm = _same_layout(ex, node)
    (a, b), y = node.inputs, node.outputs[0]
    total = ex.node("Add", [ex.dequantize(a, perm, scale=_scale(node, "a_scale")),
                            ex.dequantize(b, perm, scale=_scale(node, "b_scale"))], [ex.unique(f"{y}/add")],
                    name=node.name)
    ex.finish(node, total, perm, _scale(node, "y_scale"))
    return None


@exports("global_avg_pool_float32")
def _global_avg_pool_float32(ex, node):
    x, y = node.inputs[0], node.outputs[0]
    pooled = ex.node("GlobalAveragePool", [ex.dequantize(x, TO_NCHW, scale=_scale(node, "x_scale"))],
                     [ex.unique(f"{y}/pooled")], name=node.name)
    ex.finish(node, pooled, TO_NCHW, _scale(node, "y_scale"))
    return None


@exports("softmax_qlinear")
def _softmax_qlinear(ex, node):
    from intsim.importers.onnxruntime_tables import qlinear_softmax_table

    x, y = node.inputs[0], node.outputs[0]
    codes, held = ex.held[x]
    info = ex.graph.tensors[x]
    axis = int(node.attrs.get("axis", -1)) % len(info.shape)
    onnx_axis = list(held).index(axis) if held is not None else axis
    soft = ex.node("Softmax", [ex.dequantize(x)], [ex.unique(f"{y}/softmax")], name=node.name, axis=onnx_axis)
    ex.finish(node, soft, held)
    formed = (qlinear_softmax_table(info.scale, info.shape[axis]),
              np.floor(_f32(1.0) / _f32(ex.graph.tensors[y].scale)))
    same = np.array_equal(node.params["table"], formed[0]) and node.params["y_multiplier"][0] == formed[1]
    return None if same else "onnxruntime builds another exp table or output multiplier from the file's scales"


@exports("resize_nearest")
def _resize_nearest(ex, node):
    # Gather of the source rows, then columns, on the NCHW codes: the node's index tables, whatever mode made them.
    x, y = node.inputs[0], node.outputs[0]
    codes = ex.codes(x, TO_NCHW)
    for axis, key in ((2, "index_h"), (3, "index_w")):
        codes = ex.node("Gather", [codes, ex.init(f"{node.name}/{key}", node.params[key].astype(np.int64))],
                        [ex.unique(f"{y}/{key}")], name=f"{node.name}/{key}", axis=axis)
    ex.alias(y, codes, TO_NCHW)
    return None


@exports("matmul_float32")
def _matmul_float32(ex, node):
    (a, b), y = node.inputs, node.outputs[0]
    product = ex.node("MatMul", [ex.dequantize(a, None, scale=_scale(node, "a_scale")),
                                 ex.dequantize(b, None, scale=_scale(node, "b_scale"))],
                      [ex.unique(f"{y}/matmul")], name=node.name)
    ex.finish(node, product, None, _scale(node, "y_scale"))
    return _SUMMATION_ORDER
