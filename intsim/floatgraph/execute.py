"""The float reference executor: what a :class:`~intsim.floatgraph.FloatGraph` computes.

Every canonical op of :mod:`intsim.importers.onnx` has one function here, with
ONNX semantics on NCHW float32 tensors.  Multiply-accumulate ops (Conv, Gemm,
MatMul) and reductions accumulate in float64 and round once to float32, so the
result is at least as accurate as onnxruntime's and differs from it only by
float32 accumulation order.  Ops that only move data (Reshape, Transpose,
Concat, Pad, ...) keep their input's dtype, so the importer and the constant
folding pass can run them on integer constants too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from intsim.errors import UnsupportedOpError, ValidationError
from intsim.floatgraph import FloatGraph, FloatNode

_OPS: dict[str, Callable[..., np.ndarray]] = {}


def _op(name: str):
    def wrap(fn):
        _OPS[name] = fn
        return fn

    return wrap


register_op = _op  # for modules that add canonical ops (intsim.floatgraph.sequence_ops, vision_ops)


def op_names() -> list[str]:
    """The canonical op types the executor runs."""
    return sorted(_OPS)


def run_node(node: FloatNode, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run one canonical node on its input arrays; the outputs, in ``node.outputs`` order.

    Inputs are trusted (shapes and attributes as the importer writes them);
    an op type outside the canonical set raises :class:`UnsupportedOpError`.
    """
    try:
        fn = _OPS[node.op]
    except KeyError:
        raise UnsupportedOpError(
            f"node {node.name!r}: op {node.op!r} is not a canonical float op; supported: {', '.join(op_names())}"
        ) from None
    return [fn(node.attrs, *inputs)]


def run_float(
    graph: FloatGraph,
    feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    hook: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Run a float graph on float inputs.

    Parameters
    ----------
    graph : FloatGraph
        A graph in canonical form (as :func:`intsim.importers.onnx.import_onnx`
        returns it), nodes in topological order.
    feeds : list of arrays in ``graph.inputs`` order, or dict name -> array
        Float arrays (any float dtype, run as float32; integer arrays, run as int64, for
        ``graph.integer_inputs``) whose rank and known
        dimensions match ``graph.shapes``.
    outputs : list of str, optional
        Names of the tensors to return; every node is still run.
    hook : callable (name, array) -> array, optional
        Called on every input and every node output as it is computed; what
        it returns replaces the tensor for its consumers and in the result
        (quantization simulation, white paper §2.3: a fake-quant hook).

    Returns
    -------
    dict of str to numpy.ndarray
        Every input and every node output (or only ``outputs``), float32.

    Raises
    ------
    ValidationError
        Wrong number or names of feeds, a non-float feed, a rank or a known
        dimension that does not match, or an unknown name in ``outputs``.
    """
    feeds = checked_feeds(graph, feeds)
    if outputs is not None:
        unknown = [t for t in outputs if t not in graph.inputs and all(t not in n.outputs for n in graph.nodes)]
        if unknown:
            raise ValidationError(f"graph {graph.name!r}: requested outputs {unknown} are not computed by the graph")
    values = run_nodes(graph.nodes, feeds, graph.constants, hook)
    if outputs is None:
        return values
    return {t: values[t] for t in outputs}


def run_nodes(nodes: Sequence[FloatNode], values: Mapping[str, np.ndarray], constants: Mapping[str, np.ndarray],
              hook: Callable[[str, np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run ``nodes`` in order from the tensors ``values`` (trusted) and ``constants``.

    ``hook`` is applied to every tensor of ``values`` and every node output, as
    in :func:`run_float`.  Returns ``values`` with every node output added.
    """
    hook = hook or (lambda name, value: value)
    values = {t: hook(t, v) for t, v in values.items()}
    for node in nodes:
        args = [values[t] if t in values else constants[t] for t in node.inputs]
        values.update((t, hook(t, value)) for t, value in zip(node.outputs, run_node(node, args)))
    return values


def checked_feeds(graph: FloatGraph, feeds) -> dict[str, np.ndarray]:
    """``feeds`` (list in ``graph.inputs`` order or dict name -> array) as a dict of float32 arrays, checked:
    exactly the graph's inputs, float, ranks and known dimensions as ``graph.shapes`` says."""
    return {name: _checked_feed(graph, name, value) for name, value in _named_feeds(graph, feeds).items()}


def _named_feeds(graph: FloatGraph, feeds) -> dict:
    if isinstance(feeds, Mapping):
        missing = [t for t in graph.inputs if t not in feeds]
        extra = [t for t in feeds if t not in graph.inputs]
        if missing or extra:
            raise ValidationError(
                f"graph {graph.name!r}: feeds must name exactly the inputs {graph.inputs}; "
                f"missing {missing}, unknown {extra}"
            )
        return dict(feeds)
    if len(feeds) != len(graph.inputs):
        raise ValidationError(
            f"graph {graph.name!r}: expected {len(graph.inputs)} feed(s) for inputs {graph.inputs}, found {len(feeds)}"
        )
    return dict(zip(graph.inputs, feeds))


def _checked_feed(graph: FloatGraph, name: str, value) -> np.ndarray:
    integer = name in graph.integer_inputs
    if not isinstance(value, np.ndarray) or value.dtype.kind not in ("iu" if integer else "f"):
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise ValidationError(f"input {name!r}: expected {'an integer' if integer else 'a float'} array, "
                              f"found {found}")
    expected = graph.shapes.get(name, value.shape)
    ok = value.ndim == len(expected) and all(e is None or e == d for e, d in zip(expected, value.shape))
    if not ok:
        raise ValidationError(f"input {name!r}: expected shape {tuple(expected)} (None: any size), found {value.shape}")
    return value.astype(np.int64 if integer else np.float32, copy=False)


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# --------------------------------------------------------------------------
# Windowed ops (NCHW).  ``pads`` is [top, left, bottom, right].
# --------------------------------------------------------------------------


def _windows(x, kernel, strides, dilations, pads, fill):
    """Pad ``x`` [N, C, H, W] with ``fill`` and return its windows as [N, C, kh, kw, OH, OW] (a copy)."""
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    kh, kw = kernel
    (sh, sw), (dh, dw) = strides, dilations
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty(x.shape[:2] + (kh, kw, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            row, col = i * dh, j * dw
            cols[:, :, i, j] = xp[:, :, row : row + (oh - 1) * sh + 1 : sh, col : col + (ow - 1) * sw + 1 : sw]
    return cols


@_op("Conv")
def _conv(attrs, x, weight, bias=None):
    n = x.shape[0]
    m, cg, kh, kw = weight.shape
    group = attrs["group"]
    cols = _windows(x.astype(np.float64), (kh, kw), attrs["strides"], attrs["dilations"], attrs["pads"], 0.0)
    oh, ow = cols.shape[-2:]
    cols = cols.reshape(n, group, cg * kh * kw, oh * ow)
    w = weight.astype(np.float64).reshape(group, m // group, cg * kh * kw)
    y = np.matmul(w, cols).reshape(n, m, oh, ow)
    if bias is not None:
        y += bias.reshape(1, m, 1, 1)
    return _f32(y)


@_op("MaxPool")
def lower_max_pool(attrs, x):
    cols = _windows(x, attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["pads"], -np.inf)
    return cols.max(axis=(2, 3))


@_op("AveragePool")
def _average_pool(attrs, x):
    window = attrs["kernel_shape"], attrs["strides"], (1, 1), attrs["pads"]
    total = _windows(x.astype(np.float64), *window, 0.0).sum(axis=(2, 3))
    if attrs["count_include_pad"]:
        count = np.prod(attrs["kernel_shape"])
    else:
        # How many input (not padding) elements each window covers.
        count = _windows(np.ones((1, 1) + x.shape[2:]), *window, 0.0).sum(axis=(2, 3))
    return _f32(total / count)


# --------------------------------------------------------------------------
# Elementwise ops.
# --------------------------------------------------------------------------


@_op("BatchNormalization")
def _batch_norm(attrs, x, scale, bias, mean, var):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    factor = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + attrs["epsilon"])
    y = (x - mean.reshape(shape)) * factor.reshape(shape) + bias.reshape(shape)
    return _f32(y)


def _sigmoid(x):
    # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x)).
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))


_op("Relu")(lambda attrs, x: np.maximum(x, np.float32(0)))
_op("Clip")(lambda attrs, x: _f32(np.clip(x, attrs["min"], attrs["max"])))
_op("LeakyRelu")(lambda attrs, x: _f32(np.where(x < 0, x * np.float64(attrs["alpha"]), x)))
_op("PRelu")(lambda attrs, x, slope: _f32(np.where(x < 0, x * slope, x)))
_op("Sigmoid")(lambda attrs, x: _f32(_sigmoid(x)))
_op("HardSigmoid")(lambda attrs, x: _f32(np.clip(attrs["alpha"] * x.astype(np.float64) + attrs["beta"], 0.0, 1.0)))
_op("HardSwish")(lambda attrs, x: _f32(x * np.clip(x.astype(np.float64) / 6.0 + 0.5, 0.0, 1.0)))
_op("Tanh")(lambda attrs, x: np.tanh(x))
_op("Add")(lambda attrs, a, b: a + b)
_op("Sub")(lambda attrs, a, b: a - b)
_op("Mul")(lambda attrs, a, b: a * b)


@_op("Div")
def _div(attrs, a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        # ONNX integer Div truncates toward zero (C semantics), numpy's // floors.
        quotient = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -quotient, quotient)
    return a / b


# --------------------------------------------------------------------------
# Matrix products and reductions.
# --------------------------------------------------------------------------


@_op("Gemm")
def _gemm(attrs, x, weight, bias=None):
    y = x.astype(np.float64) @ weight.astype(np.float64).T
    return _f32(y if bias is None else y + bias)


_op("MatMul")(lambda attrs, a, b: _f32(np.matmul(a.astype(np.float64), b.astype(np.float64))))
_op("ReduceMean")(
    lambda attrs, x: _f32(x.astype(np.float64).mean(axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"])))
)


@_op("Softmax")
def _softmax(attrs, x):
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=attrs["axis"], keepdims=True))
    return _f32(e / e.sum(axis=attrs["axis"], keepdims=True))


# --------------------------------------------------------------------------
# Data movement: keeps the input dtype.
# --------------------------------------------------------------------------


@_op("Reshape")
def _reshape(attrs, x):
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(attrs["shape"])])


@_op("Flatten")
def _flatten(attrs, x):
    return x.reshape(int(np.prod(x.shape[: attrs["axis"]])), -1)


@_op("Pad")
def _pad(attrs, x):
    pads, rank = attrs["pads"], x.ndim
    widths = [(pads[i], pads[i + rank]) for i in range(rank)]
    if attrs.get("mode", "constant") != "constant":  # reflect (mirrored, edge excluded) or edge: numpy's names
        return np.pad(x, widths, mode=attrs["mode"])
    return np.pad(x, widths, constant_values=np.asarray(attrs["value"]).astype(x.dtype))


_op("Concat")(lambda attrs, *xs: np.concatenate(xs, axis=attrs["axis"]))
_op("Transpose")(lambda attrs, x: np.transpose(x, attrs["perm"]))
_op("Squeeze")(lambda attrs, x: np.squeeze(x, axis=tuple(attrs["axes"])))
_op("Unsqueeze")(lambda attrs, x: np.expand_dims(x, axis=tuple(attrs["axes"])))


# --------------------------------------------------------------------------
# Resize, nearest neighbour.  The source coordinate of output index o is
# computed in float32 with onnxruntime's formulas (upsamplebase.h), the scale
# of an axis being float32(output size) / float32(input size).
# --------------------------------------------------------------------------


def _half_pixel(o, scale, n_in, n_out):
    return (o + 0.5) / scale - 0.5


def _pytorch_half_pixel(o, scale, n_in, n_out):
    return _half_pixel(o, scale, n_in, n_out) if n_out > 1 else np.zeros_like(o)


def _align_corners(o, scale, n_in, n_out):
    return o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(o)


def _half_pixel_symmetric(o, scale, n_in, n_out):
    adjustment = np.float32(n_out) / (scale * np.float32(n_in))
    offset = np.float32(n_in) / 2 * (1 - adjustment)
    # onnxruntime finishes this one in double (its 0.5 literals are doubles).
    return np.float32(offset + (o.astype(np.float64) + 0.5) / np.float64(scale) - 0.5)


def _in_double(offset):
    # onnxruntime (1.32, measured over all sizes 1..11 -> 1..16) lands these two modes where double
    # arithmetic with the exact ratio n_out / n_in does, not where float32 does (they differ 1 ulp
    # from x.5, which round_prefer_* tells apart).
    return lambda o, scale, n_in, n_out: np.float32((o.astype(np.float64) + offset) / (n_out / n_in))


_SOURCE_COORDINATE = {
    "half_pixel": _half_pixel,
    "pytorch_half_pixel": _pytorch_half_pixel,
    "asymmetric": _in_double(0.0),
    "tf_half_pixel_for_nn": _in_double(0.5),
    "align_corners": _align_corners,
    "half_pixel_symmetric": _half_pixel_symmetric,
}

# Ties (x.5) go to the preferred side; negative coordinates clamp to 0 whichever way they round.
_NEAREST = {
    "round_prefer_floor": lambda c: np.where(c == np.floor(c) + 0.5, np.floor(c), np.round(c)),
    "round_prefer_ceil": lambda c: np.where(c == np.floor(c) + 0.5, np.ceil(c), np.round(c)),
    "floor": np.floor,
    "ceil": np.ceil,
}

COORDINATE_MODES = tuple(_SOURCE_COORDINATE)
NEAREST_MODES = tuple(_NEAREST)


def resize_source_indices(n_in: int, n_out: int, coordinate_mode: str, nearest_mode: str) -> np.ndarray:
    """For each of ``n_out`` output positions, the input index nearest Resize reads (ONNX, §Resize).

    An axis whose size does not change is read as is, as onnxruntime does (the
    formula would shift it by half a pixel under tf_half_pixel_for_nn).
    """
    if n_in == n_out:
        return np.arange(n_out, dtype=np.int64)
    o = np.arange(n_out, dtype=np.float32)
    scale = np.float32(n_out) / np.float32(n_in)
    coordinate = _SOURCE_COORDINATE[coordinate_mode](o, scale, n_in, n_out)
    assert coordinate.dtype == np.float32
    return np.clip(_NEAREST[nearest_mode](coordinate), 0, n_in - 1).astype(np.int64)


@_op("Resize")
def _resize(attrs, x):
    for axis, size in enumerate(attrs["sizes"]):
        if size not in (0, x.shape[axis]):  # 0: the batch, kept
            index = resize_source_indices(
                x.shape[axis], size, attrs["coordinate_transformation_mode"], attrs["nearest_mode"]
            )
            x = np.take(x, index, axis=axis)
    return x
