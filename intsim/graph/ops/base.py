"""The op registry and what every op shares: the :class:`Op` contract, attribute and parameter checks,
the rescale and clamp parameters of a node.

For every integer op, its checks, shape inference and execution.

Each op is a class registered under its name.  ``check`` validates a node's
attributes and parameters against its tensors and the graph's profile (called
when a graph is built or loaded); ``infer`` gives output shapes from input
tensors; ``prepare`` turns parameters into kernel arguments once; ``run``
calls a kernel backend (:mod:`intsim.kernels` or its naive twins) and returns
the outputs with per-node statistics.

Activation layout is NHWC (channels-last) for every spatial op; convolution
weights are OHWI, fully-connected weights ``[out, in]``.
"""

from __future__ import annotations


import numpy as np

from intsim.errors import UnsupportedOpError, ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, ROUNDING_MODES, Rescale
from intsim.codes import dtype_range
from intsim.graph.ir import Node, TensorInfo
from intsim.kernels.contract import Backend

_REGISTRY: dict[str, "Op"] = {}

MAC_OPS = ("conv2d", "fully_connected", "matmul")
# Ops whose output goes through requantization and the clamp (the ops that call clamp_bounds).
REQUANTIZING_OPS = MAC_OPS + ("rescale", "add", "mul", "concat", "mean", "softmax", "add_float32_fma", "layernorm",
                               "masked_softmax")


def register(name):
    def wrap_class(cls):
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return wrap_class


def get_op(op_type: str, node_name: str = "?") -> "Op":
    try:
        return _REGISTRY[op_type]
    except KeyError:
        raise UnsupportedOpError(
            f"node {node_name!r}: op {op_type!r} is not an intsim integer op; supported: {', '.join(sorted(_REGISTRY))}"
        ) from None


def op_names() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------
# Shared checks.
# --------------------------------------------------------------------------


def where(node: Node) -> str:
    return f"{node.op} {node.name!r}"


def fail(node: Node, message: str):
    raise ValidationError(f"{where(node)}: {message}")


def int_attr(node, key, default=None, lo=None, hi=None):
    value = node.attrs.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(node, f"attribute {key} must be an integer, found {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(node, f"attribute {key} must be in [{lo}, {hi}], found {value}")
    return int(value)


def ints_attr(node, key, length, default=None, lo=None):
    value = node.attrs.get(key, default)
    ok = isinstance(value, (list, tuple)) and len(value) == length
    ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    if not ok:
        fail(node, f"attribute {key} must be a list of {length} integers, found {value!r}")
    if lo is not None and any(v < lo for v in value):
        fail(node, f"attribute {key} must be >= {lo} everywhere, found {list(value)}")
    return tuple(int(v) for v in value)


def check_average_window(node):
    """The attributes of an average pool: kernel, pads (each smaller than the kernel), strides, count_include_pad."""
    kernel = ints_attr(node, "kernel", 2, lo=1)
    pads = ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
    ints_attr(node, "strides", 2, (1, 1), lo=1)
    if not isinstance(node.attrs.get("count_include_pad", False), bool):
        fail(node, f"attribute count_include_pad must be a boolean, found {node.attrs['count_include_pad']!r}")
    if pads[0] >= kernel[0] or pads[2] >= kernel[0] or pads[1] >= kernel[1] or pads[3] >= kernel[1]:
        fail(node, f"pads {list(pads)} must be smaller than the kernel {list(kernel)}")


def param(node, key, kinds="iu", shape=None, ndim=None) -> np.ndarray:
    if key not in node.params:
        fail(node, f"missing parameter {key!r}")
    value = node.params[key]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        fail(node, f"parameter {key} must be an array of kind {kinds!r}, found {found}")
    if shape is not None and value.shape != tuple(shape):
        fail(node, f"parameter {key} must have shape {tuple(shape)}, found {value.shape}")
    if ndim is not None and value.ndim != ndim:
        fail(node, f"parameter {key} must be {ndim}-D, found shape {value.shape}")
    return value


def check_range(node, key, arr, lo, hi):
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        fail(node, f"parameter {key} must lie in [{lo}, {hi}], found {bad}")


def node_rounding(node: Node, graph) -> str:
    """The node's requantization rounding mode: its ``rounding`` attribute, else the profile's.

    The attribute models runtimes whose ops do not all round alike (LiteRT's
    reference FULLY_CONNECTED requantizes in double precision while its other
    ops use the integer multiplier).
    """
    rounding = node.attrs.get("rounding", graph.profile.rounding)
    if rounding not in ROUNDING_MODES:
        fail(node, f"attribute rounding must be one of {', '.join(ROUNDING_MODES)}, found {rounding!r}")
    return rounding


def node_pairwise_int16(node: Node, graph, x_dtype: str, w_dtype: str) -> bool:
    """Whether the node's products are summed two at a time into a saturating int16 (x86 ``vpmaddubsw``).

    The node's ``pairwise_int16`` attribute (a bool), else the profile's; and
    only for uint8 activations times int8 weights, the one operand pair the
    instruction takes (onnxruntime's s8s8 kernels on AVX2 accumulate exactly).
    """
    enabled = node.attrs.get("pairwise_int16", graph.profile.pairwise_int16)
    if not isinstance(enabled, (bool, np.bool_)):
        fail(node, f"attribute pairwise_int16 must be a bool, found {enabled!r}")
    return bool(enabled) and x_dtype == "uint8" and w_dtype == "int8"


def rescale_params(node: Node, graph, prefix: str = "", channels: int = 1) -> Rescale:
    """The requantization parameters ``{prefix}multiplier``/``shift``/``scale`` of a node."""
    profile = graph.profile
    rounding = node_rounding(node, graph)
    mult = param(node, f"{prefix}multiplier", shape=(channels,))
    shift = param(node, f"{prefix}shift", shape=(channels,))
    scale = None
    if rounding not in INTEGER_ROUNDING_MODES:
        scale = param(node, f"{prefix}scale", kinds="f", shape=(channels,))
    elif f"{prefix}scale" in node.params:
        fail(node, f"parameter {prefix}scale is only stored for float rounding modes, the node rounds {rounding!r}")
    try:
        return Rescale(rounding, mult, shift, scale, profile.multiplier_bits)
    except ValidationError as exc:
        fail(node, f"{prefix or ''}requantization parameters: {exc}")


def clamp_bounds(node: Node, out: TensorInfo) -> tuple[int, int]:
    lo, hi = dtype_range(out.dtype)
    if "clamp" not in node.attrs:
        return lo, hi
    cmin, cmax = ints_attr(node, "clamp", 2)
    if not lo <= cmin <= cmax <= hi:
        fail(node, f"clamp [{cmin}, {cmax}] must be ordered and inside the {out.dtype} range [{lo}, {hi}]")
    return cmin, cmax


def check_dtypes(node: Node, graph, allowed=("int8", "uint8", "int16", "uint16")):
    for t in node.inputs:
        if graph.tensors[t].dtype not in allowed:
            fail(node, f"input {t!r} must be one of {', '.join(allowed)}, found {graph.tensors[t].dtype}")


def check_arity(node: Node, n_in, n_out=1):
    if (n_in is not None and len(node.inputs) != n_in) or (n_in is None and not node.inputs):
        fail(node, f"expects {n_in if n_in is not None else 'at least 1'} input(s), found {len(node.inputs)}")
    if len(node.outputs) != n_out:
        fail(node, f"expects {n_out} output(s), found {len(node.outputs)}")


def same_quantization(node: Node, graph):
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if not x.same_quantization(y):
        fail(
            node,
            f"output {y.name!r} ({y.dtype}, scale {y.scale}, zero point {y.zero_point}) must be quantized like input "
            f"{x.name!r} ({x.dtype}, scale {x.scale}, zero point {x.zero_point}); insert a rescale node",
        )


def window_out(size, k, stride, dilation, pad_a, pad_b):
    if size is None:
        return None
    return (size + pad_a + pad_b - dilation * (k - 1) - 1) // stride + 1


def nhwc_input(node, graph, index: int = 0) -> TensorInfo:
    """Input ``index`` of ``node``, which must be a 4-D (NHWC) tensor."""
    return check_nhwc(node, graph.tensors[node.inputs[index]])


def check_nhwc(node, x: TensorInfo) -> TensorInfo:
    if len(x.shape) != 4:
        fail(node, f"input {x.name!r} must be NHWC (4-D), found shape {x.shape}")
    return x


def spatial_infer(node, x: TensorInfo, kernel, strides, dilations, pads, channels):
    check_nhwc(node, x)
    n, h, w, _ = x.shape
    oh = window_out(h, kernel[0], strides[0], dilations[0], pads[0], pads[2])
    ow = window_out(w, kernel[1], strides[1], dilations[1], pads[1], pads[3])
    if (oh is not None and oh < 1) or (ow is not None and ow < 1):
        fail(node, f"window {kernel} with pads {pads} does not fit input {x.shape}: output {oh}x{ow}")
    return (n, oh, ow, channels)


def broadcast_shape(node, shapes):
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            fail(node, f"input shapes {shapes} do not broadcast")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def broadcast_operands(inputs):
    """The two inputs of a binary op as C-contiguous arrays of their broadcast shape (no copy when they
    already are)."""
    a, b = inputs
    if a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous:
        return a, b
    return tuple(np.ascontiguousarray(v) for v in np.broadcast_arrays(a, b))


def axes_attr(node, rank, key="axes"):
    axes = node.attrs.get(key)
    if not isinstance(axes, (list, tuple)) or not axes or not all(isinstance(a, int) for a in axes):
        fail(node, f"attribute {key} must be a non-empty list of integers, found {axes!r}")
    if any(not -rank <= a < rank for a in axes):
        fail(node, f"attribute {key} {list(axes)} is out of range for rank {rank}")
    norm = sorted({a % rank for a in axes})
    if len(norm) != len(axes):
        fail(node, f"attribute {key} {list(axes)} repeats an axis")
    return norm


def acc_stats(acc: np.ndarray, acc_bits: int, overflow_count: int, pair_saturations: int) -> dict:
    peak = max(-int(acc.min()), int(acc.max())) if acc.size else 0  # |min| without an int64 copy of acc
    return {
        "overflow_count": overflow_count,
        "pair_saturation_count": pair_saturations,
        "max_abs_accumulator": peak,
        "accumulator_headroom_bits": acc_bits - 1 - peak.bit_length(),
    }


class Op:
    """Base of the registry entries; see the module docstring."""

    name = "?"

    def check(self, node: Node, graph) -> None:
        raise NotImplementedError

    def infer(self, node: Node, inputs: list[TensorInfo], graph) -> list[tuple]:
        raise NotImplementedError

    def prepare(self, node: Node, graph) -> dict:
        return {}

    def run(self, plan: dict, inputs: list[np.ndarray], kernels: Backend) -> tuple[list[np.ndarray], dict]:
        raise NotImplementedError

    def run_untraced(self, plan: dict, inputs: list[np.ndarray], kernels: Backend) -> tuple[list[np.ndarray], dict]:
        """:meth:`run` for a caller that keeps no intermediate values: ops may skip work
        that only a trace reads (the MAC ops write no int32 accumulator tensor and count no
        clamps: their stats then lack ``saturation_count``)."""
        return self.run(plan, inputs, kernels)

    def bind(self, plan: dict, kernels: Backend):
        """``step(inputs) -> (outputs, stats)``, :meth:`run_untraced` with ``plan`` and ``kernels``
        fixed: whatever does not depend on the inputs (weight packing, kernel lookup) done once.
        A model's run plan is the list of its nodes' steps.

        A step may also carry ``step.calls(inputs, outputs, threads)``: ``[(numba function, arguments)]``
        that write the given output arrays from the given input arrays exactly as ``step`` would, with
        no overflow possible, or ``None`` where it cannot (:class:`intsim.runtime.bound.BoundRun` keeps
        such calls over preallocated arrays and repeats them with numba's thread count ``threads``:
        a kernel with a threaded core may take it, the others ignore it)."""
        run = self.run_untraced
        return lambda inputs: run(plan, inputs, kernels)
