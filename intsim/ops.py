"""The op registry: for every integer op, its checks, shape inference and execution.

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

import math

import numpy as np

from intsim.errors import UnsupportedOpError, ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, ROUNDING_MODES, Rescale
from intsim.graph import Graph, Node, TensorInfo, dtype_range

_REGISTRY: dict[str, "Op"] = {}

OVERFLOW_CODES = {"saturate": 0, "wrap": 1, "error": 2}
MAC_OPS = ("conv2d", "fully_connected", "matmul")


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


def _where(node: Node) -> str:
    return f"{node.op} {node.name!r}"


def _fail(node: Node, message: str):
    raise ValidationError(f"{_where(node)}: {message}")


def _int_attr(node, key, default=None, lo=None, hi=None):
    value = node.attrs.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail(node, f"attribute {key} must be an integer, found {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        _fail(node, f"attribute {key} must be in [{lo}, {hi}], found {value}")
    return int(value)


def _ints_attr(node, key, length, default=None, lo=None):
    value = node.attrs.get(key, default)
    ok = isinstance(value, (list, tuple)) and len(value) == length
    ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    if not ok:
        _fail(node, f"attribute {key} must be a list of {length} integers, found {value!r}")
    if lo is not None and any(v < lo for v in value):
        _fail(node, f"attribute {key} must be >= {lo} everywhere, found {list(value)}")
    return tuple(int(v) for v in value)


def _check_average_window(node):
    """The attributes of an average pool: kernel, pads (each smaller than the kernel), strides, count_include_pad."""
    kernel = _ints_attr(node, "kernel", 2, lo=1)
    pads = _ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
    _ints_attr(node, "strides", 2, (1, 1), lo=1)
    if not isinstance(node.attrs.get("count_include_pad", False), bool):
        _fail(node, f"attribute count_include_pad must be a boolean, found {node.attrs['count_include_pad']!r}")
    if pads[0] >= kernel[0] or pads[2] >= kernel[0] or pads[1] >= kernel[1] or pads[3] >= kernel[1]:
        _fail(node, f"pads {list(pads)} must be smaller than the kernel {list(kernel)}")


def _param(node, key, kinds="iu", shape=None, ndim=None) -> np.ndarray:
    if key not in node.params:
        _fail(node, f"missing parameter {key!r}")
    value = node.params[key]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        _fail(node, f"parameter {key} must be an array of kind {kinds!r}, found {found}")
    if shape is not None and value.shape != tuple(shape):
        _fail(node, f"parameter {key} must have shape {tuple(shape)}, found {value.shape}")
    if ndim is not None and value.ndim != ndim:
        _fail(node, f"parameter {key} must be {ndim}-D, found shape {value.shape}")
    return value


def _check_range(node, key, arr, lo, hi):
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        _fail(node, f"parameter {key} must lie in [{lo}, {hi}], found {bad}")


def node_rounding(node: Node, graph: Graph) -> str:
    """The node's requantization rounding mode: its ``rounding`` attribute, else the profile's.

    The attribute models runtimes whose ops do not all round alike (LiteRT's
    reference FULLY_CONNECTED requantizes in double precision while its other
    ops use the integer multiplier).
    """
    rounding = node.attrs.get("rounding", graph.profile.rounding)
    if rounding not in ROUNDING_MODES:
        _fail(node, f"attribute rounding must be one of {', '.join(ROUNDING_MODES)}, found {rounding!r}")
    return rounding


def node_pairwise_int16(node: Node, graph: Graph, x_dtype: str, w_dtype: str) -> bool:
    """Whether the node's products are summed two at a time into a saturating int16 (x86 ``vpmaddubsw``).

    The node's ``pairwise_int16`` attribute (a bool), else the profile's; and
    only for uint8 activations times int8 weights, the one operand pair the
    instruction takes (onnxruntime's s8s8 kernels on AVX2 accumulate exactly).
    """
    enabled = node.attrs.get("pairwise_int16", graph.profile.pairwise_int16)
    if not isinstance(enabled, (bool, np.bool_)):
        _fail(node, f"attribute pairwise_int16 must be a bool, found {enabled!r}")
    return bool(enabled) and x_dtype == "uint8" and w_dtype == "int8"


def rescale_params(node: Node, graph: Graph, prefix: str = "", channels: int = 1) -> Rescale:
    """The requantization parameters ``{prefix}multiplier``/``shift``/``scale`` of a node."""
    profile = graph.profile
    rounding = node_rounding(node, graph)
    mult = _param(node, f"{prefix}multiplier", shape=(channels,))
    shift = _param(node, f"{prefix}shift", shape=(channels,))
    scale = None
    if rounding not in INTEGER_ROUNDING_MODES:
        scale = _param(node, f"{prefix}scale", kinds="f", shape=(channels,))
    elif f"{prefix}scale" in node.params:
        _fail(node, f"parameter {prefix}scale is only stored for float rounding modes, the node rounds {rounding!r}")
    try:
        return Rescale(rounding, mult, shift, scale, profile.multiplier_bits)
    except ValidationError as exc:
        _fail(node, f"{prefix or ''}requantization parameters: {exc}")


def clamp_bounds(node: Node, out: TensorInfo) -> tuple[int, int]:
    lo, hi = dtype_range(out.dtype)
    if "clamp" not in node.attrs:
        return lo, hi
    cmin, cmax = _ints_attr(node, "clamp", 2)
    if not lo <= cmin <= cmax <= hi:
        _fail(node, f"clamp [{cmin}, {cmax}] must be ordered and inside the {out.dtype} range [{lo}, {hi}]")
    return cmin, cmax


def _check_dtypes(node: Node, graph: Graph, allowed=("int8", "uint8", "int16", "uint16")):
    for t in node.inputs:
        if graph.tensors[t].dtype not in allowed:
            _fail(node, f"input {t!r} must be one of {', '.join(allowed)}, found {graph.tensors[t].dtype}")


def _check_arity(node: Node, n_in, n_out=1):
    if (n_in is not None and len(node.inputs) != n_in) or (n_in is None and not node.inputs):
        _fail(node, f"expects {n_in if n_in is not None else 'at least 1'} input(s), found {len(node.inputs)}")
    if len(node.outputs) != n_out:
        _fail(node, f"expects {n_out} output(s), found {len(node.outputs)}")


def _same_quantization(node: Node, graph: Graph):
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if not x.same_quantization(y):
        _fail(
            node,
            f"output {y.name!r} ({y.dtype}, scale {y.scale}, zero point {y.zero_point}) must be quantized like input "
            f"{x.name!r} ({x.dtype}, scale {x.scale}, zero point {x.zero_point}); insert a rescale node",
        )


def _window_out(size, k, stride, dilation, pad_a, pad_b):
    if size is None:
        return None
    return (size + pad_a + pad_b - dilation * (k - 1) - 1) // stride + 1


def _spatial_infer(node, x: TensorInfo, kernel, strides, dilations, pads, channels):
    if len(x.shape) != 4:
        _fail(node, f"input {x.name!r} must be NHWC (4-D), found shape {x.shape}")
    n, h, w, _ = x.shape
    oh = _window_out(h, kernel[0], strides[0], dilations[0], pads[0], pads[2])
    ow = _window_out(w, kernel[1], strides[1], dilations[1], pads[1], pads[3])
    if (oh is not None and oh < 1) or (ow is not None and ow < 1):
        _fail(node, f"window {kernel} with pads {pads} does not fit input {x.shape}: output {oh}x{ow}")
    return (n, oh, ow, channels)


def _acc_stats(acc: np.ndarray, acc_bits: int, overflow_count: int, pair_saturations: int) -> dict:
    peak = int(np.abs(acc.astype(np.int64)).max()) if acc.size else 0
    return {
        "overflow_count": overflow_count,
        "pair_saturation_count": pair_saturations,
        "max_abs_accumulator": peak,
        "accumulator_headroom_bits": acc_bits - 1 - peak.bit_length(),
    }


class Op:
    """Base of the registry entries; see the module docstring."""

    name = "?"

    def check(self, node: Node, graph: Graph) -> None:
        raise NotImplementedError

    def infer(self, node: Node, inputs: list[TensorInfo], graph: Graph) -> list[tuple]:
        raise NotImplementedError

    def prepare(self, node: Node, graph: Graph) -> dict:
        return {}

    def run(self, plan: dict, inputs: list[np.ndarray], kernels) -> tuple[list[np.ndarray], dict]:
        raise NotImplementedError

    def run_untraced(self, plan: dict, inputs: list[np.ndarray], kernels) -> tuple[list[np.ndarray], dict]:
        """:meth:`run` for a caller that keeps no intermediate values: ops may skip work
        that only a trace reads (the MAC ops write no int32 accumulator tensor and count no
        clamps: their stats then lack ``saturation_count``)."""
        return self.run(plan, inputs, kernels)

    def bind(self, plan: dict, kernels):
        """``step(inputs) -> (outputs, stats)``, :meth:`run_untraced` with ``plan`` and ``kernels``
        fixed: whatever does not depend on the inputs (weight packing, kernel lookup) done once.
        A model's run plan is the list of its nodes' steps."""
        run = self.run_untraced
        return lambda inputs: run(plan, inputs, kernels)


# --------------------------------------------------------------------------
# Multiply-accumulate ops: raw int32 accumulators, then requantization.
# --------------------------------------------------------------------------


class _MacOp(Op):
    def _requant_plan(self, node, graph, channels, operand_dtypes):
        out = graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph, channels=channels)
        mult, shift, scale = rq.kernel_args(channels)
        lo, hi = clamp_bounds(node, out)
        profile = graph.profile
        return {
            "node": node.name,
            "x_dtype": graph.tensors[node.inputs[0]].np_dtype,
            "requant": (mult, shift, scale, rq.code, profile.multiplier_bits, out.zero_point, lo, hi, out.np_dtype),
            "acc": (profile.accumulator_bits, OVERFLOW_CODES[profile.overflow],
                    node_pairwise_int16(node, graph, *operand_dtypes)),
        }

    def _finish(self, plan, acc, overflow_count, pair_saturations, kernels, per_tensor=False):
        if per_tensor:
            out, saturations = kernels.requantize(acc.reshape(-1, 1), 0, *plan["requant"])
            out = out.reshape(acc.shape)
        else:
            out, saturations = kernels.requantize(acc, 0, *plan["requant"])
        stats = _acc_stats(acc, plan["acc"][0], overflow_count, pair_saturations)
        stats["saturation_count"] = saturations
        stats["accumulator"] = acc
        return [out], stats

    def run(self, plan, inputs, kernels):
        acc, ovf, pairs = getattr(kernels, self.kernel)(inputs[0], *plan["mac"], *plan["acc"])
        return self._finish(plan, acc, ovf, pairs, kernels)

    def run_untraced(self, plan, inputs, kernels):
        return self.bind(plan, kernels)(inputs)

    def bind(self, plan, kernels):
        # The weights are packed for a kernel backend when it is first bound, then kept in the plan.
        # A bound step reports no clamp count (a run keeps only overflows; a trace counts clamps),
        # which lets the fast kernels requantize in registers.
        packed = plan.setdefault("packed", {})
        if kernels.__name__ not in packed:
            prepare = getattr(kernels, self.packing_kernel)
            packed[kernels.__name__] = prepare(plan["x_dtype"], *plan["mac"], *plan["acc"])
        launch = getattr(kernels, self.launcher_kernel)(packed[kernels.__name__], *plan["requant"],
                                                        count_clamps=False)
        finish = self._untraced_result

        def step(inputs):
            out, ovf, pairs, saturations = launch(inputs[0])
            return finish(plan, inputs, kernels, out, ovf, pairs, saturations)

        return step

    def _untraced_result(self, plan, inputs, kernels, out, ovf, pairs, saturations):
        if ovf:  # rare, and already on the slow checked path: rerun for the accumulator statistics
            return self.run(plan, inputs, kernels)
        stats = {"overflow_count": ovf, "pair_saturation_count": pairs}
        if saturations is not None:
            stats["saturation_count"] = saturations
        return [out], stats

    @staticmethod
    def _channels_and_dtypes(node, graph):
        """``(output channels, (activation dtype, weight dtype))`` of a weight-stationary node."""
        weight = node.params["weight"]
        return weight.shape[0], (graph.tensors[node.inputs[0]].dtype, weight.dtype.name)

    @staticmethod
    def _weight_args(node, graph):
        """``(x_zero_point, weight, weight_zero_point, bias)`` as the ``*_acc`` kernels take them."""
        return (
            graph.tensors[node.inputs[0]].zero_point,
            np.ascontiguousarray(node.params["weight"]),
            node.params["weight_zero_point"].astype(np.int64, copy=False),  # the graph's own arrays where
            node.params["bias"].astype(np.int32, copy=False),  # they already have these dtypes: no second copy
        )

    def _check_weights(self, node, graph, weight, out_channels):
        profile = graph.profile
        wlo, whi = dtype_range(profile.weight_dtype)
        if weight.dtype != profile.weight_dtype:
            _fail(node, f"weight dtype must be {profile.weight_dtype} for profile {profile.name!r}, found {weight.dtype}")
        wzp = _param(node, "weight_zero_point", shape=(out_channels,))
        _check_range(node, "weight_zero_point", wzp, wlo, whi)
        bias = _param(node, "bias", shape=(out_channels,))
        blo, bhi = -(2 ** (profile.bias_bits - 1)), 2 ** (profile.bias_bits - 1) - 1
        _check_range(node, "bias", bias.astype(np.int64), blo, bhi)
        rescale_params(node, graph, channels=out_channels)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        node_pairwise_int16(node, graph, *self._channels_and_dtypes(node, graph)[1])


@register("conv2d")
class Conv2D(_MacOp):
    """2-D convolution, NHWC input, OHWI weight (groups, depthwise, dilation, asymmetric pads)."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        w = _param(node, "weight", ndim=4)
        groups = _int_attr(node, "groups", 1, lo=1)
        _ints_attr(node, "strides", 2, (1, 1), lo=1)
        _ints_attr(node, "dilations", 2, (1, 1), lo=1)
        _ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
        cout, _, _, cin_g = w.shape
        x = graph.tensors[node.inputs[0]]
        if len(x.shape) == 4 and x.shape[3] is not None and x.shape[3] != cin_g * groups:
            _fail(node, f"input channels {x.shape[3]} != weight channels {cin_g} x groups {groups}")
        if cout % groups:
            _fail(node, f"output channels {cout} are not divisible by groups {groups}")
        self._check_weights(node, graph, w, cout)

    def infer(self, node, inputs, graph):
        w = node.params["weight"]
        return [
            _spatial_infer(
                node,
                inputs[0],
                w.shape[1:3],
                node.attrs.get("strides", (1, 1)),
                node.attrs.get("dilations", (1, 1)),
                node.attrs.get("pads", (0, 0, 0, 0)),
                w.shape[0],
            )
        ]

    def prepare(self, node, graph):
        plan = self._requant_plan(node, graph, *self._channels_and_dtypes(node, graph))
        plan["mac"] = self._weight_args(node, graph) + (
            tuple(node.attrs.get("strides", (1, 1))),
            tuple(node.attrs.get("dilations", (1, 1))),
            tuple(node.attrs.get("pads", (0, 0, 0, 0))),
            int(node.attrs.get("groups", 1)),
        )
        return plan

    kernel = "conv2d_nhwc_acc"
    packing_kernel = "conv2d_nhwc_prepare"
    launcher_kernel = "conv2d_nhwc_launcher"


@register("fully_connected")
class FullyConnected(_MacOp):
    """``y[n, o] = sum_k x[n, k] * w[o, k]`` with int32 bias; weight ``[out, in]``."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        w = _param(node, "weight", ndim=2)
        x = graph.tensors[node.inputs[0]]
        if len(x.shape) != 2 or (x.shape[1] is not None and x.shape[1] != w.shape[1]):
            _fail(node, f"input {x.name!r} must be [batch, {w.shape[1]}], found {x.shape}")
        self._check_weights(node, graph, w, w.shape[0])

    def infer(self, node, inputs, graph):
        return [(inputs[0].shape[0], node.params["weight"].shape[0])]

    def prepare(self, node, graph):
        plan = self._requant_plan(node, graph, *self._channels_and_dtypes(node, graph))
        plan["mac"] = self._weight_args(node, graph)
        return plan

    kernel = "fully_connected_acc"
    packing_kernel = "fully_connected_prepare"
    launcher_kernel = "fully_connected_launcher"


@register("matmul")
class MatMul(_MacOp):
    """Activations x activations: ``a [..., M, K] @ b [..., K, N]`` with both zero points."""

    def check(self, node, graph):
        _check_arity(node, 2)
        _check_dtypes(node, graph)
        a, b = (graph.tensors[t] for t in node.inputs)
        if len(a.shape) < 2 or len(b.shape) < 2:
            _fail(node, f"inputs must be at least 2-D, found {a.shape} and {b.shape}")
        if a.shape[-1] is not None and b.shape[-2] is not None and a.shape[-1] != b.shape[-2]:
            _fail(node, f"inner dimensions differ: a {a.shape} vs b {b.shape}")
        if len(b.shape) != 2 and len(b.shape) != len(a.shape):
            _fail(node, f"b must be 2-D or have a's rank {len(a.shape)}, found {b.shape}")
        node_pairwise_int16(node, graph, a.dtype, b.dtype)
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        a, b = inputs
        return [a.shape[:-1] + (b.shape[-1],)]

    def prepare(self, node, graph):
        plan = self._requant_plan(node, graph, 1, [graph.tensors[t].dtype for t in node.inputs])
        plan["zero_points"] = tuple(graph.tensors[t].zero_point for t in node.inputs)
        return plan

    @staticmethod
    def _operands(plan, inputs):
        """``(a [B, M, K], z_a, b [B, K, N], z_b)`` contiguous, and the leading shape of the output."""
        a, b = inputs
        lead = a.shape[:-2]
        a3 = a.reshape((-1,) + a.shape[-2:])
        b3 = np.broadcast_to(b, lead + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
        a_zp, b_zp = plan["zero_points"]
        return (np.ascontiguousarray(a3), a_zp, np.ascontiguousarray(b3), b_zp), lead

    def run(self, plan, inputs, kernels):
        operands, lead = self._operands(plan, inputs)
        acc, ovf, pairs = kernels.matmul_acc(*operands, *plan["acc"])
        acc = acc.reshape(lead + acc.shape[-2:])
        return self._finish(plan, acc, ovf, pairs, kernels, per_tensor=True)

    bind = Op.bind  # b is an activation: nothing to pack ahead of the inputs

    def run_untraced(self, plan, inputs, kernels):
        operands, lead = self._operands(plan, inputs)
        out, ovf, pairs, saturations = kernels.matmul_requantized(*operands, *plan["acc"], *plan["requant"])
        return self._untraced_result(plan, inputs, kernels, out.reshape(lead + out.shape[-2:]), ovf, pairs,
                                     saturations)


# --------------------------------------------------------------------------
# Requantizing elementwise ops.
# --------------------------------------------------------------------------


@register("rescale")
class RescaleOp(Op):
    """Requantize to new scale / zero point: ``y = zo + rescale(x - zx)``, clamped."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph, ("int8", "uint8", "int16", "uint16", "int32"))
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph)
        lo, hi = clamp_bounds(node, out)
        return {
            "args": (x.zero_point, *rq.kernel_args(1), rq.code, graph.profile.multiplier_bits,
                     out.zero_point, lo, hi, out.np_dtype)
        }

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        flat = np.ascontiguousarray(x).reshape(-1, 1)
        out, sat = kernels.requantize(flat, *plan["args"])
        return [out.reshape(x.shape)], {"saturation_count": sat}


def _broadcast_shape(node, shapes):
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            _fail(node, f"input shapes {shapes} do not broadcast")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def _broadcast_operands(inputs):
    """The two inputs of a binary op as C-contiguous arrays of their broadcast shape (no copy when they
    already are)."""
    a, b = inputs
    if a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous:
        return a, b
    return tuple(np.ascontiguousarray(v) for v in np.broadcast_arrays(a, b))


@register("add")
class Add(Op):
    """``y = a + b`` (or ``a - b`` with attribute ``subtract``), both inputs rescaled first.

    Integer modes follow the TFLite scheme: each input, minus its zero point and
    shifted left by ``left_shift``, is rescaled to a common scale; the sum is
    rescaled to the output.  Float modes rescale in floating point.
    """

    def check(self, node, graph):
        _check_arity(node, 2)
        _check_dtypes(node, graph)
        _int_attr(node, "left_shift", 0, lo=0, hi=30)
        if not isinstance(node.attrs.get("subtract", False), bool):
            _fail(node, f"attribute subtract must be a boolean, found {node.attrs['subtract']!r}")
        for prefix in ("a_", "b_", "out_"):
            rescale_params(node, graph, prefix)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        _broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [_broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        a, b = (graph.tensors[t] for t in node.inputs)
        out = graph.tensors[node.outputs[0]]
        ra, rb, ro = (rescale_params(node, graph, p) for p in ("a_", "b_", "out_"))
        lo, hi = clamp_bounds(node, out)

        def scalars(rq):
            m, s, c = rq.kernel_args(1)
            return int(m[0]), int(s[0]), float(c[0])

        return {
            "args": (
                a.zero_point, *scalars(ra), b.zero_point, *scalars(rb),
                int(node.attrs.get("left_shift", 0)), *scalars(ro), ro.code, graph.profile.multiplier_bits,
                out.zero_point, lo, hi, out.np_dtype,
            ),
            "subtract": bool(node.attrs.get("subtract", False)),
        }

    def run(self, plan, inputs, kernels):
        a, b = _broadcast_operands(inputs)
        args = plan["args"]
        out, sat = kernels.add(a, *args[:4], b, *args[4:], subtract=plan["subtract"])
        return [out], {"saturation_count": sat}


@register("mul")
class Mul(Op):
    """``y = zo + rescale((a - za) * (b - zb))``, clamped; inputs broadcast."""

    def check(self, node, graph):
        _check_arity(node, 2)
        _check_dtypes(node, graph)
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        _broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [_broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        a, b = (graph.tensors[t] for t in node.inputs)
        out = graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph)
        m, s, c = rq.kernel_args(1)
        lo, hi = clamp_bounds(node, out)
        return {
            "zero_points": (a.zero_point, b.zero_point),
            "args": (int(m[0]), int(s[0]), float(c[0]), rq.code, graph.profile.multiplier_bits,
                     out.zero_point, lo, hi, out.np_dtype),
        }

    def run(self, plan, inputs, kernels):
        a, b = _broadcast_operands(inputs)
        za, zb = plan["zero_points"]
        out, sat = kernels.mul(a, za, b, zb, *plan["args"])
        return [out], {"saturation_count": sat}


@register("concat")
class Concat(Op):
    """Concatenation along ``axis``; input ``i`` is rescaled by ``multiplier[i]``/``shift[i]``.

    An input quantized like the output has multiplier ``2**(b-1)`` and shift 1
    (a real multiplier of exactly 1), which every rounding mode passes through
    unchanged.
    """

    def check(self, node, graph):
        _check_arity(node, None)
        _check_dtypes(node, graph)
        shapes = [graph.tensors[t].shape for t in node.inputs]
        rank = len(shapes[0])
        axis = _int_attr(node, "axis", lo=-rank, hi=rank - 1) % rank
        for s in shapes:
            if len(s) != rank or any(
                i != axis and a is not None and b is not None and a != b for i, (a, b) in enumerate(zip(s, shapes[0]))
            ):
                _fail(node, f"inputs must agree on every dimension but axis {axis}, found {shapes}")
        rescale_params(node, graph, channels=len(node.inputs))
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        rank = len(inputs[0].shape)
        axis = node.attrs["axis"] % rank
        sizes = [t.shape[axis] for t in inputs]
        shape = list(inputs[0].shape)
        for s in inputs[1:]:
            shape = [a if a is not None else b for a, b in zip(shape, s.shape)]
        shape[axis] = None if None in sizes else sum(sizes)
        return [tuple(shape)]

    def prepare(self, node, graph):
        out = graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph, channels=len(node.inputs))
        m, s, c = rq.kernel_args(len(node.inputs))
        lo, hi = clamp_bounds(node, out)
        per_input = [
            (graph.tensors[t].zero_point, m[i : i + 1], s[i : i + 1], c[i : i + 1]) for i, t in enumerate(node.inputs)
        ]
        return {
            "axis": node.attrs["axis"],
            "per_input": per_input,
            "tail": (rq.code, graph.profile.multiplier_bits, out.zero_point, lo, hi, out.np_dtype),
        }

    def run(self, plan, inputs, kernels):
        parts, total = [], 0
        for x, (zp, m, s, c) in zip(inputs, plan["per_input"]):
            flat = np.ascontiguousarray(x).reshape(-1, 1)
            y, sat = kernels.requantize(flat, zp, m, s, c, *plan["tail"])
            parts.append(y.reshape(x.shape))
            total += sat
        return [np.concatenate(parts, axis=plan["axis"])], {"saturation_count": total}


# --------------------------------------------------------------------------
# Pooling and reductions.
# --------------------------------------------------------------------------


@register("max_pool")
class MaxPool(Op):
    """Max pooling over NHWC windows; padded positions never win."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        _same_quantization(node, graph)
        kernel = _ints_attr(node, "kernel", 2, lo=1)
        pads = _ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
        _ints_attr(node, "strides", 2, (1, 1), lo=1)
        _ints_attr(node, "dilations", 2, (1, 1), lo=1)
        if pads[0] >= kernel[0] or pads[2] >= kernel[0] or pads[1] >= kernel[1] or pads[3] >= kernel[1]:
            _fail(node, f"pads {list(pads)} must be smaller than the kernel {list(kernel)}")

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [_spatial_infer(node, x, node.attrs["kernel"], node.attrs.get("strides", (1, 1)),
                               node.attrs.get("dilations", (1, 1)), node.attrs.get("pads", (0, 0, 0, 0)), x.shape[-1])]

    def prepare(self, node, graph):
        return {"args": tuple(tuple(node.attrs.get(k, d)) for k, d in
                              (("kernel", None), ("strides", (1, 1)), ("dilations", (1, 1)), ("pads", (0, 0, 0, 0))))}

    def run(self, plan, inputs, kernels):
        return [kernels.max_pool_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])], {}


@register("avg_pool")
class AvgPool(Op):
    """Average pooling of raw codes, rounded half away from zero (output quantized like input)."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        _same_quantization(node, graph)
        _check_average_window(node)

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [_spatial_infer(node, x, node.attrs["kernel"], node.attrs.get("strides", (1, 1)), (1, 1),
                               node.attrs.get("pads", (0, 0, 0, 0)), x.shape[-1])]

    def prepare(self, node, graph):
        return {"args": (graph.tensors[node.inputs[0]].zero_point, tuple(node.attrs["kernel"]),
                         tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("pads", (0, 0, 0, 0))),
                         bool(node.attrs.get("count_include_pad", False)))}

    def run(self, plan, inputs, kernels):
        return [kernels.avg_pool_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])], {}


def _axes(node, rank, key="axes"):
    axes = node.attrs.get(key)
    if not isinstance(axes, (list, tuple)) or not axes or not all(isinstance(a, int) for a in axes):
        _fail(node, f"attribute {key} must be a non-empty list of integers, found {axes!r}")
    if any(not -rank <= a < rank for a in axes):
        _fail(node, f"attribute {key} {list(axes)} is out of range for rank {rank}")
    norm = sorted({a % rank for a in axes})
    if len(norm) != len(axes):
        _fail(node, f"attribute {key} {list(axes)} repeats an axis")
    return norm


@register("mean")
class Mean(Op):
    """Mean over ``axes`` (global average pooling is axes [1, 2] of NHWC); 1/N is folded into the multiplier."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        x = graph.tensors[node.inputs[0]]
        axes = _axes(node, len(x.shape))
        if any(x.shape[a] is None for a in axes):
            _fail(node, f"reduced axes {axes} of input {x.shape} must have known sizes")
        if not isinstance(node.attrs.get("keepdims", False), bool):
            _fail(node, f"attribute keepdims must be a boolean, found {node.attrs['keepdims']!r}")
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        x = inputs[0]
        axes = _axes(node, len(x.shape))
        if node.attrs.get("keepdims", False):
            return [tuple(1 if i in axes else d for i, d in enumerate(x.shape))]
        return [tuple(d for i, d in enumerate(x.shape) if i not in axes)]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph)
        m, s, c = rq.kernel_args(1)
        lo, hi = clamp_bounds(node, out)
        return {
            "axes": _axes(node, len(x.shape)),
            "keepdims": bool(node.attrs.get("keepdims", False)),
            "args": (x.zero_point, int(m[0]), int(s[0]), float(c[0]), rq.code, graph.profile.multiplier_bits,
                     out.zero_point, lo, hi, out.np_dtype),
        }

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        axes = plan["axes"]
        if axes == list(range(axes[0], axes[-1] + 1)):
            outer = math.prod(x.shape[: axes[0]])
            inner = math.prod(x.shape[axes[-1] + 1 :])
            x3 = np.ascontiguousarray(x).reshape(outer, -1, inner)
        else:
            kept = [i for i in range(x.ndim) if i not in axes]
            x3 = np.ascontiguousarray(np.transpose(x, kept + axes)).reshape(math.prod(x.shape[i] for i in kept), -1, 1)
        out, sat = kernels.mean_reduce(x3, *plan["args"])
        if plan["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return [out.reshape(shape)], {"saturation_count": sat}


# --------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------


@register("lut")
class Lut(Op):
    """Any elementwise function of a <=16-bit input as a table of ``2**bits`` output codes."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        entries = 2 ** (8 * x.np_dtype.itemsize)
        table = _param(node, "table", shape=(entries,))
        if table.dtype != out.np_dtype:
            _fail(node, f"table dtype must be the output dtype {out.dtype}, found {table.dtype}")

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        x = graph.tensors[node.inputs[0]]
        return {"args": (np.ascontiguousarray(node.params["table"]), dtype_range(x.dtype)[0])}

    def run(self, plan, inputs, kernels):
        return [kernels.lookup_table(np.ascontiguousarray(inputs[0]), *plan["args"])], {}


@register("softmax")
class Softmax(Op):
    """Integer softmax over the last axis from an exp table indexed by ``max - x`` (see the kernel)."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph)
        x = graph.tensors[node.inputs[0]]
        entries = 2 ** (8 * x.np_dtype.itemsize)
        table = _param(node, "exp_table", shape=(entries,))
        _check_range(node, "exp_table", table.astype(np.int64), 0, 2**30)
        if node_rounding(node, graph) not in INTEGER_ROUNDING_MODES:
            _fail(node, f"integer softmax needs an integer rounding mode, the node rounds {node_rounding(node, graph)!r}")
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        out = graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph)
        lo, hi = clamp_bounds(node, out)
        return {"args": (node.params["exp_table"].astype(np.int64), int(rq.multiplier[0]), int(rq.shift[0]), rq.code,
                         graph.profile.multiplier_bits, out.zero_point, lo, hi, out.np_dtype)}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out, sat = kernels.softmax_lastaxis(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), *plan["args"])
        return [out.reshape(x.shape)], {"saturation_count": sat}


# --------------------------------------------------------------------------
# Data movement: the output is quantized exactly like the input.
# --------------------------------------------------------------------------


@register("pad")
class Pad(Op):
    """Constant padding with ``value`` (by default the input zero point, i.e. real 0)."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _same_quantization(node, graph)
        x = graph.tensors[node.inputs[0]]
        _ints_attr(node, "pads_before", len(x.shape), lo=0)
        _ints_attr(node, "pads_after", len(x.shape), lo=0)
        lo, hi = dtype_range(x.dtype)
        _int_attr(node, "value", x.zero_point, lo=lo, hi=hi)

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [tuple(None if d is None else d + a + b
                      for d, a, b in zip(x.shape, node.attrs["pads_before"], node.attrs["pads_after"]))]

    def prepare(self, node, graph):
        x = graph.tensors[node.inputs[0]]
        return {"args": (tuple(node.attrs["pads_before"]), tuple(node.attrs["pads_after"]),
                         int(node.attrs.get("value", x.zero_point)))}

    def run(self, plan, inputs, kernels):
        return [kernels.pad_constant(inputs[0], *plan["args"])], {}


class _LayoutOp(Op):
    def check(self, node, graph):
        _check_arity(node, 1)
        _same_quantization(node, graph)
        self.check_attrs(node, graph.tensors[node.inputs[0]].shape)

    def check_attrs(self, node, shape):
        pass

    def prepare(self, node, graph):
        return {"attrs": node.attrs}


@register("reshape")
class Reshape(_LayoutOp):
    """Reshape; ``shape`` may hold one -1 (inferred) and 0 (copy the input dimension), as ONNX."""

    def check_attrs(self, node, shape):
        target = node.attrs.get("shape")
        if not isinstance(target, (list, tuple)) or not all(isinstance(d, int) and d >= -1 for d in target):
            _fail(node, f"attribute shape must be a list of integers >= -1, found {target!r}")
        if list(target).count(-1) > 1:
            _fail(node, f"attribute shape {list(target)} has more than one -1")
        if any(d == 0 and i >= len(shape) for i, d in enumerate(target)):
            _fail(node, f"attribute shape {list(target)} copies a dimension the input {shape} does not have")

    def infer(self, node, inputs, graph):
        return [_reshape_dims(node, inputs[0].shape, node.attrs["shape"])]

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        return [x.reshape(_reshape_dims(None, x.shape, plan["attrs"]["shape"]))], {}


def _reshape_dims(node, shape, target):
    """ONNX reshape arithmetic on shapes whose unknown dimensions are copied (0) or inferred (-1)."""
    dims = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    copied = {i for i, d in enumerate(target) if d == 0 and shape[i] is None}
    if any(d is None and i not in copied for i, d in enumerate(shape)):
        return tuple(None if d == -1 else d for d in dims)  # an unknown size moves: nothing to check
    size_in = math.prod(d for i, d in enumerate(shape) if i not in copied)
    size_out = math.prod(d for i, d in enumerate(dims) if i not in copied and d != -1)
    if -1 in dims:
        if size_out == 0 or size_in % size_out:
            _fail(node, f"cannot reshape {shape} into {list(target)}")
        dims[dims.index(-1)] = size_in // size_out
    elif size_in != size_out:
        _fail(node, f"cannot reshape {shape} into {list(target)}")
    return tuple(dims)


@register("transpose")
class Transpose(_LayoutOp):
    """Permute axes by ``perm``."""

    def check_attrs(self, node, shape):
        perm = node.attrs.get("perm")
        if not isinstance(perm, (list, tuple)) or sorted(perm) != list(range(len(shape))):
            _fail(node, f"attribute perm must be a permutation of range({len(shape)}), found {perm!r}")

    def infer(self, node, inputs, graph):
        return [tuple(inputs[0].shape[p] for p in node.attrs["perm"])]

    def run(self, plan, inputs, kernels):
        return [kernels.transpose(inputs[0], plan["attrs"]["perm"])], {}


@register("flatten")
class Flatten(_LayoutOp):
    """``[d0..d(axis-1)] x [d(axis)..]`` to 2-D, as ONNX Flatten."""

    def check_attrs(self, node, shape):
        _int_attr(node, "axis", 1, lo=0, hi=len(shape))

    def infer(self, node, inputs, graph):
        shape, axis = inputs[0].shape, node.attrs.get("axis", 1)
        head, tail = shape[:axis], shape[axis:]
        return [(None if None in head else math.prod(head), None if None in tail else math.prod(tail))]

    def run(self, plan, inputs, kernels):
        x, axis = inputs[0], plan["attrs"].get("axis", 1)
        return [x.reshape(math.prod(x.shape[:axis]), -1)], {}


@register("squeeze")
class Squeeze(_LayoutOp):
    """Drop the size-1 ``axes``."""

    def check_attrs(self, node, shape):
        for a in _axes(node, len(shape)):
            if shape[a] != 1:
                _fail(node, f"axis {a} of input {shape} has size {shape[a]}, not 1")

    def infer(self, node, inputs, graph):
        shape = inputs[0].shape
        axes = _axes(node, len(shape))
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        return [np.squeeze(x, axis=tuple(a % x.ndim for a in plan["attrs"]["axes"]))], {}


@register("unsqueeze")
class Unsqueeze(_LayoutOp):
    """Insert size-1 ``axes`` (positions in the output)."""

    def check_attrs(self, node, shape):
        _axes(node, len(shape) + len(node.attrs.get("axes") or ()))

    def infer(self, node, inputs, graph):
        shape = list(inputs[0].shape)
        for a in _axes(node, len(shape) + len(node.attrs["axes"])):
            shape.insert(a, 1)
        return [tuple(shape)]

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        rank = x.ndim + len(plan["attrs"]["axes"])
        return [np.expand_dims(x, tuple(a % rank for a in plan["attrs"]["axes"]))], {}



def add_params(a_scale: float, b_scale: float, out_scale: float, profile, activation_bits: int = 8) -> tuple[dict, int]:
    """Parameters of an ``add`` node: ``(params, left_shift)``.

    Integer modes use TFLite's scheme: inputs shifted left by ``left_shift``
    (20 for 8-bit codes, leaving headroom for a 9-bit difference in int32) and
    rescaled by ``s_a / (2 max(s_a, s_b))`` and ``s_b / (2 max(s_a, s_b))``;
    the sum by ``2 max(s_a, s_b) / (2**left_shift s_out)``.  Float modes rescale
    each input straight to the output scale.
    """
    rounding, bits = profile.rounding, profile.multiplier_bits
    if rounding not in INTEGER_ROUNDING_MODES:
        reals, left_shift = (a_scale / out_scale, b_scale / out_scale, 1.0), 0
    else:
        left_shift = 20 if activation_bits <= 8 else max(0, 29 - activation_bits)
        twice_max = 2.0 * max(a_scale, b_scale)
        reals = (a_scale / twice_max, b_scale / twice_max, twice_max / (2.0**left_shift * out_scale))
    params = {}
    for prefix, real in zip(("a_", "b_", "out_"), reals):
        params.update(Rescale.from_real(np.array([real]), rounding, bits).params(prefix))
    return params, left_shift


@register("constant")
class Constant(Op):
    """A constant tensor of codes (an operand of add / mul that the model fixes)."""

    def check(self, node, graph):
        _check_arity(node, 0)
        out = graph.tensors[node.outputs[0]]
        value = _param(node, "value")
        if value.dtype != out.np_dtype:
            _fail(node, f"value dtype must be the output dtype {out.dtype}, found {value.dtype}")

    def infer(self, node, inputs, graph):
        return [node.params["value"].shape]

    def prepare(self, node, graph):
        return {"value": node.params["value"]}

    def run(self, plan, inputs, kernels):
        return [plan["value"]], {}


@register("resize_nearest")
class ResizeNearest(Op):
    """Nearest-neighbour resize of NHWC codes: output row i reads input row ``index_h[i]``."""

    def check(self, node, graph):
        _check_arity(node, 1)
        _same_quantization(node, graph)
        x = graph.tensors[node.inputs[0]]
        if len(x.shape) != 4:
            _fail(node, f"input {x.name!r} must be NHWC (4-D), found shape {x.shape}")
        for key, axis in (("index_h", 1), ("index_w", 2)):
            index = _param(node, key, ndim=1)
            if x.shape[axis] is not None:
                _check_range(node, key, index, 0, x.shape[axis] - 1)

    def infer(self, node, inputs, graph):
        n, _, _, c = inputs[0].shape
        return [(n, node.params["index_h"].size, node.params["index_w"].size, c)]

    def prepare(self, node, graph):
        return {"index_h": node.params["index_h"].astype(np.intp), "index_w": node.params["index_w"].astype(np.intp)}

    def run(self, plan, inputs, kernels):
        return [np.ascontiguousarray(inputs[0][:, plan["index_h"]][:, :, plan["index_w"]])], {}


@register("softmax_gemmlowp")
class SoftmaxGemmlowp(Op):
    """LiteRT's reference int8 softmax over the last axis (gemmlowp fixed-point exp, see the kernel).

    Parameters ``input_multiplier`` / ``input_left_shift`` encode ``beta * s_x * 2**26``
    (``PreprocessSoftmaxScaling``) and ``diff_min`` the most negative ``x - max`` that
    still counts (``-CalculateInputRadius``).  The output scale is fixed at
    ``2**-bits`` and its zero point at the dtype minimum, as in LiteRT.
    """

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph, ("int8", "uint8"))
        out = graph.tensors[node.outputs[0]]
        if out.dtype != graph.tensors[node.inputs[0]].dtype:
            _fail(node, f"output dtype must be the input dtype {graph.tensors[node.inputs[0]].dtype}, found {out.dtype}")
        if out.zero_point != dtype_range(out.dtype)[0]:
            _fail(node, f"output zero point must be {dtype_range(out.dtype)[0]}, found {out.zero_point}")
        mult = _param(node, "input_multiplier", shape=(1,))
        _check_range(node, "input_multiplier", mult.astype(np.int64), 0, 2**31 - 1)
        shift = _param(node, "input_left_shift", shape=(1,))
        _check_range(node, "input_left_shift", shift.astype(np.int64), 0, 31)
        diff_min = _param(node, "diff_min", shape=(1,))
        _check_range(node, "diff_min", diff_min.astype(np.int64), -(2**31), 0)

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        p = node.params
        return {"args": (int(p["input_multiplier"][0]), int(p["input_left_shift"][0]), int(p["diff_min"][0]),
                         graph.tensors[node.outputs[0]].np_dtype)}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out = kernels.softmax_gemmlowp_lastaxis(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), *plan["args"])
        return [out.reshape(x.shape)], {}


def _float32_scalar_param(node, key, positive=False) -> np.float32:
    """A float32 parameter of shape (1,): finite, and above 0 where ``positive``."""
    value = _param(node, key, kinds="f", shape=(1,))
    if value.dtype != np.float32:
        _fail(node, f"parameter {key} must be float32, found {value.dtype}")
    if not np.isfinite(value[0]) or (positive and not value[0] > 0):
        _fail(node, f"parameter {key} must be finite{' and > 0' if positive else ''}, found {value[0]}")
    return value[0]


@register("add_float32_fma")
class AddFloat32Fma(Op):
    """onnxruntime's QLinearAdd: ``y = clamp(rint(fma(a, a_ratio, fma(b, b_ratio, offset))))`` on raw codes.

    Parameters ``a_ratio`` (``s_a / s_y``), ``b_ratio`` (``s_b / s_y``) and
    ``offset`` (``z_y - fma(a_ratio, z_a, b_ratio * z_b)``) are float32 arrays of
    shape (1,), formed by the importer as onnxruntime forms them; the output
    zero point is inside ``offset``.  Inputs broadcast.  A profile-independent
    float op: it models the one runtime that computes QLinearAdd this way
    (``qladd_avx2.cpp``), see :func:`intsim.kernels.add_float32_fma`.
    """

    PARAMS = ("a_ratio", "b_ratio", "offset")

    def check(self, node, graph):
        _check_arity(node, 2)
        _check_dtypes(node, graph)
        for key in self.PARAMS:
            _float32_scalar_param(node, key)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        _broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [_broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        out = graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        ratios = tuple(np.float32(node.params[key][0]) for key in self.PARAMS)
        return {"args": (*ratios, lo, hi, out.np_dtype)}

    def run(self, plan, inputs, kernels):
        a, b = _broadcast_operands(inputs)
        out, sat = kernels.add_float32_fma(a, b, *plan["args"])
        return [out], {"saturation_count": sat}


def _max_centred(info: TensorInfo) -> int:
    """Largest ``|code - zero_point|`` a tensor can hold."""
    lo, hi = dtype_range(info.dtype)
    return max(abs(lo - info.zero_point), abs(hi - info.zero_point))


@register("mul_float32")
class MulFloat32(Op):
    """onnxruntime's QLinearMul: ``y = clamp(rint(float32((a - z_a)(b - z_b)) * ratio + z_y))``, 8-bit codes.

    Parameter ``ratio`` (``s_a * s_b / s_y``) is a float32 array of shape (1,),
    formed by the importer as onnxruntime forms it; the output zero point is
    added in float32 before rounding.  Inputs broadcast.  A profile-independent
    float op, see :func:`intsim.kernels.mul_float32`.
    """

    def check(self, node, graph):
        _check_arity(node, 2)
        _check_dtypes(node, graph, ("int8", "uint8"))
        ratio = _float32_scalar_param(node, "ratio")
        a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
        reach = float(abs(ratio)) * _max_centred(a) * _max_centred(b) + abs(out.zero_point)
        if reach >= 2.0**31:
            _fail(node, f"ratio {ratio} can take |product * ratio + zero point| to {reach:.3g} >= 2**31, where "
                        f"cvtps2dq returns INT32_MIN (not modelled)")
        clamp_bounds(node, out)
        _broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [_broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
        lo, hi = clamp_bounds(node, out)
        return {"args": (a.zero_point, b.zero_point, np.float32(node.params["ratio"][0]), out.zero_point, lo, hi,
                         out.np_dtype)}

    def run(self, plan, inputs, kernels):
        a, b = _broadcast_operands(inputs)
        za, zb, *rest = plan["args"]
        out, sat = kernels.mul_float32(a, za, b, zb, *rest)
        return [out], {"saturation_count": sat}


@register("avg_pool_float32")
class AvgPoolFloat32(Op):
    """onnxruntime's QLinearAveragePool: dequantize, average in float32, quantize (NHWC, 8-bit codes).

    Parameters ``x_scale`` and ``y_scale`` are float32 arrays of shape (1,);
    attributes ``kernel``, ``strides``, ``pads`` (each below the kernel) and
    ``count_include_pad`` as for ``avg_pool``.  A profile-independent float op,
    see :func:`intsim.kernels.avg_pool_float32_nhwc`.
    """

    def check(self, node, graph):
        _check_arity(node, 1)
        _check_dtypes(node, graph, ("int8", "uint8"))
        for key in ("x_scale", "y_scale"):
            _float32_scalar_param(node, key, positive=True)
        _check_average_window(node)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [_spatial_infer(node, x, node.attrs["kernel"], node.attrs.get("strides", (1, 1)), (1, 1),
                               node.attrs.get("pads", (0, 0, 0, 0)), x.shape[-1])]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        return {"args": (x.zero_point, np.float32(node.params["x_scale"][0]), tuple(node.attrs["kernel"]),
                         tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("pads", (0, 0, 0, 0))),
                         bool(node.attrs.get("count_include_pad", False)), np.float32(node.params["y_scale"][0]),
                         out.zero_point, lo, hi, out.np_dtype)}

    def run(self, plan, inputs, kernels):
        out, sat = kernels.avg_pool_float32_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])
        return [out], {"saturation_count": sat}
