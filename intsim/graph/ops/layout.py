"""Ops that move codes without changing them: reshape, transpose, flatten, squeeze, unsqueeze,
constant and nearest-neighbour resize."""

from __future__ import annotations

import math

import numpy as np

from intsim.graph.ops.base import (
    Op,
    axes_attr,
    check_arity,
    check_range,
    fail,
    int_attr,
    nhwc_input,
    param,
    register,
    same_quantization,
)


class _LayoutOp(Op):
    def check(self, node, graph):
        check_arity(node, 1)
        same_quantization(node, graph)
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
        if not isinstance(target, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in target):
            fail(node, f"attribute shape must be a list of integers >= -1, found {target!r}")
        if list(target).count(-1) > 1:
            fail(node, f"attribute shape {list(target)} has more than one -1")
        if any(d == 0 and i >= len(shape) for i, d in enumerate(target)):
            fail(node, f"attribute shape {list(target)} copies a dimension the input {shape} does not have")

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
            fail(node, f"cannot reshape {shape} into {list(target)}")
        dims[dims.index(-1)] = size_in // size_out
    elif size_in != size_out:
        fail(node, f"cannot reshape {shape} into {list(target)}")
    return tuple(dims)


@register("transpose")
class Transpose(_LayoutOp):
    """Permute axes by ``perm``."""

    def check_attrs(self, node, shape):
        perm = node.attrs.get("perm")
        if (not isinstance(perm, (list, tuple)) or not all(isinstance(p, int) and not isinstance(p, bool) for p in perm)
                or sorted(perm) != list(range(len(shape)))):
            fail(node, f"attribute perm must be a permutation of range({len(shape)}), found {perm!r}")

    def infer(self, node, inputs, graph):
        return [tuple(inputs[0].shape[p] for p in node.attrs["perm"])]

    def run(self, plan, inputs, kernels):
        return [kernels.transpose(inputs[0], plan["attrs"]["perm"])], {}

    def bind(self, plan, kernels):
        step = super().bind(plan, kernels)
        launch = kernels.transpose_launcher(plan["attrs"]["perm"])
        if hasattr(launch, "calls"):  # the fast backend's launcher: one pass into the bound run's array
            step.calls = lambda inputs, outputs, threads: launch.calls(inputs[0], outputs[0])  # serial
        return step


@register("flatten")
class Flatten(_LayoutOp):
    """``[d0..d(axis-1)] x [d(axis)..]`` to 2-D, as ONNX Flatten."""

    def check_attrs(self, node, shape):
        int_attr(node, "axis", 1, lo=0, hi=len(shape))

    def infer(self, node, inputs, graph):
        shape, axis = inputs[0].shape, node.attrs.get("axis", 1)
        head, tail = shape[:axis], shape[axis:]
        return [(None if None in head else math.prod(head), None if None in tail else math.prod(tail))]

    def run(self, plan, inputs, kernels):
        x, axis = inputs[0], plan["attrs"].get("axis", 1)
        return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))], {}


@register("squeeze")
class Squeeze(_LayoutOp):
    """Drop the size-1 ``axes``."""

    def check_attrs(self, node, shape):
        for a in axes_attr(node, len(shape)):
            if shape[a] != 1:
                fail(node, f"axis {a} of input {shape} has size {shape[a]}, not 1")

    def infer(self, node, inputs, graph):
        shape = inputs[0].shape
        axes = axes_attr(node, len(shape))
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        return [np.squeeze(x, axis=tuple(a % x.ndim for a in plan["attrs"]["axes"]))], {}


@register("unsqueeze")
class Unsqueeze(_LayoutOp):
    """Insert size-1 ``axes`` (positions in the output)."""

    def check_attrs(self, node, shape):
        axes = node.attrs.get("axes")
        axes_attr(node, len(shape) + (len(axes) if isinstance(axes, (list, tuple)) else 0))

    def infer(self, node, inputs, graph):
        shape = list(inputs[0].shape)
        for a in axes_attr(node, len(shape) + len(node.attrs["axes"])):
            shape.insert(a, 1)
        return [tuple(shape)]

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        rank = x.ndim + len(plan["attrs"]["axes"])
        return [np.expand_dims(x, tuple(a % rank for a in plan["attrs"]["axes"]))], {}


@register("constant")
class Constant(Op):
    """A constant tensor of codes (an operand of add / mul that the model fixes)."""

    def check(self, node, graph):
        check_arity(node, 0)
        out = graph.tensors[node.outputs[0]]
        value = param(node, "value")
        if value.dtype != out.np_dtype:
            fail(node, f"value dtype must be the output dtype {out.dtype}, found {value.dtype}")

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
        check_arity(node, 1)
        same_quantization(node, graph)
        x = nhwc_input(node, graph)
        for key, axis in (("index_h", 1), ("index_w", 2)):
            index = param(node, key, ndim=1)
            if x.shape[axis] is not None:
                check_range(node, key, index, 0, x.shape[axis] - 1)

    def infer(self, node, inputs, graph):
        n, _, _, c = inputs[0].shape
        return [(n, node.params["index_h"].size, node.params["index_w"].size, c)]

    def prepare(self, node, graph):
        return {"index_h": node.params["index_h"].astype(np.intp), "index_w": node.params["index_w"].astype(np.intp)}

    def run(self, plan, inputs, kernels):
        return [np.ascontiguousarray(inputs[0][:, plan["index_h"]][:, :, plan["index_w"]])], {}
