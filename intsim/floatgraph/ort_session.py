"""The float graph through onnxruntime: what :mod:`intsim.floatgraph.execute` computes, at the float runtime's speed.

A :class:`FloatSession` writes a :class:`~intsim.floatgraph.FloatGraph` (or a
run of its nodes) back to a standard ONNX model whose outputs are the tensors
a pass needs, adds the fake-quantization nodes of a quantization simulation
(white paper §2.3) where asked, and builds one onnxruntime session for it;
every batch of the pass then runs through that session.  Calibration, the
PTQ walks and :func:`intsim.compare` use it.

The numpy executor stays the reference: onnxruntime accumulates in float32
(in its own order) where :func:`~intsim.floatgraph.execute.run_float`
accumulates in float64 and rounds once, so the two agree to float32
accumulation-order tolerance (a few ulps of the largest term of a sum), not
bit for bit.  A graph holding an op that has no ONNX form here, or that
onnxruntime refuses, runs on the numpy executor instead (with a warning),
and ``INTSIM_FLOAT_EXECUTOR=numpy`` (:func:`intsim.config.float_executor_setting`)
runs every graph there.

The fake quantizer is computed in float64 inside the session, operation for
operation as :func:`fake_quantize` computes it in numpy, so a simulated
tensor differs between the two executors only through its float input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from intsim.config import float_executor_setting
from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.execute import checked_feeds, run_nodes

OPSET = 19  # Resize's half_pixel_symmetric needs 19


class NotExportable(Exception):
    """A node that has no ONNX form here: the graph runs on the numpy executor."""


FakeQuant = tuple  # (scale, zero_point, lo, hi): codes clip(rint(x / scale) + zero_point, lo, hi)


def fake_quantize(value: np.ndarray, scale: float, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """``(clip(rint(x / scale) + zero_point, lo, hi) - zero_point) * scale`` in float64, as float32
    (the quantizer of white paper §2.3, eq. 2-4, with the tensor's clamp codes)."""
    codes = np.clip(np.rint(value.astype(np.float64) / scale) + zero_point, lo, hi)
    return ((codes - zero_point) * scale).astype(np.float32)


# --------------------------------------------------------------------------
# Canonical node -> ONNX node(s), one function per canonical op.
# --------------------------------------------------------------------------


class _Builder:
    """The ONNX nodes and initializers of the model being written."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: dict[str, np.ndarray] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"__intsim_{hint}_{self._count}"

    def constant(self, value, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers[name] = np.asarray(value)
        return name

    def add(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> None:
        from intsim import onnxproto

        self._count += 1
        self.nodes.append(onnxproto.make_node(op, list(inputs), list(outputs), name=f"__intsim_{self._count}", **attrs))


_EXPORT: dict[str, Callable[[_Builder, FloatNode, list, list], None]] = {}


def _export(*ops: str, attrs: Sequence[str] = ()):
    """Register the plain form: same op, same inputs, the listed canonical attributes as ONNX attributes."""
    def plain(b, node, inputs, outputs):
        b.add(node.op, inputs, outputs, **{k: node.attrs[k] for k in attrs if k in node.attrs})

    for op in ops:
        _EXPORT[op] = plain


_export("Relu", "Sigmoid", "Tanh", "HardSwish", "PRelu", "Add", "Sub", "Mul", "MatMul")
_export("Conv", attrs=("strides", "dilations", "pads", "group"))
_export("BatchNormalization", attrs=("epsilon",))
_export("LeakyRelu", attrs=("alpha",))
_export("HardSigmoid", attrs=("alpha", "beta"))
_export("Concat", attrs=("axis",))
_export("GatherElements", attrs=("axis",))
_export("Transpose", attrs=("perm",))
_export("Flatten", attrs=("axis",))
_export("Softmax", attrs=("axis",))
_export("MaxPool", attrs=("kernel_shape", "strides", "pads", "dilations"))
_export("AveragePool", attrs=("kernel_shape", "strides", "pads", "count_include_pad"))


def _exporter(op: str):
    def wrap(fn):
        _EXPORT[op] = fn
        return fn

    return wrap


@_exporter("Div")
def _div(b, node, inputs, outputs):
    # Float Div only: integer Div truncates in ONNX and runs on constants, folded before any session.
    b.add("Div", inputs, outputs)


@_exporter("Gemm")
def _gemm(b, node, inputs, outputs):
    b.add("Gemm", inputs, outputs, transB=1)  # the canonical weight is [out, in]


@_exporter("Clip")
def _clip(b, node, inputs, outputs):
    bounds = [b.constant(np.float32(node.attrs[k]), "clip") if math.isfinite(node.attrs[k]) else ""
              for k in ("min", "max")]
    while bounds and not bounds[-1]:
        bounds.pop()
    b.add("Clip", inputs[:1] + bounds, outputs)


@_exporter("ReduceMean")
def _reduce_mean(b, node, inputs, outputs):
    axes = b.constant(np.asarray(node.attrs["axes"], np.int64), "axes")
    b.add("ReduceMean", [inputs[0], axes], outputs, keepdims=int(node.attrs["keepdims"]))


@_exporter("Reshape")
def _reshape(b, node, inputs, outputs):
    b.add("Reshape", [inputs[0], b.constant(np.asarray(node.attrs["shape"], np.int64), "shape")], outputs)


@_exporter("Squeeze")
def _squeeze(b, node, inputs, outputs):
    b.add("Squeeze", [inputs[0], b.constant(np.asarray(node.attrs["axes"], np.int64), "axes")], outputs)


@_exporter("Unsqueeze")
def _unsqueeze(b, node, inputs, outputs):
    b.add("Unsqueeze", [inputs[0], b.constant(np.asarray(node.attrs["axes"], np.int64), "axes")], outputs)


@_exporter("Pad")
def _pad(b, node, inputs, outputs):
    pads = b.constant(np.asarray(node.attrs["pads"], np.int64), "pads")
    mode = node.attrs.get("mode", "constant")
    operands = [inputs[0], pads] + ([b.constant(np.float32(node.attrs["value"]), "pad_value")] if mode == "constant"
                                    else [])
    b.add("Pad", operands, outputs, mode=mode)


@_exporter("Resize")
def _resize(b, node, inputs, outputs):
    mode = node.attrs["coordinate_transformation_mode"]
    if mode == "tf_half_pixel_for_nn":
        raise NotExportable(f"Resize coordinate_transformation_mode {mode!r} has no ONNX form at opset {OPSET}")
    # Canonical sizes keep the axes whose entry is 0 (the batch): those are read from the input's shape when run.
    sizes = node.attrs["sizes"]
    kept = [i for i, s in enumerate(sizes) if s == 0]
    full = b.constant(np.asarray(sizes, np.int64), "sizes")
    if kept:
        shape, gathered, target = b.fresh("shape"), b.fresh("kept_sizes"), full
        full = b.fresh("sizes")
        b.add("Shape", inputs[:1], [shape])
        kept_axes = b.constant(np.asarray(kept, np.int64), "kept_axes")
        b.add("Gather", [shape, kept_axes], [gathered], axis=0)
        b.add("ScatterElements", [target, kept_axes, gathered], [full], axis=0)
    b.add("Resize", [inputs[0], "", "", full], outputs, mode="nearest", coordinate_transformation_mode=mode,
          nearest_mode=node.attrs["nearest_mode"])


# The ops of sequence and vision models (issue 15).  Each form computes what the numpy executor computes, to
# float32 tolerance: a Sqrt of a negative input is 0 there (Relu first), a masked row with no kept position
# is all 0 (the softmax times the mask).
_export("Exp", "Erf", "Reciprocal")
_export("Gather", "GatherElements", attrs=("axis",))
_export("LayerNormalization", attrs=("epsilon",))
_export("ConvTranspose", attrs=("strides", "dilations", "pads", "group", "output_padding"))


@_exporter("Slice")
def _slice(b, node, inputs, outputs):
    # A canonical end below 0 runs through the end of the axis the step walks to (index 0 under a negative step).
    a = node.attrs
    ends = [e if e >= 0 else (np.iinfo(np.int64).min if k < 0 else np.iinfo(np.int64).max)
            for e, k in zip(a["ends"], a["steps"])]
    operands = [np.asarray(v, np.int64) for v in (a["starts"], ends, a["axes"], a["steps"])]
    b.add("Slice", [inputs[0], *(b.constant(v, "slice") for v in operands)], outputs)


@_exporter("Sqrt")
def _sqrt(b, node, inputs, outputs):
    clipped = b.fresh("relu")
    b.add("Relu", inputs, [clipped])
    b.add("Sqrt", [clipped], outputs)


@_exporter("Tile")
def _tile(b, node, inputs, outputs):
    b.add("Tile", [inputs[0], b.constant(np.asarray(node.attrs["repeats"], np.int64), "repeats")], outputs)


@_exporter("ReduceSum")
@_exporter("ReduceMax")
def _reduce(b, node, inputs, outputs):
    axes = b.constant(np.asarray(node.attrs["axes"], np.int64), "axes")
    b.add(node.op, [inputs[0], axes], outputs, keepdims=int(node.attrs["keepdims"]))


@_exporter("Gelu")
def _gelu(b, node, inputs, outputs):
    """``0.5 x (1 + erf(x / sqrt 2))``, or the tanh form (Gelu itself is opset 20)."""
    x = inputs[0]

    def op(kind, *operands):
        out = b.fresh("gelu")
        b.add(kind, list(operands), [out])
        return out

    def const(value):
        return b.constant(np.float32(value), "gelu")

    if node.attrs.get("approximate", "none") == "tanh":
        cube = op("Mul", op("Mul", x, x), x)
        inner = op("Mul", op("Add", x, op("Mul", cube, const(0.044715))), const(math.sqrt(2.0 / math.pi)))
        curve = op("Tanh", inner)
    else:
        curve = op("Erf", op("Mul", x, const(1.0 / math.sqrt(2.0))))
    b.add("Mul", [op("Mul", x, const(0.5)), op("Add", curve, const(1.0))], outputs)


@_exporter("MaskedSoftmax")
def _masked_softmax(b, node, inputs, outputs):
    """Softmax of ``Where(mask, x, lowest)`` over the last axis, times the mask."""
    from intsim.onnxproto import TensorProto

    x, mask = inputs
    keep, keep_float, masked, soft = (b.fresh(h) for h in ("keep", "keep_float", "masked", "soft"))
    b.add("Cast", [mask], [keep], to=TensorProto.BOOL)
    if node.attrs["mask_axes"]:
        wide = b.fresh("keep")
        b.add("Unsqueeze", [keep, b.constant(np.asarray(node.attrs["mask_axes"], np.int64), "axes")], [wide])
        keep = wide
    b.add("Where", [keep, x, b.constant(np.finfo(np.float32).min, "lowest")], [masked])
    b.add("Softmax", [masked], [soft], axis=-1)
    b.add("Cast", [keep], [keep_float], to=TensorProto.FLOAT)
    b.add("Mul", [soft, keep_float], outputs)


def _fake_quantizer(b: _Builder, source: str, target: str, params: FakeQuant) -> None:
    """:func:`fake_quantize` as ONNX nodes from ``source`` to ``target``, in float64 as numpy computes it."""
    from intsim.onnxproto import TensorProto

    scale, zero_point, lo, hi = (np.float64(v) for v in params)
    steps = [("Div", [b.constant(scale, "scale")]), ("Round", []), ("Add", [b.constant(zero_point, "zero_point")]),
             ("Clip", [b.constant(lo, "lo"), b.constant(hi, "hi")]), ("Sub", [b.constant(zero_point, "zero_point")]),
             ("Mul", [b.constant(scale, "scale")])]
    value = b.fresh("fq")
    b.add("Cast", [source], [value], to=TensorProto.DOUBLE)
    for op, operands in steps:
        result = b.fresh("fq")
        b.add(op, [value] + operands, [result])
        value = result
    b.add("Cast", [value], [target], to=TensorProto.FLOAT)


def raw_input_name(tensor: str) -> str:
    """The name under which a fed tensor that is fake-quantized enters the ONNX model."""
    return f"__intsim_input_{tensor}"


def needed_nodes(nodes: Sequence[FloatNode], outputs) -> list[FloatNode]:
    """The nodes of ``nodes`` (in order) that ``outputs`` depend on."""
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if wanted.intersection(node.outputs):
            kept.append(node)
            wanted.update(node.inputs)
    return kept[::-1]


def onnx_model(graph: FloatGraph, nodes: Sequence[FloatNode], inputs: Sequence[str], outputs: Sequence[str],
               fake_quant: Mapping[str, FakeQuant]):
    """The ONNX model (opset :data:`OPSET`) that computes ``outputs`` of ``nodes`` from the tensors ``inputs``,
    every tensor of ``fake_quant`` replaced by its fake-quantized value for its consumers and in the outputs.

    Raises :class:`NotExportable` for a node without an ONNX form."""
    from intsim import onnxproto
    from intsim.onnxproto import TensorProto

    b = _Builder()
    graph_inputs = []
    for t in inputs:
        fed = raw_input_name(t) if t in fake_quant else t
        kind = TensorProto.INT64 if t in graph.integer_inputs else TensorProto.FLOAT  # token ids, masks: int64
        graph_inputs.append(onnxproto.value_info(fed, kind, graph.shapes.get(t)))
        if t in fake_quant:
            _fake_quantizer(b, fed, t, fake_quant[t])
    constants = {}
    for node in nodes:
        export = _EXPORT.get(node.op)
        if export is None:
            raise NotExportable(f"node {node.name!r}: op {node.op!r} has no ONNX form here")
        constants.update((t, graph.constants[t]) for t in node.inputs if t in graph.constants)
        produced = [b.fresh("raw") if t in fake_quant else t for t in node.outputs]
        export(b, node, list(node.inputs), produced)
        for raw, t in zip(produced, node.outputs):
            if t in fake_quant:
                _fake_quantizer(b, raw, t, fake_quant[t])
    # Graph constants run as float32 (the numpy executor reads them at their own width); the fake quantizers'
    # constants stay float64.
    constants = {t: v.astype(np.float32) if v.dtype.kind == "f" else v for t, v in constants.items()}
    initializers = [onnxproto.from_array(np.asarray(v), name) for name, v in {**constants, **b.initializers}.items()]
    graph_outputs = [onnxproto.value_info(t, TensorProto.FLOAT, None) for t in outputs]
    return onnxproto.make_model(b.nodes, graph.name or "float_graph", graph_inputs, graph_outputs, initializers,
                                opset=OPSET, ir_version=9)


class FloatSession:
    """Runs a float graph, or a run of its nodes, on many batches: one onnxruntime session, built once.

    Parameters
    ----------
    graph : FloatGraph
        Canonical float graph; its constants are read when the session is built.
    outputs : list of str, optional
        The tensors :meth:`run` returns (default ``graph.outputs``).
    fake_quant : dict, optional
        ``{tensor: (scale, zero_point, lo, hi)}``: each of these tensors (inputs
        and node outputs) is replaced by :func:`fake_quantize` of it, for its
        consumers and in the result (quantization simulation, white paper §2.3).
    nodes : list of FloatNode, optional
        Run only these (in order; default all of ``graph.nodes``).
    inputs : list of str, optional
        The tensors fed to :meth:`run` (default ``graph.inputs``, checked as
        :func:`~intsim.floatgraph.execute.run_float` checks them; other tensors
        are trusted).
    executor : {"onnxruntime", "numpy"}, optional
        Default :func:`intsim.config.float_executor_setting`.  A graph that
        onnxruntime cannot run takes the numpy executor, with a ``RuntimeWarning``.

    Attributes
    ----------
    executor : str
        The executor that runs: ``"onnxruntime"`` or ``"numpy"``.
    """

    def __init__(self, graph: FloatGraph, outputs: Sequence[str] | None = None, *,
                 fake_quant: Mapping[str, FakeQuant] | None = None, nodes: Sequence[FloatNode] | None = None,
                 inputs: Sequence[str] | None = None, executor: str | None = None):
        self.graph = graph
        self.inputs = list(graph.inputs if inputs is None else inputs)
        self.outputs = list(graph.outputs if outputs is None else outputs)
        self.fake_quant = dict(fake_quant or {})
        nodes = list(graph.nodes if nodes is None else nodes)
        computed = set(self.inputs).union(*(n.outputs for n in nodes))
        unknown = [t for t in self.outputs if t not in computed]
        if unknown:
            raise ValidationError(f"graph {graph.name!r}: requested outputs {unknown} are not computed by the graph")
        self.nodes = needed_nodes(nodes, self.outputs)
        self.executor = float_executor_setting() if executor is None else executor
        if self.executor not in ("onnxruntime", "numpy"):
            raise ValidationError(f"float executor must be 'onnxruntime' or 'numpy', found {self.executor!r}")
        self._session = None
        # Outputs onnxruntime computes; a fed tensor asked for as it is comes back from the feeds.
        self._ort_outputs = list(dict.fromkeys(t for t in self.outputs
                                               if t not in self.inputs or t in self.fake_quant))
        if self.executor == "onnxruntime" and self._ort_outputs:  # else nothing to compute: run returns feeds
            self._session = self._build()

    def _build(self):
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        refused = (NotExportable, state.Fail, state.InvalidGraph, state.InvalidArgument, state.NotImplemented)
        try:
            model = onnx_model(self.graph, self.nodes, self.inputs, self._ort_outputs, self.fake_quant)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # Threads sleep between runs instead of spinning: the batches of a pass are large, and the cores
            # are shared with the integer kernels (and, on CI, with other jobs).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except refused as exc:
            warnings.warn(f"graph {self.graph.name!r}: onnxruntime cannot run it ({exc}); running the numpy "
                          "reference executor", RuntimeWarning, stacklevel=3)
            self.executor = "numpy"
            return None

    def run(self, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ``outputs`` for one batch of ``feeds`` (list in ``inputs`` order, or dict name -> array), float32."""
        if self.inputs == list(self.graph.inputs):
            feeds = checked_feeds(self.graph, feeds)
        elif not isinstance(feeds, Mapping):
            feeds = dict(zip(self.inputs, feeds))
        if self._session is None:
            feeds = {t: feeds[t] if t in self.graph.integer_inputs else np.ascontiguousarray(feeds[t], np.float32)
                     for t in self.inputs}
            values = run_nodes(self.nodes, feeds, self.graph.constants, self._fake_quantize if self.fake_quant else None)
            return {t: values[t] for t in self.outputs}
        feeds = {t: np.ascontiguousarray(feeds[t], np.int64 if t in self.graph.integer_inputs else np.float32)
                 for t in self.inputs}
        named = {raw_input_name(t) if t in self.fake_quant else t: v for t, v in feeds.items()}
        found = dict(zip(self._ort_outputs, self._session.run(self._ort_outputs, named)))
        return {t: found[t] if t in found else feeds[t] for t in self.outputs}

    def _fake_quantize(self, name: str, value: np.ndarray) -> np.ndarray:
        return fake_quantize(value, *self.fake_quant[name]) if name in self.fake_quant else value
