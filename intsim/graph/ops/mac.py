"""Multiply-accumulate ops: conv2d, fully_connected, matmul (white paper §2.3's datapath)."""

from __future__ import annotations


import numpy as np

from intsim.codes import OVERFLOW_CODES, dtype_range, storage_dtype
from intsim.kernels.contract import Accumulator, Backend, Requant
from intsim.graph.ops.base import (
    Op,
    acc_stats,
    check_arity,
    check_dtypes,
    check_range,
    clamp_bounds,
    fail,
    int_attr,
    ints_attr,
    node_pairwise_int16,
    param,
    register,
    rescale_params,
    spatial_infer,
)


class _MacOp(Op):
    """A multiply-accumulate op: ``accumulate`` (raw accumulators, for traces), ``prepare_kernel`` and
    ``launcher`` (the fused path) name its kernels in a :class:`~intsim.kernels.contract.Backend`."""

    def _requant_plan(self, node, graph, channels, operand_dtypes):
        out = graph.tensors[node.outputs[0]]
        rq = rescale_params(node, graph, channels=channels)
        mult, shift, scale = rq.kernel_args(channels)
        lo, hi = clamp_bounds(node, out)
        profile = graph.profile
        return {
            "node": node.name,
            "x_dtype": graph.tensors[node.inputs[0]].np_dtype,
            "requant": Requant(mult, shift, scale, rq.code, profile.multiplier_bits, out.zero_point, lo, hi,
                               out.np_dtype),
            "acc": Accumulator(profile.accumulator_bits, OVERFLOW_CODES[profile.overflow],
                               node_pairwise_int16(node, graph, *operand_dtypes)),
        }

    def _finish(self, plan, acc, overflow_count, pair_saturations, kernels, per_tensor=False):
        if per_tensor:
            out, saturations = kernels.requantize(acc.reshape(-1, 1), 0, *plan["requant"])
            out = out.reshape(acc.shape)
        else:
            out, saturations = kernels.requantize(acc, 0, *plan["requant"])
        stats = acc_stats(acc, plan["acc"].acc_bits, overflow_count, pair_saturations)
        stats["saturation_count"] = saturations
        stats["accumulator"] = acc
        return [out], stats

    def run(self, plan, inputs, kernels):
        acc, ovf, pairs = self.accumulate(kernels)(inputs[0], *plan["mac"], *plan["acc"])
        return self._finish(plan, acc, ovf, pairs, kernels)

    def run_untraced(self, plan, inputs, kernels):
        return self.bind(plan, kernels)(inputs)

    def bind(self, plan, kernels):
        # The weights are packed for a kernel backend when it is first bound, then kept in the plan.
        # A bound step reports no clamp count (a run keeps only overflows; a trace counts clamps),
        # which lets the fast kernels requantize in registers.
        packed = plan.setdefault("packed", {})
        if kernels.__name__ not in packed:
            packed[kernels.__name__] = self.prepare_kernel(kernels)(plan["x_dtype"], *plan["mac"], *plan["acc"])
        launch = self.launcher(kernels)(packed[kernels.__name__], *plan["requant"], count_clamps=False)
        finish = self._untraced_result

        def step(inputs):
            out, ovf, pairs, saturations = launch(inputs[0])
            return finish(plan, inputs, kernels, out, ovf, pairs, saturations)

        if hasattr(launch, "calls"):  # the fast backend's launchers: the fused path as repeatable calls
            step.calls = lambda inputs, outputs, threads: launch.calls(inputs[0], outputs[0], threads)
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
        # A layer may have its own weight bits (per-layer precision): stored 8 or 16 bits wide, signed
        # like the profile's weights.
        allowed = {storage_dtype(bits, profile.weight_signed) for bits in (8, 16)}
        if weight.dtype not in allowed:
            names = " or ".join(sorted(d.name for d in allowed))
            fail(node, f"weight dtype must be {names} for profile {profile.name!r}, found {weight.dtype}")
        wlo, whi = dtype_range(weight.dtype)
        wzp = param(node, "weight_zero_point", shape=(out_channels,))
        check_range(node, "weight_zero_point", wzp, wlo, whi)
        bias = param(node, "bias", shape=(out_channels,))
        blo, bhi = -(2 ** (profile.bias_bits - 1)), 2 ** (profile.bias_bits - 1) - 1
        check_range(node, "bias", bias.astype(np.int64), blo, bhi)
        rescale_params(node, graph, channels=out_channels)
        clamp_bounds(node, graph.tensors[node.outputs[0]])
        node_pairwise_int16(node, graph, *self._channels_and_dtypes(node, graph)[1])


@register("conv2d")
class Conv2D(_MacOp):
    """2-D convolution, NHWC input, OHWI weight (groups, depthwise, dilation, asymmetric pads)."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        w = param(node, "weight", ndim=4)
        groups = int_attr(node, "groups", 1, lo=1)
        ints_attr(node, "strides", 2, (1, 1), lo=1)
        ints_attr(node, "dilations", 2, (1, 1), lo=1)
        ints_attr(node, "pads", 4, (0, 0, 0, 0), lo=0)
        cout, _, _, cin_g = w.shape
        x = graph.tensors[node.inputs[0]]
        if len(x.shape) == 4 and x.shape[3] is not None and x.shape[3] != cin_g * groups:
            fail(node, f"input channels {x.shape[3]} != weight channels {cin_g} x groups {groups}")
        if cout % groups:
            fail(node, f"output channels {cout} are not divisible by groups {groups}")
        self._check_weights(node, graph, w, cout)

    def infer(self, node, inputs, graph):
        w = node.params["weight"]
        return [
            spatial_infer(
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

    @staticmethod
    def accumulate(kernels: Backend):
        return kernels.conv2d_nhwc_acc

    @staticmethod
    def prepare_kernel(kernels: Backend):
        return kernels.conv2d_nhwc_prepare

    @staticmethod
    def launcher(kernels: Backend):
        return kernels.conv2d_nhwc_launcher


@register("fully_connected")
class FullyConnected(_MacOp):
    """``y[n, o] = sum_k x[n, k] * w[o, k]`` with int32 bias; weight ``[out, in]``."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        w = param(node, "weight", ndim=2)
        x = graph.tensors[node.inputs[0]]
        if len(x.shape) != 2 or (x.shape[1] is not None and x.shape[1] != w.shape[1]):
            fail(node, f"input {x.name!r} must be [batch, {w.shape[1]}], found {x.shape}")
        self._check_weights(node, graph, w, w.shape[0])

    def infer(self, node, inputs, graph):
        return [(inputs[0].shape[0], node.params["weight"].shape[0])]

    def prepare(self, node, graph):
        plan = self._requant_plan(node, graph, *self._channels_and_dtypes(node, graph))
        plan["mac"] = self._weight_args(node, graph)
        return plan

    @staticmethod
    def accumulate(kernels: Backend):
        return kernels.fully_connected_acc

    @staticmethod
    def prepare_kernel(kernels: Backend):
        return kernels.fully_connected_prepare

    @staticmethod
    def launcher(kernels: Backend):
        return kernels.fully_connected_launcher


@register("matmul")
class MatMul(_MacOp):
    """Activations x activations: ``a [..., M, K] @ b [..., K, N]`` with both zero points."""

    def check(self, node, graph):
        check_arity(node, 2)
        check_dtypes(node, graph)
        a, b = (graph.tensors[t] for t in node.inputs)
        if len(a.shape) < 2 or len(b.shape) < 2:
            fail(node, f"inputs must be at least 2-D, found {a.shape} and {b.shape}")
        if a.shape[-1] is not None and b.shape[-2] is not None and a.shape[-1] != b.shape[-2]:
            fail(node, f"inner dimensions differ: a {a.shape} vs b {b.shape}")
        if len(b.shape) != 2 and len(b.shape) != len(a.shape):
            fail(node, f"b must be 2-D or have a's rank {len(a.shape)}, found {b.shape}")
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
