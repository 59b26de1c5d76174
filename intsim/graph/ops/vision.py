"""Integer ops the vision models brought in: ``slice`` (ONNX Slice, and each output of Split),
``insert_zeros`` (the zero insertion of a transposed convolution) and ``reduce_max``.  Each picks codes
without changing them: the output is quantized exactly like the input."""

from __future__ import annotations

from intsim.codes import dtype_range
from intsim.graph.ops.base import (
    Op,
    axes_attr,
    check_arity,
    check_dtypes,
    fail,
    int_attr,
    ints_attr,
    nhwc_input,
    register,
    same_quantization,
)
from intsim.graph.ops.elementwise import reduced_shape, reduction_view
from intsim.kernels.vision import CORE_RANK, sliced_size


def _moved_codes(node, graph):
    """The input of a one-input op that only moves codes, checked: quantized like the output, rank at
    most the kernels' ``CORE_RANK``."""
    check_arity(node, 1)
    same_quantization(node, graph)
    x = graph.tensors[node.inputs[0]]
    if len(x.shape) > CORE_RANK:
        fail(node, f"input of rank {len(x.shape)} is not supported (at most {CORE_RANK})")
    return x


@register("slice")
class Slice(Op):
    """``x[starts[i]:ends[i]:steps[i]]`` on every axis ``i`` (an end of -1 under a negative step: through
    index 0); starts and ends lie inside the axis, as the converter normalises ONNX Slice.  An axis of
    unknown size (the batch) is kept whole, written ``0:-1:1``."""

    def check(self, node, graph):
        shape = _moved_codes(node, graph).shape
        starts = ints_attr(node, "starts", len(shape))
        ends = ints_attr(node, "ends", len(shape))
        steps = ints_attr(node, "steps", len(shape))
        for axis, (size, start, end, step) in enumerate(zip(shape, starts, ends, steps)):
            if step == 0:
                fail(node, f"steps {list(steps)} must be non-zero")
            if size is None:
                if (start, end, step) != (0, -1, 1):
                    fail(node, f"axis {axis} of unknown size must be kept whole (0:-1:1), found {start}:{end}:{step}")
                continue
            low_end = -1 if step < 0 else 0
            if not (0 <= start <= size and low_end <= end <= size) or (step < 0 and start == size):
                fail(node, f"axis {axis} (size {size}): start {start} and end {end} must lie inside the axis")

    def infer(self, node, inputs, graph):
        a = node.attrs
        return [tuple(None if n is None else sliced_size(n, s, e, k)
                      for n, s, e, k in zip(inputs[0].shape, a["starts"], a["ends"], a["steps"]))]

    def prepare(self, node, graph):
        return {"args": tuple(tuple(node.attrs[k]) for k in ("starts", "ends", "steps"))}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        starts, ends, steps = plan["args"]
        # An axis of unknown size is kept whole (0:-1:1): its end is the run's own size.
        ends = tuple(n if k == 1 and e == -1 else e for n, e, k in zip(x.shape, ends, steps))
        return [kernels.slice_strided(x, starts, ends, steps)], {}


@register("insert_zeros")
class InsertZeros(Op):
    """NHWC codes spread out by ``strides`` with the code ``value`` (the zero point) in between."""

    def check(self, node, graph):
        check_arity(node, 1)
        same_quantization(node, graph)
        x = nhwc_input(node, graph)
        ints_attr(node, "strides", 2, lo=1)
        lo, hi = dtype_range(x.dtype)
        int_attr(node, "value", x.zero_point, lo=lo, hi=hi)

    def infer(self, node, inputs, graph):
        n, h, w, c = inputs[0].shape
        sh, sw = node.attrs["strides"]
        return [(n, None if h is None else (h - 1) * sh + 1, None if w is None else (w - 1) * sw + 1, c)]

    def prepare(self, node, graph):
        x = graph.tensors[node.inputs[0]]
        return {"args": (tuple(node.attrs["strides"]), int(node.attrs.get("value", x.zero_point)))}

    def run(self, plan, inputs, kernels):
        return [kernels.insert_zeros_nhwc(inputs[0], *plan["args"])], {}


@register("reduce_max")
class ReduceMax(Op):
    """The largest code over ``axes`` (``keepdims`` as ONNX); quantized like the input."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        same_quantization(node, graph)
        x = graph.tensors[node.inputs[0]]
        axes = axes_attr(node, len(x.shape))
        if any(x.shape[a] is None or x.shape[a] < 1 for a in axes):
            fail(node, f"reduced axes {axes} of input {x.shape} must have known sizes >= 1")
        if not isinstance(node.attrs.get("keepdims", False), bool):
            fail(node, f"attribute keepdims must be a boolean, found {node.attrs['keepdims']!r}")

    def infer(self, node, inputs, graph):
        x = inputs[0]
        return [reduced_shape(x.shape, axes_attr(node, len(x.shape)), node.attrs.get("keepdims", False))]

    def prepare(self, node, graph):
        x = graph.tensors[node.inputs[0]]
        return {"axes": axes_attr(node, len(x.shape)), "keepdims": bool(node.attrs.get("keepdims", False))}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out = kernels.reduce_max(reduction_view(x, plan["axes"]))
        return [out.reshape(reduced_shape(x.shape, plan["axes"], plan["keepdims"]))], {}


@register("pad_reflect_edge")
class PadReflectEdge(Op):
    """Padding by copies of the input's own codes: mirrored (``reflect``) or repeated border (edge)."""

    def check(self, node, graph):
        x = _moved_codes(node, graph)
        before = ints_attr(node, "pads_before", len(x.shape), lo=0)
        after = ints_attr(node, "pads_after", len(x.shape), lo=0)
        reflect = node.attrs.get("reflect")
        if not isinstance(reflect, bool):
            fail(node, f"attribute reflect must be a boolean, found {reflect!r}")
        for axis, (size, b, a) in enumerate(zip(x.shape, before, after)):
            if (b or a) and size is None:
                fail(node, f"axis {axis} of unknown size cannot be padded")
            if reflect and size is not None and max(b, a) >= size:
                fail(node, f"reflect pads {b}, {a} of axis {axis} must be smaller than its size {size}")

    def infer(self, node, inputs, graph):
        return [tuple(None if d is None else d + b + a
                      for d, b, a in zip(inputs[0].shape, node.attrs["pads_before"], node.attrs["pads_after"]))]

    def prepare(self, node, graph):
        return {"args": (tuple(node.attrs["pads_before"]), tuple(node.attrs["pads_after"]), node.attrs["reflect"])}

    def run(self, plan, inputs, kernels):
        return [kernels.pad_reflect_edge(inputs[0], *plan["args"])], {}


@register("tile")
class Tile(Op):
    """The input repeated ``repeats[i]`` times along each axis ``i``; quantized like the input."""

    def check(self, node, graph):
        x = _moved_codes(node, graph)
        repeats = ints_attr(node, "repeats", len(x.shape), lo=1)
        if any(size is None and r != 1 for size, r in zip(x.shape, repeats)):
            fail(node, f"repeats {list(repeats)} must be 1 on the axes of unknown size of input {x.shape}")

    def infer(self, node, inputs, graph):
        return [tuple(None if d is None else d * r for d, r in zip(inputs[0].shape, node.attrs["repeats"]))]

    def prepare(self, node, graph):
        return {"repeats": tuple(node.attrs["repeats"])}

    def run(self, plan, inputs, kernels):
        return [kernels.tile(inputs[0], plan["repeats"])], {}


@register("arg_max")
class ArgMax(Op):
    """The index of the largest code along ``axis`` (first on ties, last with ``select_last``): an int32
    tensor of plain indices (scale 1, zero point 0)."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph)
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        axis = int_attr(node, "axis", lo=0, hi=len(x.shape) - 1)
        if x.shape[axis] is None:
            fail(node, f"axis {axis} of input {x.shape} must have a known size")
        for key in ("keepdims", "select_last"):
            if not isinstance(node.attrs.get(key, False), bool):
                fail(node, f"attribute {key} must be a boolean, found {node.attrs[key]!r}")
        if (out.dtype, out.scale, out.zero_point) != ("int32", 1.0, 0):
            fail(node, f"output {out.name!r} must hold plain indices (int32, scale 1, zero point 0), found "
                       f"{out.dtype}, scale {out.scale}, zero point {out.zero_point}")

    def infer(self, node, inputs, graph):
        return [reduced_shape(inputs[0].shape, [node.attrs["axis"]], node.attrs.get("keepdims", False))]

    def prepare(self, node, graph):
        return {"axis": node.attrs["axis"], "keepdims": node.attrs.get("keepdims", False),
                "select_last": node.attrs.get("select_last", False)}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        out = kernels.arg_max(reduction_view(x, [plan["axis"]]), plan["select_last"])
        return [out.reshape(reduced_shape(x.shape, [plan["axis"]], plan["keepdims"]))], {}
