"""Weight quantization formats and bias correction (white paper §3.3): subtract the expected output
error of the quantized weights, measured layer by layer against the float model
(``E[W~x~] - E[Wx]``, empirical) or as ``(W~ - W) E[x]`` from batch-norm statistics (analytic)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from intsim.converter.quantizer import code_range, quantize_weights
from intsim.floatgraph.execute import run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.passes import copy_graph

BIAS_CORRECTION_METHODS = ("empirical", "analytic")
from intsim.ptq.layers import layer_bias, is_mac, response_to_constant, set_constant, mac_nodes
from intsim.ptq.statistics import Stepper, channel_axes


# --------------------------------------------------------------------------
# Weight quantization, bias correction (white paper §3.3).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFormat:
    """The profile's weight quantizer, as :func:`intsim.converter.calibration.quantize_weights` takes it."""

    bits: int
    signed: bool
    symmetric: bool
    narrow_range: bool
    per_channel: bool
    power_of_two: bool

    @classmethod
    def of(cls, profile) -> "WeightFormat":
        p = profile
        return cls(p.weight_bits, p.weight_signed, p.weight_symmetric, p.weight_narrow_range and p.weight_symmetric,
                   p.per_channel, p.power_of_two_scales)

    @property
    def codes(self) -> tuple[int, int]:
        return code_range(self.bits, self.signed, self.narrow_range)

    def quantize(self, weight: np.ndarray, method: str):
        return quantize_weights(weight, self.bits, self.signed, self.symmetric, self.narrow_range, self.per_channel,
                                axis=0, power_of_two=self.power_of_two, method=method)


def dequantize_weight(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``(codes - zero_point) * scale`` with per-output-channel (axis 0) or per-tensor parameters."""
    shape = (-1,) + (1,) * (codes.ndim - 1)
    return (codes.astype(np.float64) - np.asarray(zero_point).reshape(shape)) * np.asarray(scale).reshape(shape)


def _weight_error(fg: FloatGraph, node: FloatNode, quantized: tuple) -> np.ndarray:
    return dequantize_weight(*quantized) - fg.constants[node.inputs[1]].astype(np.float64)


def _channel_means(out: np.ndarray) -> np.ndarray:
    """Per-channel (axis 1) mean of a layer output computed for a single (mean) input."""
    out = out.astype(np.float64)
    return out.mean(axis=channel_axes(out)) if out.ndim > 2 else out[0]


def empirical_bias_correction(fg: FloatGraph, weights: Mapping[str, tuple], data: np.ndarray,
                              batch_size: int) -> FloatGraph:
    """Empirical bias correction (white paper §3.3).

    What is compared: per layer in ``weights`` (``{node: (codes, scale,
    zero_point)}``), in graph order, the pre-activation ``W~ x~ + b`` of the
    weight-quantized model with the float model's ``W x + b``, both on the
    calibration data.  ``x~`` is the layer's input in the quantized model:
    every earlier layer of ``weights`` runs with its quantized weights and its
    already corrected bias (activations stay float; their ranges are set
    later).  The bias loses the mean of the difference per output channel,
    so that afterwards the quantized model's mean pre-activation error on
    ``data`` is 0 per channel, layer by layer.

    The layer is linear, so that mean is ``W~ E[x~] - W E[x]`` (spatially
    averaged; zero padding included) for the mean input tensors ``E[x~]``
    and ``E[x]``; both models walk the data once, node by node
    (:class:`Stepper`).  Returns a new graph: float weights, corrected
    biases.
    """
    floats = Stepper(fg, data, batch_size)
    fg, quantized_fg = copy_graph(fg), copy_graph(fg)
    for node in mac_nodes(quantized_fg):
        if node.name in weights:
            set_constant(quantized_fg, node, 1, dequantize_weight(*weights[node.name]), "weight_quantized")
    quantized = Stepper(quantized_fg, data, batch_size)
    count = sum(len(values[fg.inputs[0]]) for values in floats.values)
    for i, node in enumerate(fg.nodes):
        if not (is_mac(fg, node) and node.name in weights):
            continue
        mean_float, mean_quantized = (
            (sum(values[node.inputs[0]].astype(np.float64).sum(axis=0) for values in stepper.run_to(i)) / count)[None]
            for stepper in (floats, quantized))
        linear = replace(node, inputs=node.inputs[:2])
        # W~ E[x~] - W E[x] = (W~ - W) E[x~] + W (E[x~] - E[x]): two small terms, each accurate in float32.
        shift = (_channel_means(run_node(linear, [mean_quantized, _weight_error(fg, node, weights[node.name])])[0])
                 + _channel_means(run_node(linear, [mean_quantized - mean_float, fg.constants[node.inputs[1]]])[0]))
        corrected = layer_bias(fg, node) - shift
        set_constant(fg, node, 2, corrected, "bias_corrected")
        set_constant(quantized_fg, quantized_fg.nodes[i], 2, corrected, "bias_corrected")
    return fg


def clipped_normal_mean(mean, std, lo: float, hi: float) -> np.ndarray:
    """``E[clip(z, lo, hi)]`` for ``z ~ N(mean, std**2)`` per element (white paper §3.3, analytic bias correction).

    ``lo * P(z < lo) + hi * P(z > hi) + E[z; lo <= z <= hi]``, with
    ``E[z; a <= z <= b] = mean (Phi(b') - Phi(a')) + std (phi(a') - phi(b'))``
    for the standardized bounds ``a', b'``; ``std == 0`` gives ``clip(mean)``.
    """
    mean, std = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(std, np.float64))
    out = np.clip(mean, lo, hi).astype(np.float64)
    live = std > 0
    m, s = mean[live], std[live]
    erf = np.vectorize(math.erf, otypes=[np.float64])

    def cdf(z):
        return 0.5 * (1.0 + erf(z / math.sqrt(2.0)))

    def pdf(z):
        return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    a = (lo - m) / s
    b = (hi - m) / s
    inside = m * (cdf(b) - cdf(a)) + s * (np.nan_to_num(pdf(a)) - np.nan_to_num(pdf(b)))
    low_tail = lo * cdf(a) if math.isfinite(lo) else 0.0
    high_tail = hi * (1.0 - cdf(b)) if math.isfinite(hi) else 0.0
    out[live] = low_tail + high_tail + inside
    return out


def activation_bounds(node: FloatNode) -> tuple[float, float]:
    if node.op == "Relu":
        return 0.0, math.inf
    return node.attrs.get("min", -math.inf), node.attrs.get("max", math.inf)


def _expected_through_activation(fg, node, stats, expect):
    source = fg.producer(node.inputs[0])
    if source is None or not is_mac(fg, source) or node.inputs[0] not in stats:
        return None
    return clipped_normal_mean(*stats[node.inputs[0]], *activation_bounds(node))


def _expected_sum(fg, node, stats, expect):
    parts = [expect(t) for t in node.inputs]
    return None if any(p is None for p in parts) else parts[0] + parts[1]


def _expected_flatten(fg, node, stats, expect):
    inner = expect(node.inputs[0])
    if inner is None:
        return None
    shape = fg.shapes[node.inputs[0]]
    return np.repeat(inner, math.prod(shape[2:])) if len(shape) > 2 else inner


def _expected_spatial_mean(fg, node, stats, expect):
    keeps_channels = 1 not in node.attrs.get("axes", ()) and node.attrs.get("keepdims", 1) in (1, True)
    return expect(node.inputs[0]) if node.op == "AveragePool" or keeps_channels else None


# How E[x] per channel passes through each op (analytic bias correction); an op not listed ends it.
_EXPECTATION = {
    "Relu": _expected_through_activation,
    "Clip": _expected_through_activation,
    "Add": _expected_sum,
    "Flatten": _expected_flatten,
    "ReduceMean": _expected_spatial_mean,
    "AveragePool": _expected_spatial_mean,
}


def expected_inputs(fg: FloatGraph, stats: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """``E[x]`` per channel of every layer input that the pre-activation statistics determine (§3.3):
    a layer output is ``beta``, a ReLU / Clip of one the clipped normal mean, a sum adds, average pools
    and flatten keep it."""
    cache: dict[str, np.ndarray | None] = {}

    def expect(tensor):
        if tensor not in cache:
            node = fg.producer(tensor)
            if node is None:
                cache[tensor] = None
            elif is_mac(fg, node):
                cache[tensor] = stats[tensor][0] if tensor in stats else None
            else:
                rule = _EXPECTATION.get(node.op)
                cache[tensor] = None if rule is None else rule(fg, node, stats, expect)
        return cache[tensor]

    found = {n.inputs[0]: expect(n.inputs[0]) for n in mac_nodes(fg)}
    return {t: v for t, v in found.items() if v is not None}


def analytic_bias_correction(fg: FloatGraph, weights: Mapping[str, tuple],
                             stats: Mapping[str, tuple]) -> tuple[FloatGraph, list[str]]:
    """Analytic bias correction (white paper §3.3), without data.

    ``E[x]`` of a layer's input comes from the batch-norm statistics of the
    layer before it (:func:`expected_inputs`); the bias loses ``(W~ - W) E[x]``.
    A layer whose input expectation is unknown (the first layer, inputs from
    ops :data:`_EXPECTATION` does not list) is left as it is.

    Returns the new graph and the names of the corrected layers.
    """
    fg = copy_graph(fg)
    expectations = expected_inputs(fg, stats)
    corrected = []
    for node in mac_nodes(fg):
        if node.name not in weights or node.inputs[0] not in expectations:
            continue
        error = _weight_error(fg, node, weights[node.name])
        shift = response_to_constant(node, error, expectations[node.inputs[0]])
        set_constant(fg, node, 2, layer_bias(fg, node) - shift, "bias_corrected")
        corrected.append(node.name)
    return fg, corrected
