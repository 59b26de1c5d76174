"""Integer ops of sequence models: ``embedding`` (a table of codes indexed by an int32 input),
``gather`` (constant indices into an activation), ``gather_indexed`` (int32 indices computed at run time),
``gather_elements`` (ONNX GatherElements), ``layernorm`` (integer-only layer normalization over
the last axis, :mod:`intsim.kernels.sequence`) and ``masked_softmax`` (the integer softmax over the
positions an integer mask keeps)."""

from __future__ import annotations

import numpy as np

from intsim.codes import dtype_range
from intsim.errors import ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES
from intsim.graph.ops.elementwise import Softmax
from intsim.graph.ops.base import (
    Op,
    check_arity,
    check_dtypes,
    check_range,
    clamp_bounds,
    fail,
    int_attr,
    node_rounding,
    param,
    register,
    rescale_params,
    same_quantization,
)

INDEX_DTYPES = ("int32",)


def _check_indices(name: str, indices: np.ndarray, size: int) -> None:
    """Indices must lie in ``[-size, size)`` (checked at the edge: the kernels trust them)."""
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ValidationError(f"{name}: indices must lie in [{-size}, {size}), found [{indices.min()}, "
                              f"{indices.max()}]")


@register("embedding")
class Embedding(Op):
    """``y = table[indices]``: rows of a ``[V, D]`` table of codes (quantized like the output) by an
    int32 index tensor; ``y`` has shape ``indices.shape + (D,)``."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph, INDEX_DTYPES)
        out = graph.tensors[node.outputs[0]]
        table = param(node, "table", ndim=2)
        if table.dtype != out.np_dtype:
            fail(node, f"table dtype must be the output dtype {out.dtype}, found {table.dtype}")

    def infer(self, node, inputs, graph):
        return [inputs[0].shape + (node.params["table"].shape[1],)]

    def prepare(self, node, graph):
        return {"table": np.ascontiguousarray(node.params["table"]), "where": f"embedding {node.name!r}"}

    def run(self, plan, inputs, kernels):
        table = plan["table"]
        _check_indices(plan["where"], inputs[0], table.shape[0])
        return [kernels.embedding_lookup(table, inputs[0])], {}


def _one_input_axis(node, graph):
    """The checks a gather with constant indices starts with: one input, of codes, quantized like the output,
    and an ``axis`` attribute within its rank.  Returns the input's tensor and the axis."""
    check_arity(node, 1)
    check_dtypes(node, graph)
    same_quantization(node, graph)
    x = graph.tensors[node.inputs[0]]
    return x, int_attr(node, "axis", lo=0, hi=len(x.shape) - 1)


@register("gather")
class Gather(Op):
    """``y = take(x, indices, axis)`` with constant int64 ``indices``; quantized like the input."""

    def check(self, node, graph):
        x, axis = _one_input_axis(node, graph)
        indices = param(node, "indices")
        if x.shape[axis] is not None:
            size = x.shape[axis]
            check_range(node, "indices", indices.astype(np.int64), -size, size - 1)

    def infer(self, node, inputs, graph):
        x, axis = inputs[0], node.attrs["axis"]
        return [x.shape[:axis] + node.params["indices"].shape + x.shape[axis + 1:]]

    def prepare(self, node, graph):
        return {"args": (node.params["indices"].astype(np.int64), int(node.attrs["axis"]))}

    def run(self, plan, inputs, kernels):
        return [kernels.gather_axis(inputs[0], *plan["args"])], {}


@register("gather_indexed")
class GatherIndexed(Op):
    """``y = take(x, indices, axis)`` with the indices a second, int32 input (token positions, an arg max);
    quantized like input 0.  Indices are checked when the node runs (the kernel trusts them)."""

    def check(self, node, graph):
        check_arity(node, 2)
        x, indices = (graph.tensors[t] for t in node.inputs)
        if x.dtype not in ("int8", "uint8", "int16", "uint16") or indices.dtype not in INDEX_DTYPES:
            fail(node, f"inputs must be 8/16-bit codes and int32 indices, found {x.dtype} and {indices.dtype}")
        same_quantization(node, graph)
        axis = int_attr(node, "axis", lo=0, hi=len(x.shape) - 1)
        if x.shape[axis] is None:
            fail(node, f"the gathered axis {axis} of input {x.shape} must have a known size")

    def infer(self, node, inputs, graph):
        x, indices = inputs
        axis = node.attrs["axis"]
        return [x.shape[:axis] + indices.shape + x.shape[axis + 1:]]

    def prepare(self, node, graph):
        return {"axis": int(node.attrs["axis"]), "where": f"gather_indexed {node.name!r}"}

    def run(self, plan, inputs, kernels):
        x, indices = inputs
        _check_indices(plan["where"], indices, x.shape[plan["axis"]])
        return [kernels.gather_axis(x, indices.astype(np.int64), plan["axis"])], {}


@register("gather_elements")
class GatherElements(Op):
    """ONNX GatherElements with constant int64 ``indices`` (the output's shape) along ``axis``; quantized
    like the input (:func:`intsim.kernels.gather_elements`)."""

    def check(self, node, graph):
        x, axis = _one_input_axis(node, graph)
        indices = param(node, "indices", ndim=len(x.shape))
        for a, (size, n) in enumerate(zip(x.shape, indices.shape)):
            if a != axis and size is not None and n > size:
                fail(node, f"indices {indices.shape} exceed input {x.shape} on axis {a}")
        if x.shape[axis] is None:
            fail(node, f"the gathered axis {axis} of input {x.shape} must have a known size")
        check_range(node, "indices", indices.astype(np.int64), -x.shape[axis], x.shape[axis] - 1)

    def infer(self, node, inputs, graph):
        return [node.params["indices"].shape]

    def prepare(self, node, graph):
        return {"args": (node.params["indices"].astype(np.int64), int(node.attrs["axis"])),
                "where": f"gather_elements {node.name!r}"}

    def run(self, plan, inputs, kernels):
        indices, axis = plan["args"]
        x = inputs[0]
        if any(n > size for a, (size, n) in enumerate(zip(x.shape, indices.shape)) if a != axis):
            raise ValidationError(f"{plan['where']}: indices {indices.shape} exceed the input {x.shape}")
        return [kernels.gather_elements(x, indices, axis)], {}


@register("layernorm")
class LayerNorm(Op):
    """Integer layer normalization over the last axis (:func:`intsim.kernels.layer_norm_lastaxis`):
    per-channel ``gamma_sign``, ``bias``, ``multiplier`` / ``shift``; ``variance_shift`` and ``eps_term``
    as attributes."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        x = graph.tensors[node.inputs[0]]
        width = x.shape[-1]
        if width is None:
            fail(node, f"the normalized (last) axis of input {x.shape} must have a known size")
        if node_rounding(node, graph) not in INTEGER_ROUNDING_MODES:
            fail(node, f"integer layer normalization needs an integer rounding mode, the node rounds "
                       f"{node_rounding(node, graph)!r}")
        int_attr(node, "variance_shift", lo=0, hi=31)
        int_attr(node, "eps_term", lo=0, hi=2**62)
        check_range(node, "gamma_sign", param(node, "gamma_sign", shape=(width,)).astype(np.int64), -1, 1)
        bias = param(node, "bias", shape=(width,))
        check_range(node, "bias", bias.astype(np.int64), -(2**31), 2**31 - 1)
        rescale_params(node, graph, channels=width)
        bits = 8 * x.np_dtype.itemsize
        lo, hi = dtype_range(x.dtype)
        worst = 2 * width * (hi - lo)  # |D (x - z) - sum (x - z)|
        reduced = worst >> node.attrs["variance_shift"]
        if width * reduced * reduced >= 2**62:
            fail(node, f"variance_shift {node.attrs['variance_shift']} leaves the variance of {width} {bits}-bit "
                       "codes above 2**62")
        clamp_bounds(node, graph.tensors[node.outputs[0]])

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        width = x.shape[-1]
        rq = rescale_params(node, graph, channels=width)
        multiplier, shift, _ = rq.kernel_args(width)
        lo, hi = clamp_bounds(node, out)
        return {"args": (x.zero_point, int(node.attrs["variance_shift"]), int(node.attrs["eps_term"]),
                         node.params["gamma_sign"].astype(np.int8), node.params["bias"].astype(np.int32),
                         multiplier, shift, rq.code, graph.profile.multiplier_bits, out.zero_point, lo, hi,
                         out.np_dtype)}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out, sat = kernels.layer_norm_lastaxis(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), *plan["args"])
        return [out.reshape(x.shape)], {"saturation_count": sat}


@register("masked_softmax")
class MaskedSoftmax(Softmax):
    """The integer softmax over the last axis of input 0 where the int32 mask (input 1, broadcast after
    inserting ``mask_axes``) is non-zero; masked positions get probability 0."""

    def check(self, node, graph):
        check_arity(node, 2)
        x, mask = (graph.tensors[t] for t in node.inputs)
        if x.dtype not in ("int8", "uint8", "int16", "uint16") or mask.dtype not in INDEX_DTYPES:
            fail(node, f"inputs must be 8/16-bit codes and an int32 mask, found {x.dtype} and {mask.dtype}")
        axes = node.attrs.get("mask_axes")
        if not isinstance(axes, list) or not all(isinstance(a, int) for a in axes):
            fail(node, f"attribute mask_axes must be a list of integers, found {axes!r}")
        if len(mask.shape) + len(axes) != len(x.shape):
            fail(node, f"mask {mask.shape} with axes {axes} inserted does not have the rank of input {x.shape}")
        self.check_exp_table(node, graph)

    def prepare(self, node, graph):
        return {**super().prepare(node, graph), "axes": tuple(node.attrs["mask_axes"])}

    def run(self, plan, inputs, kernels):
        x, mask = inputs
        keep = np.broadcast_to(np.expand_dims(mask != 0, plan["axes"]), x.shape)
        rows = (-1, x.shape[-1])
        out, sat = kernels.softmax_masked_lastaxis(np.ascontiguousarray(x).reshape(rows), keep.reshape(rows),
                                                   *plan["args"])
        return [out.reshape(x.shape)], {"saturation_count": sat}
