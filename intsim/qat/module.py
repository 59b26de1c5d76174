"""A PyTorch module that computes what an intsim quantization plan computes, with fake quantizers.

:class:`FakeQuantModel` is built from a :class:`intsim.converter.lowering.QuantizationPlan`: the same float
graph (multiplications by constants as Conv / Gemm layers, :func:`mac_layers`), the same integer steps
(:func:`intsim.converter.steps.plan_steps`: fused ReLU / ReLU6 clamps, SiLU) and the same quantization
points, one :class:`~intsim.qat.fakequant.ActivationQuantizer` on each and a
:class:`~intsim.qat.fakequant.WeightQuantizer` on each Conv / Gemm, every one in its layer's format
(``layer_config``).  Ops that only move data keep their input's grid, as the converter's tied ops do;
the two whose output leaves it (average pool, pad with a value) compute on the input's codes
(:data:`ON_INPUT_GRID`).  A constant operand of Add / Sub / Mul / Div is on the converter's grid for it.
With ``quantize=False`` the same module is the float model (the distillation teacher, white paper §4.4).

Step handlers live in :data:`STEP_HANDLERS`, one per float op type the converter lowers, called with the
step and its operands (and, for Conv / Gemm, the fake-quantized weight and bias); an op without one
(Softmax), or another op with a constant operand, raises :class:`~intsim.errors.UnsupportedOpError` when
the module is built.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from intsim.converter.lowering import QuantizationPlan
from intsim.converter.layer_config import ActivationFormat, LayerFormats
from intsim.converter.quantizer import quantization_params
from intsim.converter.steps import TIED_OPS, plan_steps, point_formats
from intsim.converter.params import constant_operand_codes
from intsim.errors import UnsupportedOpError
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.execute import resize_source_indices
from intsim.floatgraph.passes import copy_graph, fresh_name
from intsim.ptq.bias_correction import WeightFormat
from intsim.qat.fakequant import (REQUANTIZATION_ROUNDING, ActivationQuantizer, BatchNormWeightQuantizer,
                                  WeightQuantizer, round_half_away, round_half_even, round_ste)

STEP_HANDLERS = {}


def _handler(*ops):
    def wrap(fn):
        for op in ops:
            STEP_HANDLERS[op] = fn
        return fn

    return wrap


def _spatial_pads(x: torch.Tensor, pads, value: float) -> torch.Tensor:
    """Pad NCHW ``x`` by ONNX ``pads`` ``[top, left, bottom, right]``."""
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


@_handler("Conv")
def _conv(step, x, weight, bias):
    a = step.nodes[0].attrs
    return F.conv2d(_spatial_pads(x, a["pads"], 0.0), weight, bias, stride=tuple(a["strides"]),
                    dilation=tuple(a["dilations"]), groups=a["group"])


@_handler("Gemm")
def _gemm(step, x, weight, bias):
    return F.linear(x, weight, bias)


@_handler("Add")
def _add(step, a, b):
    return a + b


@_handler("Sub")
def _sub(step, a, b):
    return a - b


@_handler("Mul")
def _mul(step, a, b):
    return a * b


@_handler("Div")
def _div(step, a, reciprocal):
    return a * reciprocal  # the converter multiplies by the divisor's reciprocal on its own grid


@_handler("MatMul")
def _matmul(step, a, b):
    return torch.matmul(a, b)


@_handler("Concat")
def _concat(step, *xs):
    return torch.cat(xs, dim=step.nodes[0].attrs["axis"])


@_handler("ReduceMean")
def _mean(step, x):
    a = step.nodes[0].attrs
    return x.mean(dim=tuple(a["axes"]), keepdim=bool(a.get("keepdims", 1)))


@_handler("MaxPool")
def lower_max_pool(step, x):
    a = step.nodes[0].attrs
    return F.max_pool2d(_spatial_pads(x, a["pads"], -torch.inf), tuple(a["kernel_shape"]), tuple(a["strides"]),
                        dilation=tuple(a.get("dilations", (1, 1))))


@_handler("AveragePool")
def _average_pool(step, x):
    """The window mean; on codes (``x - zero_point``, padded with 0) it is what the integer kernel divides."""
    a = step.nodes[0].attrs
    kernel, strides = tuple(a["kernel_shape"]), tuple(a["strides"])
    total = F.avg_pool2d(_spatial_pads(x, a["pads"], 0.0), kernel, strides, divisor_override=1)
    if a.get("count_include_pad", 0):
        return total / (kernel[0] * kernel[1])
    valid = _spatial_pads(torch.ones_like(x[:1, :1]), a["pads"], 0.0)
    return total / F.avg_pool2d(valid, kernel, strides, divisor_override=1)


@_handler("Pad")
def _pad(step, x, value=None):
    """``value``: the pad value on the input's grid (the converter's code for it), else the float one."""
    a = step.nodes[0].attrs
    rank, pads = x.ndim, a["pads"]
    widths = tuple(w for axis in reversed(range(rank)) for w in (pads[axis], pads[rank + axis]))
    return F.pad(x, widths, value=a.get("value", 0.0) if value is None else value)


@_handler("Resize")
def _resize(step, x):
    a = step.nodes[0].attrs
    for axis, size in enumerate(a["sizes"]):
        if size not in (0, x.shape[axis]):
            index = resize_source_indices(x.shape[axis], size, a["coordinate_transformation_mode"], a["nearest_mode"])
            x = torch.index_select(x, axis, torch.from_numpy(index))
    return x


@_handler("Flatten")
def _flatten(step, x):
    return torch.flatten(x, int(step.nodes[0].attrs.get("axis", 1)))


@_handler("Reshape")
def _reshape(step, x):
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(step.nodes[0].attrs["shape"])]
    return x.reshape(shape)


@_handler("Transpose")
def _transpose(step, x):
    return x.permute(*step.nodes[0].attrs["perm"])


@_handler("Squeeze")
def _squeeze(step, x):
    for axis in sorted(step.nodes[0].attrs["axes"], reverse=True):
        x = x.squeeze(axis)
    return x


@_handler("Unsqueeze")
def _unsqueeze(step, x):
    for axis in sorted(step.nodes[0].attrs["axes"]):
        x = x.unsqueeze(axis)
    return x


# The torch twins of :data:`intsim.converter.lowering.UNARY` (the converter tabulates those in numpy; training
# needs gradients).  The converter lowers each to a lookup table whose entries round to nearest, ties to even.
UNARY_FUNCTIONS = {
    "Sigmoid": lambda a: torch.sigmoid,
    "Tanh": lambda a: torch.tanh,
    "Relu": lambda a: torch.relu,
    "Clip": lambda a: lambda x: torch.clamp(x, a.get("min", -math.inf), a.get("max", math.inf)),
    "LeakyRelu": lambda a: lambda x: torch.where(x >= 0, x, a.get("alpha", 0.01) * x),
    "HardSigmoid": lambda a: lambda x: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda a: lambda x: x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0),
    "SiLU": lambda a: lambda x: x * torch.sigmoid(x),
    "PRelu": lambda a: lambda x: torch.where(x >= 0, x, a["slope"] * x),
}


@_handler(*UNARY_FUNCTIONS)
def _unary(step, x):
    return UNARY_FUNCTIONS[step.kind](dict(step.nodes[0].attrs, **step.attrs))(x)


MAC_OPS = ("Conv", "Gemm")
# The scale of the int32 accumulator a requantizing op rescales (from its operands' ``(value, scale)``): the
# integer model's codes follow from it exactly (:func:`~intsim.qat.fakequant.requantized_codes`).  Conv and
# Gemm: ``s_x s_w`` per channel; a Div is lowered as the Mul by the reciprocal.
ACCUMULATOR_SCALES = {
    "Mul": lambda step, reads: reads[0][1] * reads[1][1],
    "Div": lambda step, reads: reads[0][1] * reads[1][1],
    "MatMul": lambda step, reads: reads[0][1] * reads[1][1],
    "ReduceMean": lambda step, reads: reads[0][1] / math.prod(reads[0][0].shape[a] for a in step.nodes[0].attrs["axes"]),
}
CONSTANT_OPERANDS = ("Add", "Sub", "Mul", "Div")  # a constant operand is lowered on a per-tensor grid of its own


def mac_layers(fg: FloatGraph) -> FloatGraph:
    """A copy of ``fg`` in which every multiplication by a constant tensor is a Conv or Gemm with a bias:
    a 4-D BatchNormalization left after folding becomes the 1x1 depthwise Conv the converter lowers it to,
    a 2-D MatMul by a constant the Gemm of the transposed constant.  The integer ops stay the same; the
    weights become trainable and exportable (:attr:`QuantizationPlan.weights`)."""
    fg = copy_graph(fg)
    nodes = []
    for node in fg.nodes:
        x_rank = len(fg.shapes[node.inputs[0]])
        if node.op == "BatchNormalization" and x_rank == 4:
            gamma, beta, mean, var = (fg.constants[t].astype(np.float64) for t in node.inputs[1:5])
            a = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
            weight, bias = a.reshape(-1, 1, 1, 1), beta - mean * a
            op, attrs = "Conv", {"kernel_shape": [1, 1], "strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0],
                                 "group": a.size}
        elif node.op == "MatMul" and x_rank == 2 and getattr(fg.constants.get(node.inputs[1]), "ndim", 0) == 2:
            weight = fg.constants[node.inputs[1]].T
            op, attrs, bias = "Gemm", {}, np.zeros(weight.shape[0])
        else:
            nodes.append(node)
            continue
        names = [fresh_name(fg, f"{node.name}/{what}") for what in ("weight", "bias")]
        for name, value in zip(names, (weight, bias)):
            fg.constants[name] = np.ascontiguousarray(value, np.float32)
            fg.shapes[name] = value.shape
        nodes.append(FloatNode(op, node.name, [node.inputs[0], *names], list(node.outputs), attrs))
    fg.nodes = nodes
    return fg


class FakeQuantModel(torch.nn.Module):
    """The quantization plan as a trainable module (white paper §4).

    Parameters
    ----------
    plan : QuantizationPlan
        The PTQ starting point (ranges, weight scales, CLE-rewritten weights); its graph is taken
        through :func:`mac_layers`.
    learn_ranges : bool
        Learn the activation and weight scales (LSQ); otherwise they stay at the PTQ ranges.

    With its ``quantize`` attribute False the module computes the float model.  ``plan`` is kept for
    :func:`intsim.qat.export`.
    """

    def __init__(self, plan: QuantizationPlan, learn_ranges: bool = True):
        super().__init__()
        fg, profile = mac_layers(plan.graph), plan.profile
        formats = plan.formats or LayerFormats(profile)
        plan = replace(plan, graph=fg, steps=plan_steps(fg), formats=formats)
        self.plan, self.graph, self.steps, self.profile, self.formats = plan, fg, plan.steps, profile, formats
        self.quantize = True
        self._statistics = None  # {layer: [outputs before the bias]} while keep_batch_norms measures them
        for step in self.steps:
            self._check(step)
        points = point_formats(fg, self.steps, formats)
        self.activations = torch.nn.ModuleDict()
        self.point_names = {}
        for t in fg.inputs:
            self._add_activation(t, plan, points[t][0], round_half_even, None, learn_ranges)
        for step in self.steps:
            if step.output in points:
                point_profile = points[step.output][0]
                requantize = REQUANTIZATION_ROUNDING[point_profile.rounding]
                rounding = round_half_even if step.kind in UNARY_FUNCTIONS else requantize  # a table rounds once
                self._add_activation(step.output, plan, point_profile, rounding, step.clamp, learn_ranges)
        self.constant_values = {}
        for step in self.steps:
            if step.kind in CONSTANT_OPERANDS:
                self._add_constants(step, fg, formats.step_profile(step))
        self.layers = torch.nn.ModuleDict()
        self.layer_keys = {}
        for step in self.steps:
            if step.kind in MAC_OPS:
                node, layer_profile = step.nodes[0], formats.step_profile(step)
                fmt = WeightFormat.of(layer_profile)
                weight = fg.constants[node.inputs[1]]
                bias = fg.constants[node.inputs[2]] if len(node.inputs) > 2 else np.zeros(weight.shape[0], np.float32)
                method = formats.method(step, "weight_range_method", plan.weight_range_method)
                codes, scale, zp = plan.weights.get(node.name) or fmt.quantize(weight, method)
                key = f"l{len(self.layers)}"
                self.layer_keys[node.name] = key
                self.layers[key] = WeightQuantizer(weight, bias, scale, zp, fmt.codes, layer_profile.bias_bits,
                                                   layer_profile, learn_ranges)
        self.eval()  # :func:`intsim.qat.train` switches to training

    def _check(self, step):
        node = step.nodes[0]
        if step.kind not in STEP_HANDLERS:
            raise UnsupportedOpError(
                f"node {node.name!r}: op {step.kind!r} has no quantization-aware training support; supported: "
                f"{', '.join(sorted(STEP_HANDLERS))}, and BatchNormalization / MatMul by a constant as "
                f"{' / '.join(MAC_OPS)}" + (" (export the model without its softmax)" if step.kind == "Softmax" else ""))
        constants = [t for t in self.operands(step) if t in self.graph.constants]
        if step.kind not in MAC_OPS + CONSTANT_OPERANDS and constants:
            raise UnsupportedOpError(f"node {node.name!r}: op {step.kind!r} with a constant operand "
                                     f"({constants[0]!r}) has no quantization-aware training support")
        if step.kind == "Div" and node.inputs[0] in self.graph.constants:
            raise UnsupportedOpError(f"node {node.name!r}: Div is lowered only for a constant divisor")
        if step.kind in TIED_OPS and self.formats.step_activation(step) is not None:
            raise UnsupportedOpError(f"node {node.name!r}: a layer_config activation format of its own on data-movement "
                                     f"op {step.kind!r} has no quantization-aware training support")

    def operands(self, step) -> list[str]:
        """The float tensors a step's handler takes: a table's one input (PRelu's slope is in the step)."""
        inputs = step.nodes[0].inputs
        return inputs[:1] if step.kind in UNARY_FUNCTIONS else inputs

    def _add_constants(self, step, fg, profile):
        """Float and grid values of a step's constant operands, as the converter quantizes them
        (:func:`intsim.converter.params.constant_operand_codes`; a divisor as its reciprocal)."""
        for i, name in enumerate(step.nodes[0].inputs):
            if name not in fg.constants:
                continue
            value = 1.0 / fg.constants[name] if step.kind == "Div" else fg.constants[name]
            codes, scale, zero_point = constant_operand_codes(value, profile)
            grid = (codes.astype(np.float64) - zero_point) * scale
            self.constant_values[(step.output, i)] = (torch.as_tensor(np.asarray(value, np.float64)),
                                                      torch.as_tensor(grid), scale)

    def _add_activation(self, tensor, plan, profile, rounding, clamp, learn):
        key = f"a{len(self.activations)}"
        self.point_names[tensor] = key
        scale, zp = plan.qparams[tensor]
        self.activations[key] = ActivationQuantizer(scale, zp, profile, rounding, clamp, learn)

    def activation(self, tensor: str) -> ActivationQuantizer:
        return self.activations[self.point_names[tensor]]

    def layer(self, node_name: str) -> WeightQuantizer:
        return self.layers[self.layer_keys[node_name]]

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The graph outputs for ``inputs`` (NCHW, float32 or float64: the module computes in their type)."""
        values = self.tensors(*inputs)
        return [values[t] for t in self.graph.outputs]

    def tensors(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every float tensor of the graph (inputs and step outputs) for ``inputs``."""
        fg = self.graph
        values = {}
        for name, x in zip(fg.inputs, inputs):
            values[name] = self.activation(name)(x) if self.quantize else x
        for step in self.steps:
            node = step.nodes[0]
            accumulator_scale = None
            if step.kind in MAC_OPS:
                y, accumulator_scale = self._mac(step, *self._read(step, node.inputs[0], values))
            elif self.quantize and step.kind in ON_INPUT_GRID:
                y = ON_INPUT_GRID[step.kind](step, values[node.inputs[0]], self.activation(self.grid_source(step.output)))
            else:
                operands = self.operands(step)
                dtype = next(values[t].dtype for t in operands if t in values)
                reads = [self._read(step, t, values) if t in values else self._constant(step, i, dtype)
                         for i, t in enumerate(operands)]
                if self.quantize and step.kind == "Concat":  # each input rescaled onto the output grid on its own
                    out = self.activation(step.output)
                    values[step.output] = torch.cat([out(v, scale) for v, scale in reads], dim=node.attrs["axis"])
                    continue
                y = STEP_HANDLERS[step.kind](step, *(v for v, _ in reads))
                if self.quantize and step.kind in ACCUMULATOR_SCALES:
                    accumulator_scale = ACCUMULATOR_SCALES[step.kind](step, reads)
            if not self.quantize and step.clamp is not None:
                y = torch.clamp(y, *step.clamp)  # the fused ReLU / Clip
            elif self.quantize and step.output in self.point_names:
                y = self.activation(step.output)(y, accumulator_scale)  # the clamp is in its code range
            values[step.output] = y
        return values

    def _constant(self, step, index, dtype):
        """``(value, scale)`` of a constant operand (float mode: the float constant, scale None)."""
        real, grid, scale = self.constant_values[(step.output, index)]
        return (grid.to(dtype), torch.as_tensor(scale, dtype=dtype)) if self.quantize else (real.to(dtype), None)

    def _read(self, step, tensor, values):
        """``(value, scale)`` of ``tensor`` as ``step`` reads it: on its grid, or, where the step computes in
        another activation format (``layer_config``), requantized to the one the converter's ``rescale`` node
        writes: the same real range in the step's bits (scale None in float mode)."""
        v = values[tensor]
        if not self.quantize:
            return v, None
        source = self.activation(self.grid_source(tensor))
        fmt = self.formats.step_activation(step)
        if fmt is None or fmt == ActivationFormat.of(source.profile):
            return v, source.scale(v.dtype)
        profile = self.formats.step_profile(step)
        scale, zero_point = source.params()
        lo, hi = (scale * (c - zero_point) for c in source.profile.activation_range())
        scale, zero_point = quantization_params(lo, hi, fmt.bits, fmt.signed, fmt.symmetric,
                                                power_of_two=profile.power_of_two_scales)
        rounding = REQUANTIZATION_ROUNDING[profile.rounding]
        codes = torch.clamp(round_ste(v / scale, rounding) + zero_point, *profile.activation_range())
        return (codes - zero_point) * scale, torch.as_tensor(scale, dtype=v.dtype)

    def _mac(self, step, x, x_scale):
        node = step.nodes[0]
        layer, handler = self.layer(node.name), STEP_HANDLERS[step.kind]
        if not self.quantize:
            y = handler(step, x, *layer.folded(x.dtype))
            if self._statistics is not None and node.name in self._statistics:
                z = y - layer.folded(x.dtype)[1].reshape((1, -1) + (1,) * (y.ndim - 2))
                dims = [d for d in range(z.ndim) if d != 1]
                total = self._statistics[node.name]
                total[0], total[1], total[2] = total[0] + z.numel() // z.shape[1], total[1] + z.sum(dims), \
                    total[2] + (z * z).sum(dims)
            return y, None
        weight, bias = layer.dequantized(x_scale, x.dtype)
        if self.training and isinstance(layer, BatchNormWeightQuantizer):
            z = handler(step, x, layer.weight.to(x.dtype), None)
            return layer.batch_normalize(handler(step, x, weight, None), z), None
        return handler(step, x, weight, bias), x_scale * layer.scale(x.dtype)  # the accumulator's scale

    def keep_batch_norms(self, node_names, data, batch_size: int = 256):
        """Train the layers ``node_names`` with their batch norms (white paper §4.2, the variant with batch
        statistics, :class:`~intsim.qat.fakequant.BatchNormWeightQuantizer`) instead of statically folded.

        Each starts from its folded layer, with the running mean and variance of its output ``W * x``
        measured on ``data`` (float model, batches of ``batch_size``).
        """
        self._statistics = {name: [0, 0.0, 0.0] for name in node_names}  # count, sum, sum of squares
        quantize, self.quantize = self.quantize, False
        try:
            with torch.no_grad():
                for i in range(0, len(data), batch_size):
                    self.tensors(torch.as_tensor(np.asarray(data[i : i + batch_size]), dtype=torch.float64))
            outputs, self._statistics = self._statistics, None
        finally:
            self.quantize, self._statistics = quantize, None
        for name, (count, total, squares) in outputs.items():
            key, mean = self.layer_keys[name], total / count
            var = torch.clamp(squares / count - mean * mean, min=0.0) * count / max(count - 1, 1)
            self.layers[key] = BatchNormWeightQuantizer(self.layers[key], self.profile, mean, var).train(self.training)

    def grid_source(self, tensor: str) -> str:
        """The quantization point whose grid ``tensor`` is on (through tied ops)."""
        while tensor not in self.point_names:
            tensor = self.graph.producer(tensor).inputs[0]
        return tensor


def _average_pool_codes(step, x, grid):
    """The integer average pool: the mean of the window's codes, rounded half away from zero."""
    scale, zero_point = grid.scale(x.dtype), grid.zero_point
    centered = round_ste(x / scale)  # x is on the grid: exact codes - zero point
    codes = round_ste(_average_pool(step, centered) + zero_point, round_half_away)
    return (codes - zero_point) * scale


def _pad_on_grid(step, x, grid):
    """Pad with the converter's code for the pad value: ``clip(rint(value / scale) + zero_point)``."""
    lo, hi = grid.profile.activation_range()
    scale, zero_point = grid.params()
    code = min(max(round(step.nodes[0].attrs.get("value", 0.0) / scale) + zero_point, lo), hi)
    return _pad(step, x, (code - zero_point) * scale)


# Tied ops whose output is not a subset of their input's values: computed on the input's codes when quantized.
ON_INPUT_GRID = {"AveragePool": _average_pool_codes, "Pad": _pad_on_grid}
