"""A PyTorch module that computes what an intsim quantization plan computes, with fake quantizers.

:class:`FakeQuantModel` is built from a :class:`intsim.converter.lowering.QuantizationPlan`: the same float
graph, the same integer steps (:func:`intsim.converter.lowering.plan_steps`: fused ReLU / ReLU6 clamps) and
the same quantization points, one :class:`~intsim.qat.fakequant.ActivationQuantizer` on each and a
:class:`~intsim.qat.fakequant.WeightQuantizer` on each Conv / Gemm.  Ops that only move data keep
their input's grid, as the converter's tied ops do.  With ``quantize=False`` the same module is the
float model (the distillation teacher, white paper §4.4).

Step handlers live in :data:`STEP_HANDLERS`, one per float op type, called with the step and its
activation operands (and, for Conv / Gemm, the fake-quantized weight and bias); an op without one,
or a non-MAC op with a constant operand, raises :class:`~intsim.errors.UnsupportedOpError` when the
module is built.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from intsim.converter.lowering import QuantizationPlan, quantization_points
from intsim.errors import UnsupportedOpError
from intsim.ptq.bias_correction import WeightFormat
from intsim.qat.fakequant import REQUANTIZATION_ROUNDING, ActivationQuantizer, WeightQuantizer, round_half_even

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


@_handler("Flatten")
def _flatten(step, x):
    return torch.flatten(x, int(step.nodes[0].attrs.get("axis", 1)))


@_handler("Reshape")
def _reshape(step, x):
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(step.nodes[0].attrs["shape"])]
    return x.reshape(shape)


MAC_OPS = ("Conv", "Gemm")


class FakeQuantModel(torch.nn.Module):
    """The quantization plan as a trainable module (white paper §4).

    Parameters
    ----------
    plan : QuantizationPlan
        The PTQ starting point (ranges, weight scales, CLE-rewritten weights).
    learn_ranges : bool
        Learn the activation and weight scales (LSQ); otherwise they stay at the PTQ ranges.

    With its ``quantize`` attribute False the module computes the float model.  ``plan`` is kept for
    :func:`intsim.qat.export`.
    """

    def __init__(self, plan: QuantizationPlan, learn_ranges: bool = True):
        super().__init__()
        fg, profile = plan.graph, plan.profile
        self.plan, self.graph, self.steps, self.profile = plan, fg, plan.steps, profile
        self.quantize = True
        for step in self.steps:
            node = step.nodes[0]
            if step.kind not in STEP_HANDLERS:
                raise UnsupportedOpError(
                    f"node {node.name!r}: op {step.kind!r} has no quantization-aware training support; "
                    f"supported: {', '.join(sorted(STEP_HANDLERS))} (ReLU and Clip only fused into the op before them)")
            constants = [t for t in node.inputs if t in fg.constants]
            if step.kind not in MAC_OPS and constants:
                raise UnsupportedOpError(f"node {node.name!r}: op {step.kind!r} with a constant operand "
                                         f"({constants[0]!r}) has no quantization-aware training support")
        points = set(quantization_points(fg, self.steps))
        requantize = REQUANTIZATION_ROUNDING[profile.rounding]
        self.activations = torch.nn.ModuleDict()
        self.point_names = {}
        for t in fg.inputs:
            self._add_activation(t, plan, round_half_even, None, learn_ranges)
        for step in self.steps:
            if step.output in points:
                self._add_activation(step.output, plan, requantize, step.clamp, learn_ranges)
        fmt = WeightFormat.of(profile)
        self.layers = torch.nn.ModuleDict()
        self.layer_keys = {}
        for step in self.steps:
            if step.kind in MAC_OPS:
                node = step.nodes[0]
                weight = fg.constants[node.inputs[1]]
                bias = fg.constants[node.inputs[2]] if len(node.inputs) > 2 else np.zeros(weight.shape[0], np.float32)
                codes, scale, zp = plan.weights.get(node.name) or fmt.quantize(weight, plan.weight_range_method)
                key = f"l{len(self.layers)}"
                self.layer_keys[node.name] = key
                self.layers[key] = WeightQuantizer(weight, bias, scale, zp, fmt.codes, profile.bias_bits, profile,
                                                   learn_ranges)

    def _add_activation(self, tensor, plan, rounding, clamp, learn):
        key = f"a{len(self.activations)}"
        self.point_names[tensor] = key
        scale, zp = plan.qparams[tensor]
        self.activations[key] = ActivationQuantizer(scale, zp, plan.profile, rounding, clamp, learn)

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
            args = [values[t] for t in node.inputs if t not in fg.constants]
            if step.kind in MAC_OPS:
                args += self._mac_operands(node, args[0])
            y = STEP_HANDLERS[step.kind](step, *args)
            if not self.quantize and step.clamp is not None:
                y = torch.clamp(y, *step.clamp)  # the fused ReLU / Clip
            elif self.quantize and step.output in self.point_names:
                y = self.activation(step.output)(y)  # the clamp is in its code range
            values[step.output] = y
        return values

    def _mac_operands(self, node, x):
        layer = self.layer(node.name)
        if not self.quantize:
            return [layer.weight.to(x.dtype), layer.bias.to(x.dtype)]
        x_scale = self.activation(self.grid_source(node.inputs[0])).scale(x.dtype)
        return list(layer.dequantized(x_scale, x.dtype))

    def grid_source(self, tensor: str) -> str:
        """The quantization point whose grid ``tensor`` is on (through tied ops)."""
        while tensor not in self.point_names:
            tensor = self.graph.producer(tensor).inputs[0]
        return tensor
