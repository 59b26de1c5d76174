"""Float-island ops: what onnxruntime computes for a ``DQ -> float op -> Q`` group it does not fuse.

They model the one runtime that leaves such groups in float32 (onnxruntime's
CPU provider, see ``docs/qdq.md``): codes in, codes out, the float32 scales of
the file's Q/DQ nodes as parameters.  Like ``add_float32_fma`` and
``avg_pool_float32`` they are profile-independent float ops; kernels in
:mod:`intsim.kernels.float_island`.
"""

from __future__ import annotations

import numpy as np

from intsim.graph.ops.base import (
    Op,
    broadcast_operands,
    broadcast_shape,
    check_arity,
    check_dtypes,
    clamp_bounds,
    fail,
    int_attr,
    ints_attr,
    nhwc_input,
    param,
    register,
    spatial_infer,
)
from intsim.graph.ops.peers import AvgPoolFloat32, float32_scalar_param


def _float32_array(node, key, shape=None, ndim=None):
    value = param(node, key, kinds="f", shape=shape, ndim=ndim)
    if value.dtype != np.float32 or not np.all(np.isfinite(value)):
        fail(node, f"parameter {key} must be finite float32, found {value.dtype}")
    return value


@register("add_float32")
class AddFloat32(Op):
    """A float ``Add`` island: ``Q(DQ(a) + DQ(b))`` in float32, exact.

    Parameters ``a_scale``, ``b_scale``, ``y_scale``: float32 arrays of shape
    (1,); zero points are the tensors'.  Inputs broadcast.  See
    :func:`intsim.kernels.add_float32`.
    """

    SCALES = ("a_scale", "b_scale", "y_scale")

    def check(self, node, graph):
        check_arity(node, 2)
        check_dtypes(node, graph)
        for key in self.SCALES:
            float32_scalar_param(node, key, positive=True)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        broadcast_shape(node, [graph.tensors[t].shape for t in node.inputs])

    def infer(self, node, inputs, graph):
        return [broadcast_shape(node, [t.shape for t in inputs])]

    def prepare(self, node, graph):
        a, b = (graph.tensors[t] for t in node.inputs)
        out = graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        a_scale, b_scale, y_scale = (np.float32(node.params[key][0]) for key in self.SCALES)
        return {"args": (a.zero_point, a_scale, b.zero_point, b_scale, y_scale, out.zero_point, lo, hi,
                         out.np_dtype)}

    def run(self, plan, inputs, kernels):
        a, b = broadcast_operands(inputs)
        za, sa, zb, sb, *rest = plan["args"]
        out, sat = kernels.add_float32(a, za, sa, b, zb, sb, *rest)
        return [out], {"saturation_count": sat}


@register("conv2d_float32")
class Conv2DFloat32(Op):
    """A float ``Conv`` island: NHWC codes in and out, dequantized float32 OHWI ``weight``, float32 ``bias``.

    Parameters ``weight`` (float32 [O, KH, KW, C / groups]), ``bias`` (float32
    [O]), ``x_scale`` and ``y_scale`` (float32, shape (1,)); attributes as for
    ``conv2d``.  The float32 summation order is the profile's
    ``float_island_order`` (MLAS's under ``onnxruntime``; see
    :func:`intsim.kernels.conv2d_float32_nhwc`).
    """

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        w = _float32_array(node, "weight", ndim=4)
        _float32_array(node, "bias", (w.shape[0],))
        for key in ("x_scale", "y_scale"):
            float32_scalar_param(node, key, positive=True)
        groups = int_attr(node, "groups", 1, lo=1)
        ints_attr(node, "strides", 2, (1, 1), lo=1)
        ints_attr(node, "dilations", 2, (1, 1), lo=1)
        ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
        x = graph.tensors[node.inputs[0]]
        if len(x.shape) == 4 and x.shape[3] is not None and x.shape[3] != w.shape[3] * groups:
            fail(node, f"input channels {x.shape[3]} != weight channels {w.shape[3]} x groups {groups}")
        if w.shape[0] % groups:
            fail(node, f"output channels {w.shape[0]} are not divisible by groups {groups}")
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        w = node.params["weight"]
        return [spatial_infer(node, inputs[0], w.shape[1:3], node.attrs.get("strides", (1, 1)),
                               node.attrs.get("dilations", (1, 1)), node.attrs.get("pads", (0, 0, 0, 0)),
                               w.shape[0])]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        return {"args": (x.zero_point, np.float32(node.params["x_scale"][0]),
                         np.ascontiguousarray(node.params["weight"]), np.ascontiguousarray(node.params["bias"]),
                         tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("dilations", (1, 1))),
                         tuple(node.attrs.get("pads", (0, 0, 0, 0))), int(node.attrs.get("groups", 1)),
                         np.float32(node.params["y_scale"][0]), out.zero_point, lo, hi, out.np_dtype,
                         graph.profile.float_island_order)}

    def run(self, plan, inputs, kernels):
        out, sat = kernels.conv2d_float32_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])
        return [out], {"saturation_count": sat}


@register("gemm_float32")
class GemmFloat32(Op):
    """A float ``Gemm`` / ``MatMul`` island: codes ``[..., K]`` in, codes ``[..., N]`` out.

    Parameters ``weight`` (dequantized float32 [K, N]), ``bias`` (float32 [N]:
    the Gemm's ``beta C``, zeros for a MatMul), ``a_scale`` and ``y_scale``
    (float32, shape (1,)).  The float32 summation order is the profile's
    ``float_island_order`` (MLAS's ``Gemm`` with ``transB = 1`` under
    ``onnxruntime``; see :func:`intsim.kernels.gemm_float32`).
    """

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        w = _float32_array(node, "weight", ndim=2)
        _float32_array(node, "bias", (w.shape[1],))
        for key in ("a_scale", "y_scale"):
            float32_scalar_param(node, key, positive=True)
        a = graph.tensors[node.inputs[0]]
        if not a.shape or (a.shape[-1] is not None and a.shape[-1] != w.shape[0]):
            fail(node, f"input {a.name!r} of shape {a.shape} must end in the weight's depth {w.shape[0]}")
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        return [(*inputs[0].shape[:-1], node.params["weight"].shape[1])]

    def prepare(self, node, graph):
        a, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        return {"args": (a.zero_point, np.float32(node.params["a_scale"][0]),
                         np.ascontiguousarray(node.params["weight"]), np.ascontiguousarray(node.params["bias"]),
                         np.float32(node.params["y_scale"][0]), out.zero_point, lo, hi, out.np_dtype,
                         graph.profile.float_island_order, True)}

    def run(self, plan, inputs, kernels):
        a = inputs[0]
        out, sat = kernels.gemm_float32(np.ascontiguousarray(a.reshape(-1, a.shape[-1])), *plan["args"])
        return [out.reshape(*a.shape[:-1], out.shape[-1])], {"saturation_count": sat}


@register("matmul_float32")
class MatMulFloat32(Op):
    """A float ``MatMul`` island of two activations: ``Q(DQ(a) @ DQ(b))``, ``a [..., M, K]``, ``b [..., K, N]``
    (or ``[K, N]``), batches broadcast as ``matmul``'s.

    Parameters ``a_scale``, ``b_scale``, ``y_scale`` (float32, shape (1,)).  Each batch's ``DQ(b)`` is
    formed in float32 (:func:`intsim.kernels.dequantize_codes`) and multiplied as
    :func:`intsim.kernels.gemm_float32` does, ``B`` not transposed (onnxruntime's ``MatMul``), in the
    profile's ``float_island_order``.
    """

    def check(self, node, graph):
        check_arity(node, 2)
        check_dtypes(node, graph)
        for key in ("a_scale", "b_scale", "y_scale"):
            float32_scalar_param(node, key, positive=True)
        a, b = (graph.tensors[t] for t in node.inputs)
        if len(a.shape) < 2 or len(b.shape) < 2 or (len(b.shape) != 2 and len(b.shape) != len(a.shape)):
            fail(node, f"inputs must be [..., M, K] and [K, N] or [..., K, N], found {a.shape} and {b.shape}")
        if a.shape[-1] is not None and b.shape[-2] is not None and a.shape[-1] != b.shape[-2]:
            fail(node, f"inner dimensions differ: a {a.shape} vs b {b.shape}")
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        a, b = inputs
        return [a.shape[:-1] + (b.shape[-1],)]

    def prepare(self, node, graph):
        a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
        lo, hi = clamp_bounds(node, out)
        scales = [np.float32(node.params[key][0]) for key in ("a_scale", "b_scale", "y_scale")]
        return {"a": (a.zero_point, scales[0]), "b": (scales[1], b.zero_point),
                "out": (scales[2], out.zero_point, lo, hi, out.np_dtype, graph.profile.float_island_order, False)}

    def run(self, plan, inputs, kernels):
        a, b = inputs
        lead = a.shape[:-2]
        a3 = np.ascontiguousarray(a).reshape((-1,) + a.shape[-2:])
        b3 = np.broadcast_to(b, lead + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
        zeros = np.zeros(b.shape[-1], np.float32)
        outs, saturated = [], 0
        for a2, b2 in zip(a3, b3):
            weight = kernels.dequantize_codes(np.ascontiguousarray(b2), *plan["b"])
            out, sat = kernels.gemm_float32(a2, *plan["a"], weight, zeros, *plan["out"])
            outs.append(out)
            saturated += sat
        out = np.stack(outs) if outs else np.empty((0,) + a.shape[-2:-1] + b.shape[-1:], plan["out"][4])
        return [out.reshape(lead + out.shape[-2:])], {"saturation_count": saturated}


@register("global_avg_pool_float32")
class GlobalAvgPoolFloat32(Op):
    """A float ``GlobalAveragePool`` island: NHWC codes ``[N, H, W, C]`` in, ``[N, 1, 1, C]`` out, exact.

    Parameters ``x_scale`` and ``y_scale`` (float32, shape (1,)); see
    :func:`intsim.kernels.global_avg_pool_float32_nhwc`.
    """

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        for key in ("x_scale", "y_scale"):
            float32_scalar_param(node, key, positive=True)
        nhwc_input(node, graph)
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        n, _, _, c = inputs[0].shape
        return [(n, 1, 1, c)]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out)
        return {"args": (x.zero_point, np.float32(node.params["x_scale"][0]), np.float32(node.params["y_scale"][0]),
                         out.zero_point, lo, hi, out.np_dtype)}

    def run(self, plan, inputs, kernels):
        out, sat = kernels.global_avg_pool_float32_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])
        return [out], {"saturation_count": sat}


@register("avg_pool_float32_island")
class AvgPoolFloat32Island(AvgPoolFloat32):
    """A float ``AveragePool`` island (exact): attributes and parameters of ``avg_pool_float32``, codes of
    any width; see :func:`intsim.kernels.avg_pool_float32_island_nhwc`."""

    CODE_TYPES = ("int8", "uint8", "int16", "uint16")

    def run(self, plan, inputs, kernels):
        out, sat = kernels.avg_pool_float32_island_nhwc(np.ascontiguousarray(inputs[0]), *plan["args"])
        return [out], {"saturation_count": sat}
