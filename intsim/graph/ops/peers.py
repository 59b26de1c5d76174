"""Ops that model one peer runtime's own arithmetic, whatever the profile: LiteRT's gemmlowp softmax
and onnxruntime's float32 QLinearAdd / QLinearMul / QLinearAveragePool / QLinearSoftmax."""

from __future__ import annotations


import numpy as np

from intsim.codes import dtype_range
from intsim.graph.ir import TensorInfo
from intsim.graph.ops.base import (
    Op,
    broadcast_operands,
    broadcast_shape,
    check_arity,
    check_average_window,
    check_dtypes,
    check_range,
    clamp_bounds,
    fail,
    param,
    register,
    spatial_infer,
)


@register("softmax_gemmlowp")
class SoftmaxGemmlowp(Op):
    """LiteRT's reference int8 softmax over the last axis (gemmlowp fixed-point exp, see the kernel).

    Parameters ``input_multiplier`` / ``input_left_shift`` encode ``beta * s_x * 2**26``
    (``PreprocessSoftmaxScaling``) and ``diff_min`` the most negative ``x - max`` that
    still counts (``-CalculateInputRadius``).  The output scale is fixed at
    ``2**-bits`` and its zero point at the dtype minimum, as in LiteRT.
    """

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph, ("int8", "uint8"))
        out = graph.tensors[node.outputs[0]]
        if out.dtype != graph.tensors[node.inputs[0]].dtype:
            fail(node, f"output dtype must be the input dtype {graph.tensors[node.inputs[0]].dtype}, found {out.dtype}")
        if out.zero_point != dtype_range(out.dtype)[0]:
            fail(node, f"output zero point must be {dtype_range(out.dtype)[0]}, found {out.zero_point}")
        mult = param(node, "input_multiplier", shape=(1,))
        check_range(node, "input_multiplier", mult.astype(np.int64), 0, 2**31 - 1)
        shift = param(node, "input_left_shift", shape=(1,))
        check_range(node, "input_left_shift", shift.astype(np.int64), 0, 31)
        diff_min = param(node, "diff_min", shape=(1,))
        check_range(node, "diff_min", diff_min.astype(np.int64), -(2**31), 0)

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        p = node.params
        return {"args": (int(p["input_multiplier"][0]), int(p["input_left_shift"][0]), int(p["diff_min"][0]),
                         graph.tensors[node.outputs[0]].np_dtype)}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out, sat = kernels.softmax_gemmlowp_lastaxis(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), *plan["args"])
        return [out.reshape(x.shape)], {"saturation_count": sat}


def float32_scalar_param(node, key, positive=False) -> np.float32:
    """A float32 parameter of shape (1,): finite, and above 0 where ``positive``."""
    value = param(node, key, kinds="f", shape=(1,))
    if value.dtype != np.float32:
        fail(node, f"parameter {key} must be float32, found {value.dtype}")
    if not np.isfinite(value[0]) or (positive and not value[0] > 0):
        fail(node, f"parameter {key} must be finite{' and > 0' if positive else ''}, found {value[0]}")
    return value[0]


@register("softmax_qlinear")
class SoftmaxQLinear(Op):
    """onnxruntime's QLinearSoftmax over attribute ``axis``: a float32 ``exp`` table of the code distance to
    the row's maximum, a float32 sum, ``rint(entry * y_multiplier / sum) + z_y`` saturated (8-bit codes).

    Parameters ``table`` (float32, 256 entries: ``table[d + 255]`` for ``d = x - max`` in ``[-255, 0]``) and
    ``y_multiplier`` (float32 of shape (1,), ``floor(1 / s_y)``) are formed by the importer as onnxruntime
    forms them (:func:`intsim.importers.onnxruntime_tables.qlinear_softmax_table`); see
    :func:`intsim.kernels.softmax_qlinear`.
    """

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph, ("int8", "uint8"))
        x = graph.tensors[node.inputs[0]]
        axis = node.attrs.get("axis", -1)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -len(x.shape) <= axis < len(x.shape):
            fail(node, f"attribute axis must be an integer in [{-len(x.shape)}, {len(x.shape) - 1}], found {axis!r}")
        table = param(node, "table", kinds="f", shape=(256,))
        if table.dtype != np.float32 or not (np.isfinite(table).all() and (table >= 0).all() and table[255] > 0):
            fail(node, "parameter table must be 256 finite float32 values >= 0, the last > 0")
        y_multiplier = float32_scalar_param(node, "y_multiplier", positive=True)
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float32(table.max() * y_multiplier)):
                fail(node, f"the largest table entry {table.max()} times y_multiplier {y_multiplier} overflows float32 "
                           f"(onnxruntime then converts infinity to an integer: undefined, not modelled)")
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        out = graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        return {"axis": int(node.attrs.get("axis", -1)),
                "args": (node.params["table"], np.float32(node.params["y_multiplier"][0]), out.zero_point, lo, hi,
                         out.np_dtype)}

    def run(self, plan, inputs, kernels):
        x = np.moveaxis(inputs[0], plan["axis"], -1)
        out, sat = kernels.softmax_qlinear(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), *plan["args"])
        return [np.moveaxis(out.reshape(x.shape), -1, plan["axis"])], {"saturation_count": sat}


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
        check_arity(node, 2)
        check_dtypes(node, graph)
        for key in self.PARAMS:
            float32_scalar_param(node, key)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        out = graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        ratios = tuple(np.float32(node.params[key][0]) for key in self.PARAMS)
        return {"args": (*ratios, lo, hi, out.np_dtype)}

    def run(self, plan, inputs, kernels):
        a, b = broadcast_operands(inputs)
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
        check_arity(node, 2)
        check_dtypes(node, graph, ("int8", "uint8"))
        ratio = float32_scalar_param(node, "ratio")
        a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
        reach = float(abs(ratio)) * _max_centred(a) * _max_centred(b) + abs(out.zero_point)
        if reach >= 2.0**31:
            fail(node, f"ratio {ratio} can take |product * ratio + zero point| to {reach:.3g} >= 2**31, where "
                        f"cvtps2dq returns INT32_MIN (not modelled)")
        clamp_bounds(node, out)
        broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
        lo, hi = clamp_bounds(node, out)
        return {"args": (a.zero_point, b.zero_point, np.float32(node.params["ratio"][0]), out.zero_point, lo, hi,
                         out.np_dtype)}

    def run(self, plan, inputs, kernels):
        a, b = broadcast_operands(inputs)
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

    CODE_TYPES = ("int8", "uint8")

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph, self.CODE_TYPES)
        for key in ("x_scale", "y_scale"):
            float32_scalar_param(node, key, positive=True)
        check_average_window(node)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [spatial_infer(node, x, node.attrs["kernel"], node.attrs.get("strides", (1, 1)), (1, 1),
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
