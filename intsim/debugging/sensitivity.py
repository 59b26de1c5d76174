"""Step 3 of the PTQ debugging workflow (white paper §3.7): quantize one tensor at a time, rank the
tensors by the metric drop each causes, and look at the worst ones' ranges.

The tensors are those a :class:`~intsim.converter.lowering.QuantizationPlan` quantizes: every
multiply-accumulate layer's weights and every quantization point (graph inputs and the outputs of the
computing ops).  On the integer datapath, "only that tensor quantized" is a conversion with a per-layer
configuration that leaves every other node at high bit widths (:func:`one_tensor_config`); in the
simulation, the plan's float graph with that one weight tensor replaced by its dequantized codes, or with
a fake-quant hook on that one activation (white paper §2.3), every other tensor float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from intsim.converter.lowering import QuantizationPlan
from intsim.debugging.metric import Metric, run_integer, run_simulated
from intsim.floatgraph import FloatGraph
from intsim.floatgraph.execute import run_float
from intsim.progress import Progress, progress_enabled
from intsim.ptq.bias_correction import dequantize_weight
from intsim.report import fake_quant_hook
from intsim.runtime import Model

KINDS = ("weights", "activations")
INPUT_OP = "Input"  # the "op" of a graph input's entry: it has no producing node


@dataclass(frozen=True)
class Tensor:
    """One quantized tensor of a plan: the node it belongs to (its layer for weights, its producer for
    activations; a graph input names itself), that node's ONNX op type, the kind, and the float tensor."""

    node: str
    op: str
    kind: str
    tensor: str


def quantized_tensors(plan: QuantizationPlan) -> list[Tensor]:
    """Every tensor the plan quantizes, in graph order: weights of each layer, then its output."""
    nodes = {n.name: n for n in plan.graph.nodes}
    found = [Tensor(t, INPUT_OP, "activations", t) for t in plan.graph.inputs if t in plan.qparams]
    for step in plan.steps:
        head = step.nodes[0]
        if head.name in plan.weights:
            found.append(Tensor(head.name, head.op, "weights", nodes[head.name].inputs[1]))
        if step.output in plan.qparams:
            found.append(Tensor(head.name, head.op, "activations", step.output))
    return found


def _only_weights(plan: QuantizationPlan, entry: Tensor) -> FloatGraph:
    fg = plan.graph
    constants = dict(fg.constants)
    constants[entry.tensor] = dequantize_weight(*plan.weights[entry.node]).astype(np.float32)
    return FloatGraph(fg.name, fg.nodes, fg.inputs, fg.outputs, constants, fg.shapes, fg.opset)


def activation_point(plan: QuantizationPlan, tensor: str) -> tuple:
    """``(scale, zero_point, lo, hi)`` of an activation as the fake-quant hook takes it."""
    scale, zero_point = plan.qparams[tensor]
    lo, hi = plan.profile.activation_range()
    return scale, zero_point, lo, hi


def simulated_output(plan: QuantizationPlan, entry: Tensor, data: np.ndarray, batch_size: int) -> np.ndarray:
    """The first output with only ``entry`` quantized, every other tensor float (quantization simulation)."""
    if entry.kind == "weights":
        return run_simulated(_only_weights(plan, entry), data, batch_size)
    hook = fake_quant_hook({entry.tensor: activation_point(plan, entry.tensor)})
    return run_simulated(plan.graph, data, batch_size, hook)


def one_tensor_config(plan: QuantizationPlan, entry: Tensor, high_bits: tuple[int, int]) -> dict:
    """The ``layer_config`` that quantizes only ``entry`` at the plan's bit widths, every other node at
    ``high_bits`` (weights, activations) (:mod:`intsim.converter.layer_config`).

    On the integer datapath a node's activation format is what it writes and what it reads (the converter
    requantizes its inputs to it), so an activation entry sets the format of its producer's step, and a
    graph input's entry that of the steps reading the input.  Every node of a step (a layer and its fused
    activation) gets the override, so that the glob for the rest does not win inside the step.
    """
    p = plan.profile
    config = {"*": {"weight_bits": high_bits[0], "activation_bits": high_bits[1]}}
    if entry.op == INPUT_OP:
        steps = [s for s in plan.steps if any(entry.tensor in n.inputs for n in s.nodes)]
    else:
        steps = [s for s in plan.steps if s.nodes[0].name == entry.node]
    override = {"weight_bits": p.weight_bits} if entry.kind == "weights" else {"activation_bits": p.activation_bits}
    for step in steps:
        config.update({n.name: dict(override) for n in step.nodes})
    return config


def ranked(entries: list[dict]) -> list[dict]:
    """Worst first: the largest drop, ties (a coarse metric such as accuracy on few samples) broken by
    the lower output SQNR."""
    return sorted(entries, key=lambda e: (-e["drop"], e["sqnr_db"]))


def rank(plan: QuantizationPlan, data: np.ndarray, metric: Metric, batch_size: int,
         convert_one: Callable[[dict], Model] | None = None, high_bits: tuple[int, int] = (12, 16),
         progress: bool = True) -> list[dict]:
    """Step 3: one entry per quantized tensor, worst first, measured on the integer datapath and in the
    simulation.

    Each entry is ``{"node", "op", "kind", "tensor", "drop", "sqnr_db", "drop_simulated",
    "sqnr_db_simulated"}``: the metric drop when only that tensor is quantized
    (:class:`~intsim.debugging.metric.Metric`) and the output SQNR against float then.  On the integer datapath
    "only" means every other node at ``high_bits``: ``convert_one(layer_config)`` converts the model with
    :func:`one_tensor_config`'s configuration.  In the simulation the other tensors stay float.  Without
    ``convert_one`` the ranking is the simulation's alone (``drop`` = ``drop_simulated``): one float run per
    tensor instead of a conversion and an integer run.
    """
    tensors = quantized_tensors(plan)
    entries = []
    with Progress(len(tensors), progress_enabled(progress), "quantizing one tensor at a time") as bar:
        for i, entry in enumerate(tensors):
            simulated = simulated_output(plan, entry, data, batch_size)
            integer = simulated if convert_one is None else run_integer(
                convert_one(one_tensor_config(plan, entry, high_bits)), data, batch_size)
            entries.append({"node": entry.node, "op": entry.op, "kind": entry.kind, "tensor": entry.tensor,
                            "drop": metric.drop(metric.value(integer)), "sqnr_db": metric.output_sqnr_db(integer),
                            "drop_simulated": metric.drop(metric.value(simulated)),
                            "sqnr_db_simulated": metric.output_sqnr_db(simulated)})
            bar.update(i + 1)
    return ranked(entries)


# --------------------------------------------------------------------------
# The worst tensors' ranges.
# --------------------------------------------------------------------------


def _channel_extremes(plan: QuantizationPlan, tensor: str, calibration: np.ndarray,
                      batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (axis 1) minimum and maximum of a float activation over the calibration data."""
    lo = hi = None
    for start in range(0, len(calibration), batch_size):
        batch = np.asarray(calibration[start:start + batch_size])
        value = batch if tensor in plan.graph.inputs else run_float(plan.graph, [batch], outputs=[tensor])[tensor]
        axes = tuple(a for a in range(value.ndim) if a != 1)
        b_lo, b_hi = value.min(axis=axes), value.max(axis=axes)
        lo, hi = (b_lo, b_hi) if lo is None else (np.minimum(lo, b_lo), np.maximum(hi, b_hi))
    return lo.astype(np.float64), hi.astype(np.float64)


def channel_ranges(plan: QuantizationPlan, entry: Tensor, calibration: np.ndarray, batch_size: int) -> dict:
    """Range statistics of one tensor, per channel, against its quantization grid (white paper §3.7: "inspect
    the worst layers' ranges and per-channel distributions").

    Weights: per output channel (axis 0) of the float weights.  Activations: per channel (axis 1) over the
    calibration data.  ``step`` is the quantization step (the scale; for per-channel weights, per channel);
    ``codes`` per channel is how many steps the channel's range spans: a channel of a few codes is
    crushed by a grid set by the others (per-tensor quantization of unbalanced channels, §2.4.2, §3.2).
    """
    if entry.kind == "weights":
        w = plan.graph.constants[entry.tensor].astype(np.float64)
        flat = w.reshape(w.shape[0], -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        step = np.broadcast_to(np.asarray(plan.weights[entry.node][1], np.float64), lo.shape)
    else:
        lo, hi = _channel_extremes(plan, entry.tensor, calibration, batch_size)
        step = np.full(lo.shape, plan.qparams[entry.tensor][0], np.float64)
    spread = np.maximum(hi, 0.0) - np.minimum(lo, 0.0)
    codes = spread / step
    live = spread[spread > 0]
    return {
        "node": entry.node, "op": entry.op, "kind": entry.kind, "tensor": entry.tensor,
        "channels": int(lo.size), "min": float(lo.min()), "max": float(hi.max()),
        "channel_range_ratio": float(live.max() / live.min()) if live.size else 1.0,
        "median_channel_codes": float(np.median(codes)), "channels_under_16_codes": int(np.sum(codes < 16)),
        "channel_min": lo.tolist(), "channel_max": hi.tolist(), "step": step.tolist(),
    }
