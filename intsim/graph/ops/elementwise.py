"""Elementwise, pooling and reduction ops: rescale, add, mul, concat, pools, mean, lut, softmax, pad."""

from __future__ import annotations

import math

import numpy as np

from intsim.fixedpoint import INTEGER_ROUNDING_MODES
from intsim.codes import dtype_range
from intsim.graph.ops.base import (
    Op,
    axes_attr,
    broadcast_operands,
    broadcast_shape,
    check_arity,
    check_average_window,
    check_dtypes,
    check_range,
    clamp_bounds,
    fail,
    int_attr,
    ints_attr,
    node_rounding,
    param,
    register,
    rescale_params,
    same_quantization,
    spatial_infer,
)
from intsim.kernels.contract import Requant


@register("rescale")
class RescaleOp(Op):
    """Requantize to new scale / zero point: ``y = zo + rescale(x - zx)``, clamped."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph, ("int8", "uint8", "int16", "uint16", "int32"))
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph)
        lo, hi = clamp_bounds(node, out)
        return {
            "x_zero_point": x.zero_point,
            "requant": Requant(*rq.kernel_args(1), rq.code, graph.profile.multiplier_bits, out.zero_point, lo, hi,
                               out.np_dtype),
        }

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        flat = np.ascontiguousarray(x).reshape(-1, 1)
        out, sat = kernels.requantize(flat, plan["x_zero_point"], *plan["requant"])
        return [out.reshape(x.shape)], {"saturation_count": sat}


@register("add")
class Add(Op):
    """``y = a + b`` (or ``a - b`` with attribute ``subtract``), both inputs rescaled first.

    Integer modes follow the TFLite scheme: each input, minus its zero point and
    shifted left by ``left_shift``, is rescaled to a common scale; the sum is
    rescaled to the output.  Float modes rescale in floating point.
    """

    def check(self, node, graph):
        check_arity(node, 2)
        check_dtypes(node, graph)
        int_attr(node, "left_shift", 0, lo=0, hi=30)
        if not isinstance(node.attrs.get("subtract", False), bool):
            fail(node, f"attribute subtract must be a boolean, found {node.attrs['subtract']!r}")
        for prefix in ("a_", "b_", "out_"):
            rescale_params(node, graph, prefix)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [broadcast_shape(node, [t.shape for t in inputs])]

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
        a, b = broadcast_operands(inputs)
        args = plan["args"]
        out, sat = kernels.add(a, *args[:4], b, *args[4:], subtract=plan["subtract"])
        return [out], {"saturation_count": sat}

    def bind(self, plan, kernels):
        step = super().bind(plan, kernels)
        launch = kernels.add_launcher(*plan["args"], subtract=plan["subtract"])
        if hasattr(launch, "calls"):  # the fast backend's launcher: the sum as repeatable calls
            step.calls = lambda inputs, outputs, threads: launch.calls(*inputs, outputs[0])  # serial
        return step


@register("mul")
class Mul(Op):
    """``y = zo + rescale((a - za) * (b - zb))``, clamped; inputs broadcast."""

    def check(self, node, graph):
        check_arity(node, 2)
        check_dtypes(node, graph)
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [broadcast_shape(node, [t.shape for t in inputs])]

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
        a, b = broadcast_operands(inputs)
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
        check_arity(node, None)
        check_dtypes(node, graph)
        shapes = [graph.tensors[t].shape for t in node.inputs]
        rank = len(shapes[0])
        axis = int_attr(node, "axis", lo=-rank, hi=rank - 1) % rank
        for s in shapes:
            if len(s) != rank or any(
                i != axis and a is not None and b is not None and a != b for i, (a, b) in enumerate(zip(s, shapes[0]))
            ):
                fail(node, f"inputs must agree on every dimension but axis {axis}, found {shapes}")
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
        check_arity(node, 1)
        check_dtypes(node, graph)
        same_quantization(node, graph)
        kernel = ints_attr(node, "kernel", 2, lo=1)
        pads = ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
        ints_attr(node, "strides", 2, (1, 1), lo=1)
        ints_attr(node, "dilations", 2, (1, 1), lo=1)
        if pads[0] >= kernel[0] or pads[2] >= kernel[0] or pads[1] >= kernel[1] or pads[3] >= kernel[1]:
            fail(node, f"pads {list(pads)} must be smaller than the kernel {list(kernel)}")

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [spatial_infer(node, x, node.attrs["kernel"], node.attrs.get("strides", (1, 1)),
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
        check_arity(node, 1)
        check_dtypes(node, graph)
        same_quantization(node, graph)
        check_average_window(node)

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [spatial_infer(node, x, node.attrs["kernel"], node.attrs.get("strides", (1, 1)), (1, 1),
                               node.attrs.get("pads", (0, 0, 0, 0)), x.shape[-1])]

    def prepare(self, node, graph):
        return {"args": (graph.tensors[node.inputs[0]].zero_point, tuple(node.attrs["kernel"]),
                         tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("pads", (0, 0, 0, 0))),
                         bool(node.attrs.get("count_include_pad", False)))}

    def run(self, plan, inputs, kernels):
        return [kernels.avg_pool_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])], {}


@register("mean")
class Mean(Op):
    """Mean over ``axes`` (global average pooling is axes [1, 2] of NHWC); 1/N is folded into the multiplier."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        x = graph.tensors[node.inputs[0]]
        axes = axes_attr(node, len(x.shape))
        if any(x.shape[a] is None for a in axes):
            fail(node, f"reduced axes {axes} of input {x.shape} must have known sizes")
        if not isinstance(node.attrs.get("keepdims", False), bool):
            fail(node, f"attribute keepdims must be a boolean, found {node.attrs['keepdims']!r}")
        rescale_params(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [reduced_shape(x.shape, axes_attr(node, len(x.shape)), node.attrs.get("keepdims", False))]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph)
        m, s, c = rq.kernel_args(1)
        lo, hi = clamp_bounds(node, out)
        return {
            "axes": axes_attr(node, len(x.shape)),
            "keepdims": bool(node.attrs.get("keepdims", False)),
            "args": (x.zero_point, int(m[0]), int(s[0]), float(c[0]), rq.code, graph.profile.multiplier_bits,
                     out.zero_point, lo, hi, out.np_dtype),
        }

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out, sat = kernels.mean_reduce(reduction_view(x, plan["axes"]), *plan["args"])
        return [out.reshape(reduced_shape(x.shape, plan["axes"], plan["keepdims"]))], {"saturation_count": sat}

    def bind(self, plan, kernels):
        step = super().bind(plan, kernels)
        launch, axes = kernels.mean_launcher(*plan["args"]), plan["axes"]
        if hasattr(launch, "calls"):  # the fast backend's launcher: the reduction as repeatable calls

            def calls(inputs, outputs, threads):  # serial
                x, out = inputs[0], outputs[0]
                if not (x.flags.c_contiguous and out.flags.c_contiguous and axes == list(range(axes[0], axes[-1] + 1))):
                    return None  # reduction_view would copy: the step runs as it is
                view = reduction_view(x, axes)
                return launch.calls(view, out.reshape(view.shape[0], view.shape[2]))

            step.calls = calls
        return step


def reduction_view(x: np.ndarray, axes: list) -> np.ndarray:
    """``x`` as [outer, reduced, inner] with the (sorted) ``axes`` in the middle: a view when they are
    adjacent, else a transposed copy with inner 1."""
    reduced = math.prod(x.shape[a] for a in axes)  # explicit, not -1: an empty batch reshapes too
    if axes == list(range(axes[0], axes[-1] + 1)):
        outer = math.prod(x.shape[: axes[0]])
        inner = math.prod(x.shape[axes[-1] + 1 :])
        return np.ascontiguousarray(x).reshape(outer, reduced, inner)
    kept = [i for i in range(x.ndim) if i not in axes]
    return np.ascontiguousarray(np.transpose(x, kept + axes)).reshape(math.prod(x.shape[i] for i in kept), reduced, 1)


def reduced_shape(shape, axes, keepdims: bool) -> tuple:
    """``shape`` reduced over ``axes``: each a 1 with ``keepdims``, else dropped."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


# --------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------


@register("lut")
class Lut(Op):
    """Any elementwise function of a <=16-bit input as a table of ``2**bits`` output codes."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        entries = 2 ** (8 * x.np_dtype.itemsize)
        table = param(node, "table", shape=(entries,))
        if table.dtype != out.np_dtype:
            fail(node, f"table dtype must be the output dtype {out.dtype}, found {table.dtype}")

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
        check_arity(node, 1)
        check_dtypes(node, graph)
        self.check_exp_table(node, graph)

    def check_exp_table(self, node, graph):
        """The exp table of input 0's codes, the integer rounding mode, the rescale and the clamp."""
        x = graph.tensors[node.inputs[0]]
        entries = 2 ** (8 * x.np_dtype.itemsize)
        table = param(node, "exp_table", shape=(entries,))
        check_range(node, "exp_table", table.astype(np.int64), 0, 2**30)
        if table[0] < 1:  # each row's sum of exps includes its maximum's entry, exp_table[0]: it divides
            fail(node, f"exp_table[0] (the entry of max - x = 0) must be >= 1, found {table[0]}")
        if node_rounding(node, graph) not in INTEGER_ROUNDING_MODES:
            fail(node, f"integer softmax needs an integer rounding mode, the node rounds {node_rounding(node, graph)!r}")
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
        check_arity(node, 1)
        same_quantization(node, graph)
        x = graph.tensors[node.inputs[0]]
        ints_attr(node, "pads_before", len(x.shape), lo=0)
        ints_attr(node, "pads_after", len(x.shape), lo=0)
        lo, hi = dtype_range(x.dtype)
        int_attr(node, "value", x.zero_point, lo=lo, hi=hi)

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
