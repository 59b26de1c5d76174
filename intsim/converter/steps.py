"""The integer steps of a float graph: which float nodes become one integer op (activation fusion,
SiLU, PRelu), which tensors get a calibrated scale of their own, and the format of each step under a
per-layer configuration (:mod:`intsim.converter.layer_config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from intsim.converter.layer_config import LayerFormats
from intsim.errors import UnsupportedOpError
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.profiles import Profile

TIED_OPS = ("MaxPool", "AveragePool", "Pad", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize",
            "Gather", "GatherElements", "Slice", "ReduceMax", "Tile", "ArgMax")
UNCALIBRATED_OPS = ("Softmax", "MaskedSoftmax")  # outputs on a fixed grid
FUSABLE_ACTIVATIONS = ("Relu", "Clip")
WEIGHTED_OPS = ("Conv", "Gemm", "BatchNormalization")
FUSING_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Concat", "BatchNormalization")


@dataclass
class Step:
    """One integer op to emit: the float nodes it covers and the float tensor it produces."""

    kind: str  # a float op type, or "SiLU"
    nodes: list[FloatNode]
    output: str
    clamp: tuple[float, float] | None = None  # a fused activation's real range
    attrs: dict = field(default_factory=dict)


def plan_steps(fg: FloatGraph) -> list[Step]:
    """Group float nodes into integer steps: activation fusion, SiLU, PRelu with a scalar slope."""
    consumers = {}
    for node in fg.nodes:
        for t in node.inputs:
            consumers.setdefault(t, []).append(node)
    outputs = set(fg.outputs)
    taken = set()
    steps = []
    for node in fg.nodes:
        if node.name in taken:
            continue
        out = node.outputs[0]
        users = consumers.get(out, [])
        single = users[0] if len(users) == 1 and out not in outputs else None
        if node.op in FUSING_OPS and single is not None and single.op in FUSABLE_ACTIVATIONS:
            lo, hi = (0.0, math.inf) if single.op == "Relu" else (single.attrs.get("min", -math.inf),
                                                                  single.attrs.get("max", math.inf))
            steps.append(Step(node.op, [node, single], single.outputs[0], (lo, hi)))
            taken.add(single.name)
            continue
        if node.op == "Sigmoid" and single is not None and single.op == "Mul" and node.inputs[0] in single.inputs:
            steps.append(Step("SiLU", [node, single], single.outputs[0]))
            taken.add(single.name)
            continue
        if node.op == "PRelu":
            slope = fg.constants.get(node.inputs[1])
            if slope is None or np.unique(slope).size != 1:
                raise UnsupportedOpError(
                    f"node {node.name!r} (opset {fg.opset}): PRelu with a per-channel slope has no integer lowering yet"
                )
            steps.append(Step("PRelu", [node], out, attrs={"slope": float(np.unique(slope)[0])}))
            continue
        steps.append(Step(node.op, [node], out))
    return steps


def weighted(fg: FloatGraph, step: Step) -> bool:
    """Whether a step multiplies by constant weights (a layer with a weight format)."""
    node = step.nodes[0]
    return step.kind in WEIGHTED_OPS or (step.kind == "MatMul" and node.inputs[1] in fg.constants)


def layer_formats(fg: FloatGraph, profile: Profile, layer_config, steps: list[Step]) -> LayerFormats:
    """The per-step formats of ``layer_config`` over ``fg``, each checked against the profile's
    ``supported_formats``."""
    formats = LayerFormats(profile, layer_config, [(n.name, n.op) for n in fg.nodes], TIED_OPS)
    for step in steps:
        formats.check_supported(step, weighted(fg, step))
    return formats


def point_formats(fg: FloatGraph, steps: list[Step], formats: LayerFormats) -> dict:
    """``{quantization point: (profile, range method or None)}``: the format each calibrated tensor
    is quantized in, its producer's (a graph input's: :meth:`LayerFormats.input_profile`)."""
    points = {t: (formats.input_profile(t, steps), None) for t in fg.inputs if t not in fg.integer_inputs}
    for step in steps:
        if step.kind not in TIED_OPS and step.kind not in UNCALIBRATED_OPS:
            points[step.output] = (formats.step_profile(step), formats.method(step, "range_method", None))
    return points


def quantization_points(fg: FloatGraph, steps: list[Step]) -> list[str]:
    """Float tensors that get a calibrated scale of their own."""
    points = [t for t in fg.inputs if t not in fg.integer_inputs]
    for step in steps:
        if step.kind not in TIED_OPS and step.kind not in UNCALIBRATED_OPS:
            points.append(step.output)
    return points
