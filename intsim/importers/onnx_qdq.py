"""Import a QDQ ONNX model (float ops between ``QuantizeLinear`` / ``DequantizeLinear``) as an intsim integer graph.

``onnxruntime.quantization.quantize_static`` writes QDQ by default, and so do
most other quantization tools: every quantized tensor is a ``QuantizeLinear``
(Q) followed by a ``DequantizeLinear`` (DQ), weights are int8 initializers
behind a DQ, biases int32 initializers behind a DQ, and the ops between are the
float ONNX ops.  What a chip computes for such a model is not written in the
file: it is what the runtime's graph optimizer makes of each ``DQ -> op -> Q``
group.

:func:`load_onnx_qdq` does what onnxruntime's CPU graph optimizer does with
default session options (``docs/qdq.md`` lists the rules and the onnxruntime
sources they come from): it rewrites the QDQ graph into the QOperator graph
onnxruntime runs (:func:`qdq_to_qoperator`: ``QLinearConv``, ``QLinearMatMul``,
``QGemm``, ``QLinearAdd`` ...; Q/DQ dropped around data-movement ops; a
``Relu`` or ``Clip`` that the following Q makes redundant removed; int8
activation Q/DQ pairs turned into uint8 ones), then lowers that graph with the
QOperator importer (:mod:`intsim.importers.onnx_qop`), which already reproduces
onnxruntime's QLinear kernels bit for bit.  Scales, zero points, weight codes
and int32 biases are the file's; nothing is calibrated here.

``graph.metadata["qdq"]`` records, per ONNX node of the QDQ file, how it ran:
``"fused"`` (the QLinear op it became), ``"dropped"`` (a data-movement op on
codes, a redundant Relu/Clip) or ``"float"`` (a float island; see
:data:`ISLANDS`), or ``"unsupported"`` (a float op with no lowering: the import fails).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from intsim.codes import dtype_range
from intsim.errors import ModelFormatError, UnsupportedOpError
from intsim.graph import Graph
from intsim.importers.onnx import read_onnx
from intsim.importers.onnx_ops import read_initializer
from intsim.importers import onnx_islands  # noqa: F401  (registers the island and codes lowerings)
from intsim.importers.onnx_qop import QOPERATOR_OPS as QOPERATOR_HANDLERS
from intsim.importers.onnx_qop import load_onnx_qoperator
from intsim.importers.onnx_retarget import retarget
from intsim.profiles import get_profile

Q, DQ = "QuantizeLinear", "DequantizeLinear"
MS_DOMAIN = "com.microsoft"

_FUSERS = {}


def _fuses(*op_types):
    def wrap(fn):
        for op_type in op_types:
            _FUSERS[op_type] = fn
        return fn

    return wrap


def onnx_format(model) -> str:
    """``"qoperator"``, ``"qdq"`` or ``"float"``: how an ONNX model is quantized.

    QOperator when any node is a QLinear op or ``QGemm`` (those formats mix Q/DQ
    only at the edges); QDQ when it has ``QuantizeLinear`` / ``DequantizeLinear``
    nodes and no QLinear op; float otherwise.
    """
    op_types = {node.op_type for node in read_onnx(model).graph.node}
    if any(op in QOPERATOR_HANDLERS and op not in (Q, DQ) and (op.startswith("QLinear") or op == "QGemm")
           for op in op_types):
        return "qoperator"
    if op_types & {Q, DQ}:
        return "qdq"
    return "float"


def load_onnx(model, profile=None) -> Graph:
    """The integer graph of a quantized ONNX model, QDQ or QOperator (:func:`onnx_format` decides).

    ``profile`` defaults to ``"onnxruntime"``.  A float model raises
    :class:`~intsim.errors.ModelFormatError` pointing to :func:`intsim.convert`.
    """
    proto = read_onnx(model)
    fmt = onnx_format(proto)
    if fmt == "float":
        raise ModelFormatError(f"model {proto.graph.name!r}: a float ONNX model (no QuantizeLinear, "
                               f"DequantizeLinear or QLinear op); quantize it with intsim.convert(model, ...)")
    profile = "onnxruntime" if profile is None else profile
    if fmt == "qdq":
        return load_onnx_qdq(proto, profile)
    graph = load_onnx_qoperator(proto, _onnxruntime_profile(profile))
    return graph if graph.profile == get_profile(profile) else retarget(graph, profile)


def load_onnx_qdq(model, profile="onnxruntime") -> Graph:
    """Build the integer graph of a QDQ-format ONNX model, as onnxruntime's CPU provider runs it.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        A QDQ model (``quantize_static`` with ``quant_format=QuantFormat.QDQ``,
        the default): uint8 or int8 activations, int8 weights, per-tensor or
        per-channel scales, int32 biases.
    profile : str, Path or Profile
        ``"onnxruntime"`` or ``"onnxruntime_avx2"`` (see
        :func:`intsim.importers.onnx_qop.load_onnx_qoperator`) reproduce
        onnxruntime; any other profile runs the same scales and zero points with
        that chip's arithmetic (:func:`intsim.importers.onnx_retarget.retarget`).

    Returns
    -------
    Graph
        The metadata of the QOperator importer (``onnx_tensors``,
        ``onnx_inputs``, ``onnx_outputs``, keyed by the QDQ file's tensor
        names) plus ``metadata["qdq"]``: per ONNX node, how it runs.

    Raises
    ------
    UnsupportedOpError
        A float island, a blocked (``block_size``) or 4-bit / 16-bit quantization
        onnxruntime does not fuse, or an op with no lowering; names the node.
    ModelFormatError
        The file is not an ONNX model, or holds no Q/DQ nodes.
    """
    proto = read_onnx(model)
    fmt = onnx_format(proto)
    if fmt != "qdq":
        raise ModelFormatError(f"model {proto.graph.name!r}: expected a QDQ model (QuantizeLinear / "
                               f"DequantizeLinear around float ops), found a {fmt} model")
    onnxruntime_profile = _onnxruntime_profile(profile)
    if onnxruntime_profile != profile:
        _check_activation_bits(proto, get_profile(profile))
    # A chip profile fuses every group onnxruntime would fuse where int8 activations are allowed (ARM).
    rewritten, report = qdq_to_qoperator(proto, int8_allowed=onnxruntime_profile != profile)
    unsupported = [name for name, how in report.items() if how == "unsupported"]
    if unsupported:
        raise UnsupportedOpError(
            f"model {proto.graph.name!r}: nodes {unsupported} stay float in onnxruntime (no QDQ fusion applies, see "
            f"docs/qdq.md) and are not a float island intsim lowers (a Conv, Add, MaxPool, Gemm, "
            f"AveragePool or GlobalAveragePool between DQs and one Q)")
    graph = load_onnx_qoperator(rewritten, onnxruntime_profile)
    graph.metadata["source"] = "onnx_qdq"
    graph.metadata["qdq"] = report
    return graph if graph.profile == get_profile(profile) else retarget(graph, profile)


def _check_activation_bits(model, profile):
    """Every Q's codes fit the profile's ``activation_bits``, else an error naming the Q node."""
    rewriter = _Rewriter(model, int8_allowed=True)
    rewriter.index()
    for node in rewriter.model.graph.node:
        if node.op_type == Q:
            dtype = rewriter.zero_point_dtype(node)
            if np.dtype(dtype).itemsize * 8 > profile.activation_bits:
                raise UnsupportedOpError(f"QuantizeLinear {node.name!r}: tensor {node.output[0]!r} holds {dtype} codes, "
                                         f"profile {profile.name!r} has {profile.activation_bits}-bit activations")


def _onnxruntime_profile(profile):
    """``profile`` itself when it models onnxruntime's requantization, else ``"onnxruntime"`` (then retargeted)."""
    return profile if get_profile(profile).rounding == "float32_rint" else "onnxruntime"


def qdq_to_qoperator(model, int8_allowed: bool = False) -> tuple[onnx.ModelProto, dict]:
    """onnxruntime's QDQ fusions (default session options, CPU provider, x86-64) as an ONNX rewrite.

    ``int8_allowed`` models onnxruntime where ``QDQIsInt8Allowed()`` holds (ARM):
    no int8-to-uint8 conversion, int8 activations fuse into ``QLinearConv`` /
    ``QLinearMatMul`` with int8 weights.

    Returns the rewritten model (QOperator ops where onnxruntime fuses, the
    original float ops with their Q/DQ where it does not) and a report: ONNX
    node name -> ``"fused:<QLinear op>"``, ``"dropped"``, ``"float"`` (an island, in the
    private ``intsim.qdq`` domain) or ``"unsupported"`` for every node that is not a Q, DQ
    or Constant.  Tensor names of the QDQ file are kept.
    """
    return _Rewriter(read_onnx(model), int8_allowed).run()


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, int8_allowed: bool):
        self.int8_allowed = int8_allowed
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        graph = self.model.graph
        for index, node in enumerate(graph.node):
            if not node.name:
                node.name = f"{node.op_type}_{index}"
        self.opset = max((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        self.constants = {t.name: read_initializer(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
                attr = node.attribute[0]
                if attr.name == "value":
                    self.constants[node.output[0]] = read_initializer(attr.t)
        self.graph_inputs = {vi.name: vi for vi in graph.input}
        self.graph_outputs = {vi.name for vi in graph.output}
        self.new_initializers: list[TensorProto] = []
        self.report: dict[str, str] = {}

    # --- the graph's edges -------------------------------------------------
    def index(self):
        self.producer = {}
        self.consumers = {}
        for node in self.model.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def consumer_edges(self, name) -> list:
        return self.consumers.get(name, [])

    def is_graph_output(self, name) -> bool:
        return name in self.graph_outputs

    def dq_of(self, name):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == DQ else None

    def code_dtype(self, name) -> str:
        """The element type of a code tensor (a DQ input or a Q output)."""
        if name in self.constants:
            return self.constants[name].dtype.name
        node = self.producer.get(name)
        if node is not None and node.op_type == Q:
            return self.zero_point_dtype(node)
        if node is not None and node.op_type == "Gather":  # codes gathered from a table or from codes
            return self.code_dtype(node.input[0])
        if name in self.graph_inputs:
            return helper.tensor_dtype_to_np_dtype(self.graph_inputs[name].type.tensor_type.elem_type).name
        return "?"

    def zero_point_dtype(self, qnode) -> str:
        if len(qnode.input) > 2 and qnode.input[2] in self.constants:
            return self.constants[qnode.input[2]].dtype.name
        for attr in qnode.attribute:
            if attr.name == "output_dtype" and attr.i:
                return helper.tensor_dtype_to_np_dtype(attr.i).name
        return "uint8"

    def scalar_params(self, qdq) -> tuple | None:
        """``(scale, zero point)`` of a Q or DQ with constant scalar parameters, else ``None``."""
        scale = self.constants.get(qdq.input[1])
        zp = self.constants.get(qdq.input[2]) if len(qdq.input) > 2 and qdq.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None or scale.size != 1 or zp.size != 1:
            return None
        return np.float32(scale.reshape(())), int(zp.reshape(()))

    def check_blocked(self, qdq):
        for attr in qdq.attribute:
            if attr.name == "block_size" and attr.i:
                raise UnsupportedOpError(f"{qdq.op_type} {qdq.name!r}: blocked quantization (block_size={attr.i}) "
                                         f"has no integer lowering (onnxruntime runs it only as MatMulNBits)")

    # --- onnxruntime's passes, in its order --------------------------------
    def run(self) -> tuple[onnx.ModelProto, dict]:
        graph = self.model.graph
        for node in graph.node:
            if node.op_type in (Q, DQ):
                self.check_blocked(node)
        self.index()
        if not self.int8_allowed:
            self.int8_pairs_to_uint8()
            self.index()
        self.redundant_relu_clip()
        self.index()
        replaced = {}
        removed = set()
        for node in list(graph.node):
            if node.op_type in (Q, DQ, "Constant") or id(node) in removed:
                continue
            result = None
            for rules in (_FUSERS, ISLANDS):
                if result is None and node.op_type in rules:
                    result = rules[node.op_type](self, node)
            if result is None:
                self.report.setdefault(node.name, "unsupported")
                continue
            new_nodes, gone = result
            replaced[id(node)] = new_nodes
            removed.update(id(n) for n in gone)
        kept = []
        for node in graph.node:
            if id(node) in removed:
                continue
            kept.extend(replaced.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(kept)
        self.index()
        self.requantize_pairs()
        self.index()
        self.drop_dead_dq()
        graph.initializer.extend(self.new_initializers)
        if any(node.domain == MS_DOMAIN for node in graph.node) and not any(
                o.domain == MS_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        return self.model, self.report

    def requantize_pairs(self):
        """A ``DQ -> Q`` pair no group took (the DQ read by that Q alone): onnxruntime dequantizes and
        quantizes in float32, an ``intsim.qdq`` ``Requantize`` node here.  Where the pair sits between a Q
        and a DQ of 8-bit codes (``Q1 -> DQ1 -> Q2 -> DQ2``), onnxruntime's ``DoubleQDQPairsRemover``
        (``double_qdq_pairs_remover.cc``) drops the middle pair and gives the outer Q and DQ a new common
        scale: not modelled, an error naming the nodes (unless both pairs quantize alike)."""
        graph = self.model.graph
        replaced = {}
        for q in graph.node:
            dq = self.producer.get(q.input[0]) if q.op_type == Q else None
            if dq is None or dq.op_type != DQ or len(self.consumer_edges(dq.output[0])) != 1 \
                    or self.is_graph_output(dq.output[0]):
                continue
            outer_q, readers = self.producer.get(dq.input[0]), self.consumer_edges(q.output[0])
            if (outer_q is not None and outer_q.op_type == Q and len(readers) == 1 and readers[0].op_type == DQ
                    and not self.is_graph_output(q.output[0])
                    and {self.zero_point_dtype(dq), self.zero_point_dtype(q)} <= set(_EIGHT_BIT)
                    and self.scalar_params(dq) != self.scalar_params(q)):
                raise UnsupportedOpError(f"{DQ} {dq.name!r} -> {Q} {q.name!r}: onnxruntime's DoubleQDQPairsRemover "
                                         f"merges this 8-bit Q -> DQ -> Q -> DQ chain into one new scale (not modelled)")
            replaced[id(dq)] = []
            replaced[id(q)] = [helper.make_node("Requantize", self.quant_inputs(q) + self.operand(dq), [q.output[0]],
                                                name=q.name, domain=ISLAND_DOMAIN)]
        kept = [n for node in graph.node for n in replaced.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(kept)

    def int8_pairs_to_uint8(self):
        """``QDQS8ToU8Transformer``: x86 runs no int8-activation QLinearConv / QLinearMatMul.

        A Q -> DQ pair of int8 codes whose Q feeds that one DQ only, and whose
        DQ feeds one input only (after ``EnsureUniqueDQForNodeUnit`` a DQ with
        several readers is one DQ per reader, so its Q has several), becomes
        uint8 with zero point + 128: every code moves by 128, every real value
        stays.  A lone DQ of an int8 constant that feeds no Conv / MatMul / Gemm
        moves to uint8 the same way.
        """
        graph = self.model.graph
        for node in list(graph.node):
            if node.op_type == Q:
                readers = self.consumer_edges(node.output[0])
                if len(readers) != 1 or self.is_graph_output(node.output[0]) or readers[0].op_type != DQ:
                    continue
                dq = readers[0]
                if len(self.consumer_edges(dq.output[0])) + self.is_graph_output(dq.output[0]) > 1:
                    continue
                if self.zero_point_dtype(node) != "int8" or self.code_dtype(node.output[0]) != "int8":
                    continue
                qp, dqp = self.scalar_params(node), self.scalar_params(dq)
                if qp is None or dqp is None or qp[1] != dqp[1]:
                    continue
                zp = self.uint8_zero_point(qp[1] + 128)
                node.input[2] = zp
                dq.input[2] = zp
            elif node.op_type == DQ and node.input[0] in self.constants:
                value = self.constants[node.input[0]]
                readers = self.consumer_edges(node.output[0])
                params = self.scalar_params(node)
                if value.dtype != np.int8 or params is None or len(node.input) < 3:
                    continue
                if any(r.op_type in ("MatMul", "Conv", "Gemm") for r in readers):
                    continue
                node.input[0] = self.add_initializer(f"{node.input[0]}_u8", (value.astype(np.int16) + 128).astype(np.uint8))
                node.input[2] = self.uint8_zero_point(params[1] + 128)

    def uint8_zero_point(self, value) -> str:
        return self.add_initializer(f"qdq_s8_to_u8_zp_{value}", np.array(value, np.uint8))

    def add_initializer(self, base, value) -> str:
        name = base
        known = set(self.constants) | {t.name for t in self.new_initializers}
        if name in known and name.startswith("qdq_s8_to_u8_zp_"):
            return name
        i = 1
        while name in known:
            name, i = f"{base}_{i}", i + 1
        self.new_initializers.append(numpy_helper.from_array(value, name))
        self.constants[name] = value
        return name

    def redundant_relu_clip(self):
        """``ReluQuantFusion`` / ``ClipQuantFusion``: a Relu or Clip whose one reader is a Q whose
        code range already lies inside the op's range is removed (the Q reads the op's input)."""
        graph = self.model.graph
        keep = []
        for node in graph.node:
            if node.op_type in ("Relu", "Clip") and self.clip_made_redundant_by_q(node):
                (q,) = self.consumer_edges(node.output[0])
                q.input[0] = node.input[0]
                self.report[node.name] = "dropped"
                continue
            keep.append(node)
        del graph.node[:]
        graph.node.extend(keep)

    def clip_made_redundant_by_q(self, node) -> bool:
        readers = self.consumer_edges(node.output[0])
        if len(readers) != 1 or readers[0].op_type != Q or self.is_graph_output(node.output[0]):
            return False
        params = self.scalar_params(readers[0])
        if params is None:
            return False
        scale, zp = params
        lo, hi = dtype_range(self.zero_point_dtype(readers[0]))
        if node.op_type == "Relu":
            return zp == lo
        clip_lo, clip_hi = self.clip_bounds(node)
        if clip_lo is None:
            return False
        # clip_quantizelinear.cc: the codes' real range [s (lo - zp), s (hi - zp)] must lie in [min, max].
        return clip_lo <= np.float32(scale * np.float32(lo - zp)) and clip_hi >= np.float32(scale * np.float32(hi - zp))

    def clip_bounds(self, node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        lo, hi = np.float32(attrs.get("min", -np.inf)), np.float32(attrs.get("max", np.inf))
        for index, default in ((1, lo), (2, hi)):
            if len(node.input) > index and node.input[index]:
                if node.input[index] not in self.constants:
                    return None, None
                value = np.float32(self.constants[node.input[index]].reshape(()))
                lo, hi = (value, hi) if index == 1 else (lo, value)
        return lo, hi

    def drop_dead_dq(self):
        graph = self.model.graph
        keep = [n for n in graph.node
                if not (n.op_type == DQ and not self.consumer_edges(n.output[0]) and not self.is_graph_output(n.output[0]))]
        del graph.node[:]
        graph.node.extend(keep)

    # --- node groups (qdq_selectors.cc) ------------------------------------
    def group(self, node, n_dq=None, allow_no_q=False):
        """``(dq_nodes, q_node, clip_node)`` of a ``DQ... -> node -> [Relu/Clip] -> Q`` group, else ``None``.

        Every existing input (or the first ``n_dq``) comes from a DQ; the node's
        one output is read by Q nodes only (one here) and is no graph output.
        """
        inputs = [name for name in node.input if name]
        n_dq = len(inputs) if n_dq is None else n_dq
        dqs = [self.dq_of(name) for name in inputs[:n_dq]]
        if any(dq is None for dq in dqs):
            return None
        if len(node.output) != 1 or self.is_graph_output(node.output[0]):
            return None
        readers = self.consumer_edges(node.output[0])
        if not readers and allow_no_q:
            return dqs, None
        if len(readers) != 1 or readers[0].op_type != Q:
            return None
        return dqs, readers[0]

    def dtypes(self, dqs, q):
        return [self.code_dtype(dq.input[0]) for dq in dqs], self.code_dtype(q.output[0])

    def qlinear(self, op_type, node, inputs, q, attrs=None, domain=""):
        """The QOperator node replacing ``node`` and its Q: output named like the Q's output."""
        self.report[node.name] = f"fused:{op_type}"
        return helper.make_node(op_type, inputs, [q.output[0]], name=node.name, domain=domain, **(attrs or {}))

    def quant_inputs(self, qdq) -> list[str]:
        """``[scale, zero point]`` of a Q or DQ (a zero zero-point of its type when absent)."""
        if len(qdq.input) > 2 and qdq.input[2]:
            return [qdq.input[1], qdq.input[2]]
        dtype = self.code_dtype(qdq.input[0] if qdq.op_type == DQ else qdq.output[0])
        zero = self.add_initializer(f"{qdq.name}_zero_point", np.zeros((), np.dtype("uint8" if dtype == "?" else dtype)))
        return [qdq.input[1], zero]

    def operand(self, dq) -> list[str]:
        return [dq.input[0], *self.quant_inputs(dq)]

    def activation_allowed(self, x_type, w_type) -> bool:
        """``ConvSelector`` / ``MatMulSelector``: uint8 activations with 8-bit weights; int8 ones only
        with int8 weights and where int8 is allowed."""
        if x_type == "int8":
            return self.int8_allowed and w_type == "int8"
        return x_type == "uint8" and w_type in _EIGHT_BIT

    def attrs(self, node) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}


_EIGHT_BIT = ("uint8", "int8")


@_fuses("Conv")
def _fuse_conv(rw, node):
    """``ConvSelector`` (int8 activations not allowed on x86) -> ``QLinearConv``."""
    found = rw.group(node)
    if found is None or len(found[0]) not in (2, 3):
        return None
    dqs, q = found
    (x_type, w_type, *bias_type), y_type = rw.dtypes(dqs, q)
    if x_type != y_type or not rw.activation_allowed(x_type, w_type) or bias_type not in ([], ["int32"]):
        return None
    inputs = rw.operand(dqs[0]) + rw.operand(dqs[1]) + rw.quant_inputs(q)
    if len(dqs) == 3:
        inputs.append(dqs[2].input[0])
    return [rw.qlinear("QLinearConv", node, inputs, q, rw.attrs(node))], [q]


@_fuses("MatMul")
def _fuse_matmul(rw, node):
    """``MatMulSelector`` with a Q (int8 activations not allowed on x86) -> ``QLinearMatMul``."""
    found = rw.group(node)
    if found is None or len(found[0]) != 2:
        return None
    dqs, q = found
    (a_type, b_type), y_type = rw.dtypes(dqs, q)
    if a_type != y_type or not rw.activation_allowed(a_type, b_type):
        return None
    inputs = rw.operand(dqs[0]) + rw.operand(dqs[1]) + rw.quant_inputs(q)
    return [rw.qlinear("QLinearMatMul", node, inputs, q)], [q]


@_fuses("Gemm")
def _fuse_gemm(rw, node):
    """``GemmSelector`` (int8 A allowed when B is int8 too; beta 1 with an int32 bias) -> ``QGemm``."""
    found = rw.group(node)
    if found is None or len(found[0]) not in (2, 3):
        return None
    dqs, q = found
    (a_type, b_type, *bias_type), y_type = rw.dtypes(dqs, q)
    attrs = rw.attrs(node)
    if a_type not in _EIGHT_BIT or a_type != y_type or (a_type == "int8" and b_type != "int8"):
        return None
    if b_type not in _EIGHT_BIT or (bias_type and (bias_type != ["int32"] or attrs.get("beta", 1.0) != 1.0)):
        return None
    bias = [dqs[2].input[0]] if len(dqs) == 3 else [""]
    inputs = rw.operand(dqs[0]) + rw.operand(dqs[1]) + bias + rw.quant_inputs(q)
    keep = {k: v for k, v in attrs.items() if k in ("alpha", "transA", "transB")}
    return [rw.qlinear("QGemm", node, inputs, q, keep, MS_DOMAIN)], [q]


@_fuses("Add", "Mul")
def _fuse_binary(rw, node):
    """``BinarySelector``: two DQs, one Q, one 8-bit type throughout -> ``QLinearAdd`` / ``QLinearMul``."""
    found = rw.group(node)
    if found is None or len(found[0]) != 2:
        return None
    dqs, q = found
    (a_type, b_type), y_type = rw.dtypes(dqs, q)
    if not a_type == b_type == y_type or a_type not in _EIGHT_BIT:
        return None
    inputs = rw.operand(dqs[0]) + rw.operand(dqs[1]) + rw.quant_inputs(q)
    return [rw.qlinear(f"QLinear{node.op_type}", node, inputs, q, domain=MS_DOMAIN)], [q]


@_fuses("Concat")
def _fuse_concat(rw, node):
    """``InputVariadicSelector``: every input a DQ, one Q, one 8-bit type -> ``QLinearConcat``."""
    found = rw.group(node)
    if found is None:
        return None
    dqs, q = found
    in_types, y_type = rw.dtypes(dqs, q)
    if set(in_types) != {y_type} or y_type not in _EIGHT_BIT:
        return None
    inputs = rw.quant_inputs(q)
    for dq in dqs:
        inputs += rw.operand(dq)
    return [rw.qlinear("QLinearConcat", node, inputs, q, {"axis": rw.attrs(node)["axis"]}, MS_DOMAIN)], [q]


_UNARY = {"AveragePool": "QLinearAveragePool", "GlobalAveragePool": "QLinearGlobalAveragePool",
          "LeakyRelu": "QLinearLeakyRelu", "Sigmoid": "QLinearSigmoid", "Softmax": "QLinearSoftmax"}


@_fuses(*_UNARY)
def _fuse_unary(rw, node):
    """``UnarySelector``: one DQ, one Q, the same 8-bit type -> the ``com.microsoft`` QLinear op."""
    found = rw.group(node)
    if found is None or len(found[0]) != 1:
        return None
    dqs, q = found
    (x_type,), y_type = rw.dtypes(dqs, q)
    if x_type != y_type or x_type not in _EIGHT_BIT:
        return None
    inputs = rw.operand(dqs[0]) + rw.quant_inputs(q)
    attrs = rw.attrs(node)
    if node.op_type == "Softmax":  # QDQSelectorActionTransformer passes the model's opset (its axis default)
        attrs = {"axis": attrs.get("axis", -1 if rw.opset >= 13 else 1), "opset": rw.opset}
    return [rw.qlinear(_UNARY[node.op_type], node, inputs, q, attrs, MS_DOMAIN)], [q]


_DROP_QDQ = ("Flatten", "Reshape", "Resize", "Squeeze", "Transpose", "Unsqueeze")


@_fuses("MaxPool", *_DROP_QDQ)
def _drop_qdq(rw, node):
    """``DropQDQNodesSelector``: DQ -> op -> Q with equal scalar parameters on both sides: the op
    moves codes (MaxPool from opset 12, 8-bit codes, positive scale)."""
    found = rw.group(node, n_dq=1)
    if found is None:
        return None
    (dq,), q = found
    (x_type,), y_type = rw.dtypes([dq], q)
    dq_params, q_params = rw.scalar_params(dq), rw.scalar_params(q)
    if x_type != y_type or dq_params is None or dq_params != q_params:
        return None
    if node.op_type == "MaxPool" and (rw.opset < 12 or x_type not in _EIGHT_BIT or not dq_params[0] > 0):
        return None
    moved = onnx.NodeProto()
    moved.CopyFrom(node)
    moved.input[0] = dq.input[0]
    moved.output[0] = q.output[0]
    rw.report[node.name] = "dropped"
    return [moved], [q]


# --------------------------------------------------------------------------
# Float islands: a DQ -> op -> Q group onnxruntime leaves unfused.
# --------------------------------------------------------------------------

ISLAND_DOMAIN = "intsim.qdq"


def _island(rw, node):
    """``DQ... -> node -> Q`` with every input a DQ (constants included): the node as a float island
    (an ``intsim.qdq`` node with QLinear-style inputs), else ``None``."""
    found = rw.group(node)
    if found is None:
        return None
    dqs, q = found
    axes = []
    for dq in dqs:
        if rw.scalar_params(dq) is None:
            if dq.input[0] not in rw.constants:
                return None
            axes.append(rw.attrs(dq).get("axis", 1) % max(rw.constants[dq.input[0]].ndim, 1))
        else:
            axes.append(0)
    inputs = rw.quant_inputs(q)
    for dq in dqs:
        inputs += rw.operand(dq)
    rw.report[node.name] = "float"
    # dq_axes: the axis of each DQ's scale (0 where it is one value), for the per-channel constants.
    island = helper.make_node(f"Float{node.op_type}", inputs, [q.output[0]], name=node.name, domain=ISLAND_DOMAIN,
                              dq_axes=axes, **rw.attrs(node))
    return [island], [q]


def _clip_island(rw, node):
    """``DQ -> Clip -> Q`` with constant bounds that the Q does not make redundant: a float island."""
    found = rw.group(node, n_dq=1)
    lo, hi = rw.clip_bounds(node)
    if found is None or lo is None:
        return None
    (dq,), q = found
    rw.report[node.name] = "float"
    island = helper.make_node("FloatClip", rw.quant_inputs(q) + rw.operand(dq), [q.output[0]], name=node.name,
                              domain=ISLAND_DOMAIN, min=float(lo), max=float(hi))
    return [island], [q]


@_fuses("Cast", "Sub", "Gather")
def _on_codes(rw, node):
    """An integer op none of whose inputs is dequantized (a table lookup or a row gather on codes, as
    ``Model.to_onnx_qdq`` writes them): kept as it is, lowered by :mod:`intsim.importers.onnx_islands`."""
    if any(rw.dq_of(name) is not None or name in rw.graph_inputs for name in node.input if name):
        return None
    rw.report[node.name] = "integer"
    return [node], []


ISLANDS = {op_type: _island for op_type in ("Conv", "Add", "MaxPool", "Gemm", "MatMul", "GlobalAveragePool",
                                           "AveragePool")}
ISLANDS["Clip"] = _clip_island
