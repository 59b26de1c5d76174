"""The white paper's post-training quantization algorithms (§3.2-3.5), on the float graph.

All of them rewrite the float side before the converter lowers it, so every
accuracy they buy is measured on the bit-exact integer datapath:

* :func:`cross_layer_equalization` (§3.2): rescale each pair of layers joined by
  ReLU / ReLU6 / identity so that output channel ``i`` of the first and input
  channel ``i`` of the second have the same weight range ``sqrt(r1_i r2_i)``;
  chains through depthwise convs (conv -> depthwise -> conv) are pairs that share
  a layer, swept until the scales converge.
* :func:`absorb_biases` (§3.2): move ``c = max(0, beta - 3 gamma)`` of each
  ReLU's input into the next layer's bias.
* :func:`empirical_bias_correction` and :func:`analytic_bias_correction` (§3.3):
  subtract the expected output error of the quantized weights: measured
  layer by layer against the float model (``E[W~x~] - E[Wx]``, earlier layers
  quantized and corrected), or ``(W~ - W) E[x]`` from batch-norm statistics.
* :func:`adaround` (§3.4): learn, layer by layer, whether each weight rounds up
  or down.
* :func:`apply_ptq` runs them in the order of the standard pipeline (§3.5).

ReLU6 is not positively homogeneous: ``min(relu(x / s), 6) != min(relu(x), 6) / s``.
The data-free quantization paper that §3.2 follows replaces it by a ReLU; that
changes what the model computes wherever the clip acts, and on EfficientNet-Lite0
it drops float top-1 agreement to 24%.  Here the Clip(0, hi) stays, and its
channels are scaled only where that changes nothing on the calibration data:
a channel whose pre-activation reaches ``hi`` keeps ``s_i = 1``; any other
channel, with calibration maximum ``m_i < hi``, takes ``s_i >= m_i / hi`` so that
its scaled values stay below the clip (:func:`cross_layer_equalization`).
Without data the maximum is ``beta + 6 gamma`` of the batch norm, if any, else
the pair's channels are not scaled.

Batch-norm statistics: ``beta`` and ``gamma`` of a batch norm are the mean and
standard deviation of the pre-activation it feeds.  Models whose exporter folded
the batch norms (every shipped model) have none; there the per-channel mean and
standard deviation of the pre-activation measured on the calibration data stand
in for them (:func:`preactivation_statistics`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from intsim.progress import Progress, progress_enabled
from intsim.converter.calibration import code_range, quantize_weights
from intsim.errors import ValidationError
from intsim.floatgraph.execute import run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.passes import _copy, _fresh

MAC_OPS = ("Conv", "Gemm")
BIAS_CORRECTION_METHODS = ("empirical", "analytic")
# Rectified sigmoid stretch (AdaRound, Nagel et al. 2020): h = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1).
ZETA, GAMMA = 1.1, -0.1
# Bytes of live tensors one model's walk over the calibration data (:class:`_Stepper`) keeps in RAM;
# tensors beyond it are kept in unlinked temporary files mapped from disk.
WALK_MEMORY_BYTES = 512 << 20


# --------------------------------------------------------------------------
# Layers and their weights.
# --------------------------------------------------------------------------


def _is_mac(fg: FloatGraph, node: FloatNode) -> bool:
    return node.op in MAC_OPS and all(t in fg.constants for t in node.inputs[1:])


def _is_depthwise(node: FloatNode, weight: np.ndarray) -> bool:
    return node.op == "Conv" and node.attrs["group"] == weight.shape[0] and weight.shape[1] == 1


def _equalizable(node: FloatNode, weight: np.ndarray) -> bool:
    """Input channel i of the layer meets output channel i of the one before: a dense layer or a depthwise conv."""
    return node.op == "Gemm" or node.attrs["group"] == 1 or _is_depthwise(node, weight)


def _homogeneous_activation(node: FloatNode) -> bool:
    """ReLU, or Clip(0, max): scaled only where the clip does not act (module docstring)."""
    return node.op == "Relu" or (node.op == "Clip" and node.attrs.get("min", -math.inf) == 0.0)


def _input_channel_ranges(node: FloatNode, weight: np.ndarray) -> np.ndarray:
    """``max |W|`` over everything that reads input channel i (a depthwise conv: its channel i)."""
    w = np.abs(weight.astype(np.float64))
    if _is_depthwise(node, weight):
        return w.reshape(w.shape[0], -1).max(axis=1)
    return w.max(axis=tuple(a for a in range(w.ndim) if a != 1))


def _output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    return np.abs(weight.astype(np.float64)).reshape(weight.shape[0], -1).max(axis=1)


def _scale_input_channels(node: FloatNode, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    axis = 0 if _is_depthwise(node, weight) else 1
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight * factor.reshape(shape)


def _response_to_constant(node: FloatNode, weight: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per output channel, what the layer (without bias) adds for an input holding ``value[i]`` on channel i
    everywhere (zero padding ignored, as the white paper does)."""
    w = weight.astype(np.float64)
    if node.op == "Gemm":
        return w @ value
    group = node.attrs["group"]
    m, cg = w.shape[:2]
    per_group = w.sum(axis=(2, 3)).reshape(group, m // group, cg)
    return np.einsum("gmc,gc->gm", per_group, value.reshape(group, cg)).reshape(m)


def _bias(fg: FloatGraph, node: FloatNode) -> np.ndarray:
    m = fg.constants[node.inputs[1]].shape[0]
    return fg.constants[node.inputs[2]].astype(np.float64) if len(node.inputs) > 2 else np.zeros(m)


def _set_constant(fg: FloatGraph, node: FloatNode, index: int, value: np.ndarray, role: str) -> None:
    """Give ``node`` input ``index`` the float32 ``value``: in place under its name when no other node reads
    it (so reports that look weights up by name find the new ones), under a fresh name otherwise."""
    value = np.asarray(value, np.float32)
    name = node.inputs[index] if index < len(node.inputs) else None
    if name is None or sum(name in n.inputs for n in fg.nodes) > 1:
        name = _fresh(fg, f"{node.name}/{role}")
        if index < len(node.inputs):
            node.inputs[index] = name
        else:
            node.inputs.append(name)
    fg.constants[name] = value
    fg.shapes[name] = value.shape


def mac_nodes(fg: FloatGraph) -> list[FloatNode]:
    """The Conv and Gemm nodes with constant weights, in graph order: the layers PTQ works on."""
    return [n for n in fg.nodes if _is_mac(fg, n)]


# --------------------------------------------------------------------------
# Cross-layer equalization and bias absorption (white paper §3.2).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two layers joined by an activation (or none): ``second`` reads only what ``first`` computes."""

    first: str
    activation: str | None
    second: str


def equalization_pairs(fg: FloatGraph) -> list[Pair]:
    """The layer pairs cross-layer equalization rescales (white paper §3.2).

    ``first`` is a Conv (dense or depthwise) or Gemm whose output, after at
    most a ReLU or a Clip(0, max), feeds ``second`` alone and is no graph
    output; ``second`` is a dense or depthwise Conv or a Gemm.  A depthwise
    conv can be ``second`` of one pair and ``first`` of the next (the paper's
    conv -> depthwise -> conv triplet).
    """
    consumers: dict[str, list[FloatNode]] = {}
    for node in fg.nodes:
        for t in node.inputs:
            consumers.setdefault(t, []).append(node)
    pairs = []
    for first in mac_nodes(fg):
        if not _equalizable(first, fg.constants[first.inputs[1]]):
            continue
        tensor, activation = first.outputs[0], None
        users = consumers.get(tensor, [])
        if len(users) == 1 and tensor not in fg.outputs and users[0].op in ("Relu", "Clip"):
            if not _homogeneous_activation(users[0]):
                continue
            activation = users[0]
            tensor = activation.outputs[0]
            users = consumers.get(tensor, [])
        if len(users) != 1 or tensor in fg.outputs or first.outputs[0] in fg.outputs:
            continue
        second = users[0]
        if not (_is_mac(fg, second) and second.inputs[0] == tensor and second.op == first.op
                and _equalizable(second, fg.constants[second.inputs[1]])):
            continue
        pairs.append(Pair(first.name, activation.name if activation else None, second.name))
    return pairs


def _clips(nodes: Mapping[str, FloatNode], pair: Pair) -> bool:
    """The pair's activation has an upper clip (a ReLU6)."""
    return pair.activation is not None and math.isfinite(_activation_bounds(nodes[pair.activation])[1])


def cross_layer_equalization(fg: FloatGraph, *, clip_maxima: Mapping[str, np.ndarray] | None = None,
                             tolerance: float = 1e-8,
                             max_sweeps: int = 1000) -> tuple[FloatGraph, dict[str, np.ndarray], list[Pair]]:
    """Cross-layer equalization (CLE, white paper §3.2).

    For each pair ``W1 -> f -> W2`` (:func:`equalization_pairs`) with ``f``
    positively homogeneous, ``W1[i] /= s_i``, ``b1[i] /= s_i`` and ``W2[:, i]
    *= s_i`` with ``s_i = sqrt(r1_i / r2_i)``, where ``r1_i = max |W1[i]|`` and
    ``r2_i = max |W2[:, i]|``: both ranges become ``sqrt(r1_i r2_i)``, the
    paper's optimum.  Pairs that share a layer (conv -> depthwise -> conv) are
    swept until every scale of a sweep is within ``tolerance`` of 1.

    A Clip(0, hi) inside a pair stays; ``clip_maxima`` gives the per-channel
    maximum of its input (the first layer's output, before equalization):
    channels that reach ``hi`` are not scaled, the others only so far that
    their maximum stays below ``hi`` (module docstring).  Pairs with a clip
    and no maxima are not scaled.

    Returns
    -------
    graph : FloatGraph
        A new graph.
    scales : dict
        ``{first layer's output tensor: S}``: its channel i now holds the
        original's divided by ``S_i`` (the product over all sweeps).
    pairs : list of Pair
    """
    fg = _copy(fg)
    nodes = {n.name: n for n in fg.nodes}
    pairs = equalization_pairs(fg)
    weights = {name: fg.constants[nodes[name].inputs[1]].astype(np.float64)
               for p in pairs for name in (p.first, p.second)}
    biases = {name: _bias(fg, nodes[name]) for name in weights}
    scales = {p.first: np.ones(weights[p.first].shape[0]) for p in pairs}
    clip_maxima = clip_maxima or {}
    for _ in range(max_sweeps):
        largest = 0.0
        for p in pairs:
            second = nodes[p.second]
            r1 = _output_channel_ranges(weights[p.first])
            r2 = _input_channel_ranges(second, weights[p.second])
            live = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[live] = np.sqrt(r1[live] / r2[live])
            if _clips(nodes, p):
                hi = _activation_bounds(nodes[p.activation])[1]
                maximum = clip_maxima.get(nodes[p.first].outputs[0])
                if maximum is None:
                    s[:] = 1.0
                else:
                    s = np.where(maximum >= hi, 1.0, np.maximum(s, maximum / scales[p.first] / hi))
            weights[p.first] = weights[p.first] / s.reshape((-1,) + (1,) * (weights[p.first].ndim - 1))
            biases[p.first] = biases[p.first] / s
            weights[p.second] = _scale_input_channels(second, weights[p.second], s)
            scales[p.first] = scales[p.first] * s
            largest = max(largest, float(np.max(np.abs(s - 1.0))))
        if largest <= tolerance:
            break
    for name, weight in weights.items():
        _set_constant(fg, nodes[name], 1, weight, "weight_equalized")
        _set_constant(fg, nodes[name], 2, biases[name], "bias_equalized")
    return fg, {nodes[p.first].outputs[0]: scales[p.first] for p in pairs}, pairs


def absorb_biases(fg: FloatGraph, stats: Mapping[str, tuple[np.ndarray, np.ndarray]], pairs: list[Pair],
                  n_sigma: float = 3.0) -> tuple[FloatGraph, dict, dict[str, np.ndarray]]:
    """Bias absorption (white paper §3.2).

    For each pair ``W1 -> ReLU -> W2`` (a ReLU6 is left alone: ``c`` would move
    its clip per channel) whose pre-activation has per-channel
    mean ``beta`` and standard deviation ``gamma`` in ``stats``, ``c =
    max(0, beta - n_sigma gamma)`` leaves layer 1's bias and enters layer 2's:
    ``b1 -= c``, ``b2 += W2 c``.  Exact wherever the ReLU input is at least
    ``c`` and, for a padded conv, away from the border (its padding adds zeros,
    not ``c``).

    Returns
    -------
    graph : FloatGraph
        A new graph.
    stats : dict
        ``stats`` with each absorbed pre-activation mean lowered by ``c``.
    absorbed : dict
        ``{first layer of a pair: c}`` for the pairs that moved a bias.
    """
    fg = _copy(fg)
    stats = dict(stats)
    absorbed = {}
    nodes = {n.name: n for n in fg.nodes}
    for p in pairs:
        first, second = nodes[p.first], nodes[p.second]
        tensor = first.outputs[0]
        if p.activation is None or _clips(nodes, p) or tensor not in stats:
            continue
        mean, std = stats[tensor]
        c = np.maximum(0.0, mean - n_sigma * std)
        w2 = fg.constants[second.inputs[1]]
        _set_constant(fg, first, 2, _bias(fg, first) - c, "bias_absorbed")
        _set_constant(fg, second, 2, _bias(fg, second) + _response_to_constant(second, w2, c), "bias_absorbed")
        stats[tensor] = (mean - c, std)
        absorbed[p.first] = c
    return fg, stats, absorbed


# --------------------------------------------------------------------------
# Statistics of the calibration data.
# --------------------------------------------------------------------------


def _run_until(fg: FloatGraph, batch: np.ndarray, wanted) -> dict[str, np.ndarray]:
    """Run the float graph only as far as it takes to compute every tensor in ``wanted``."""
    values = {fg.inputs[0]: np.asarray(batch, np.float32)}
    missing = set(wanted) - set(values)
    for node in fg.nodes:
        if not missing:
            break
        args = [values[t] if t in values else fg.constants[t] for t in node.inputs]
        values.update(zip(node.outputs, run_node(node, args)))
        missing -= set(node.outputs)
    return values


def _batches(data: np.ndarray, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield np.asarray(data[start : start + batch_size])


class _Stepper:
    """Runs a float graph over the calibration batches node by node, on demand.

    Per batch it keeps only the tensors that nodes not yet run still read (and
    the graph outputs), so walking the graph once costs one forward pass
    however many layers stop along the way.  Memory: the live tensors of the
    whole calibration set at the current node, of which at most
    ``memory_budget`` bytes stay in RAM; the rest are written to temporary
    files and mapped back (``np.memmap``), so RAM stays bounded however large
    the calibration set.  A node runs with the constants the graph holds when
    the walk reaches it.
    """

    def __init__(self, fg: FloatGraph, data: np.ndarray, batch_size: int, memory_budget: int | None = None):
        self.fg, self.done = fg, 0
        self.last_read = {t: i for i, n in enumerate(fg.nodes) for t in n.inputs}
        self.budget = WALK_MEMORY_BYTES if memory_budget is None else memory_budget
        self.in_ram = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._names = itertools.count()
        self.values = [{fg.inputs[0]: self._keep(np.asarray(b, np.float32))} for b in _batches(data, batch_size)]

    def _keep(self, value: np.ndarray) -> np.ndarray:
        if isinstance(value, np.memmap):
            return value
        if self.in_ram + value.nbytes <= self.budget:
            self.in_ram += value.nbytes
            return value
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="intsim-walk-")
        path = os.path.join(self._dir.name, f"{next(self._names)}.npy")
        kept = np.lib.format.open_memmap(path, mode="w+", dtype=value.dtype, shape=value.shape)
        kept[...] = value
        with contextlib.suppress(OSError):  # the mapping outlives the name; where unlinking fails, the directory goes
            os.unlink(path)
        return kept

    def _drop(self, value: np.ndarray) -> None:
        if not isinstance(value, np.memmap):
            self.in_ram -= value.nbytes

    def run_to(self, stop: int) -> list[dict[str, np.ndarray]]:
        """Run nodes ``done .. stop - 1``; returns the per-batch live tensors."""
        for i in range(self.done, stop):
            node = self.fg.nodes[i]
            dead = [t for t in node.inputs if self.last_read.get(t) == i and t not in self.fg.outputs]
            for values in self.values:
                args = [values[t] if t in values else self.fg.constants[t] for t in node.inputs]
                values.update((t, self._keep(v)) for t, v in zip(node.outputs, run_node(node, args)))
                for t in dead:
                    if t in values:
                        self._drop(values.pop(t))
        self.done = max(self.done, stop)
        return self.values


def _channel_axes(value: np.ndarray) -> tuple[int, ...]:
    return tuple(a for a in range(value.ndim) if a != 1)


def channel_maxima(fg: FloatGraph, tensors, data: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) maximum of each tensor over the calibration data, streamed."""
    maxima: dict[str, np.ndarray] = {}
    for batch in _batches(data, batch_size):
        values = _run_until(fg, batch, tensors)
        for t in tensors:
            found = values[t].max(axis=_channel_axes(values[t])).astype(np.float64)
            maxima[t] = np.maximum(maxima[t], found) if t in maxima else found
    return maxima


def preactivation_statistics(fg: FloatGraph, batch_norms: Mapping[str, tuple], scales: Mapping[str, np.ndarray],
                             data: np.ndarray | None, batch_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and standard deviation of every layer's output (its pre-activation).

    From the batch norm that produced it where the model had one (``beta``,
    ``|gamma|``, divided by the CLE scales ``scales``), else measured on
    ``data`` (streamed), else absent.
    """
    stats = {}
    for node in mac_nodes(fg):
        t = node.outputs[0]
        if t in batch_norms:
            gamma, beta = (np.asarray(v, np.float64) for v in batch_norms[t])
            s = scales.get(t, 1.0)
            stats[t] = (beta / s, np.abs(gamma) / s)
    measure = [n.outputs[0] for n in mac_nodes(fg) if n.outputs[0] not in stats]
    if data is None or not measure:
        return stats
    sums = {t: 0.0 for t in measure}
    squares = {t: 0.0 for t in measure}
    counts = {t: 0 for t in measure}
    for batch in _batches(data, batch_size):
        values = _run_until(fg, batch, measure)
        for t in measure:
            v = values[t].astype(np.float64)
            axes = _channel_axes(v)
            sums[t] = sums[t] + v.sum(axis=axes)
            squares[t] = squares[t] + (v * v).sum(axis=axes)
            counts[t] += v.size // v.shape[1]
    for t in measure:
        mean = sums[t] / counts[t]
        stats[t] = (mean, np.sqrt(np.maximum(squares[t] / counts[t] - mean * mean, 0.0)))
    return stats


# --------------------------------------------------------------------------
# Weight quantization, bias correction (white paper §3.3).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFormat:
    """The profile's weight quantizer, as :func:`intsim.calibration.quantize_weights` takes it."""

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
    return out.mean(axis=_channel_axes(out)) if out.ndim > 2 else out[0]


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
    (:class:`_Stepper`).  Returns a new graph: float weights, corrected
    biases.
    """
    floats = _Stepper(fg, data, batch_size)
    fg, quantized_fg = _copy(fg), _copy(fg)
    for node in mac_nodes(quantized_fg):
        if node.name in weights:
            _set_constant(quantized_fg, node, 1, dequantize_weight(*weights[node.name]), "weight_quantized")
    quantized = _Stepper(quantized_fg, data, batch_size)
    count = sum(len(values[fg.inputs[0]]) for values in floats.values)
    for i, node in enumerate(fg.nodes):
        if not (_is_mac(fg, node) and node.name in weights):
            continue
        mean_float, mean_quantized = (
            (sum(values[node.inputs[0]].astype(np.float64).sum(axis=0) for values in stepper.run_to(i)) / count)[None]
            for stepper in (floats, quantized))
        linear = replace(node, inputs=node.inputs[:2])
        # W~ E[x~] - W E[x] = (W~ - W) E[x~] + W (E[x~] - E[x]): two small terms, each accurate in float32.
        shift = (_channel_means(run_node(linear, [mean_quantized, _weight_error(fg, node, weights[node.name])])[0])
                 + _channel_means(run_node(linear, [mean_quantized - mean_float, fg.constants[node.inputs[1]]])[0]))
        corrected = _bias(fg, node) - shift
        _set_constant(fg, node, 2, corrected, "bias_corrected")
        _set_constant(quantized_fg, quantized_fg.nodes[i], 2, corrected, "bias_corrected")
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


def _activation_bounds(node: FloatNode) -> tuple[float, float]:
    if node.op == "Relu":
        return 0.0, math.inf
    return node.attrs.get("min", -math.inf), node.attrs.get("max", math.inf)


def _expected_through_activation(fg, node, stats, expect):
    source = fg.producer(node.inputs[0])
    if source is None or not _is_mac(fg, source) or node.inputs[0] not in stats:
        return None
    return clipped_normal_mean(*stats[node.inputs[0]], *_activation_bounds(node))


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
            elif _is_mac(fg, node):
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
    fg = _copy(fg)
    expectations = expected_inputs(fg, stats)
    corrected = []
    for node in mac_nodes(fg):
        if node.name not in weights or node.inputs[0] not in expectations:
            continue
        error = _weight_error(fg, node, weights[node.name])
        shift = _response_to_constant(node, error, expectations[node.inputs[0]])
        _set_constant(fg, node, 2, _bias(fg, node) - shift, "bias_corrected")
        corrected.append(node.name)
    return fg, corrected


# --------------------------------------------------------------------------
# AdaRound (white paper §3.4).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaRoundOptions:
    """AdaRound settings; the defaults are the white paper's (§3.4) and the AdaRound paper's.

    Attributes
    ----------
    iterations : int
        Adam steps per layer (10,000).
    batch_size : int
        Rows (one output position of one image: its input patch and its
        float output) per step.
    reg_weight : float
        ``lambda``, the weight of the rounding regulariser (0.01).
    beta_start, beta_end : float
        The regulariser's exponent, annealed linearly from 20 to 2 after
        ``warm_up``.
    warm_up : float
        Fraction of the iterations without the regulariser (0.2).
    learning_rate : float
        Adam's step size (1e-3).
    max_rows : int
        Rows kept per layer, sampled evenly from the calibration batches:
        what bounds the layer's problem in memory (besides it, the two
        models' live tensors on the calibration set, :func:`adaround`).
    seed : int
    """

    iterations: int = 10_000
    batch_size: int = 256
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_up: float = 0.2
    learning_rate: float = 1e-3
    max_rows: int = 4096
    seed: int = 0

    def checked(self) -> "AdaRoundOptions":
        where = "AdaRoundOptions"
        for name in ("iterations", "batch_size", "max_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValidationError(f"{where}: {name} must be an integer >= 1, found {value!r}")
        for name in ("reg_weight", "beta_start", "beta_end", "learning_rate"):
            value = getattr(self, name)
            real = not isinstance(value, bool) and isinstance(value, (int, float))
            if not (real and math.isfinite(value) and value >= 0):
                raise ValidationError(f"{where}: {name} must be a finite number >= 0, found {value!r}")
        if not (isinstance(self.warm_up, (int, float)) and 0.0 <= self.warm_up < 1.0):
            raise ValidationError(f"{where}: warm_up must be a fraction in [0, 1), found {self.warm_up!r}")
        if self.learning_rate == 0 or self.beta_end < 1:
            raise ValidationError(f"{where}: need learning_rate > 0 and beta_end >= 1, found "
                                  f"learning_rate={self.learning_rate}, beta_end={self.beta_end}")
        return self


@dataclass
class LayerProblem:
    """One layer's AdaRound problem, grouped: ``G`` groups (1 for dense layers, C for depthwise convs) of
    ``Mg`` outputs reading ``K`` inputs each.

    ``inputs[g, n, :]`` is row n's quantized-model input patch of group g (float32: the Adam steps
    run in float32, the objectives in float64),
    ``targets[g, n, :]`` the float model's output there (after the layer's
    activation ``clamp``); ``weight``, ``bias``, ``scale`` and ``zero_point``
    are ``[G, Mg, K]``, ``[G, Mg]``, and ``[G, Mg]`` (broadcast per tensor).
    """

    inputs: np.ndarray
    targets: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    clamp: tuple[float, float] = (-math.inf, math.inf)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return (codes - self.zero_point[..., None]) * self.scale[..., None]

    def reconstruction(self, weight: np.ndarray, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(clamp(W x~ + b) - target, d clamp / d z)`` on ``rows``, both ``[G, n, Mg]``."""
        x = self.inputs[:, rows]
        z = np.matmul(x, weight.transpose(0, 2, 1)) + self.bias[:, None, :]
        lo, hi = self.clamp
        return np.clip(z, lo, hi) - self.targets[:, rows], ((z > lo) & (z < hi)).astype(np.float64)

    def gradient(self, weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``d/dW~`` of ``mean_rows ||clamp(W~ x~ + b) - target||^2`` on ``rows`` (indices), ``[G, Mg, K]``, in
        float64: the plain form of what :class:`_Reconstruction` computes in each Adam step, its test twin."""
        residual, slope = self.reconstruction(weight, rows)
        dz = 2.0 * residual * slope / len(rows)
        return np.matmul(dz.transpose(0, 2, 1), self.inputs[:, rows].astype(np.float64))

    def objective(self, codes: np.ndarray) -> float:
        """The layer objective: mean over rows of ``|| clamp(W~ x~ + b) - clamp(W x + b) ||^2``."""
        residual, _ = self.reconstruction(self.dequantize(codes))
        return float(np.sum(residual**2) / self.inputs.shape[1])


def _rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V)`` and ``dh/dV``, in ``v``'s dtype."""
    sig = 1.0 / (1.0 + np.exp(-v))
    stretched = sig * (ZETA - GAMMA) + GAMMA
    inside = (stretched > 0) & (stretched < 1)
    return np.clip(stretched, 0.0, 1.0), sig * (1.0 - sig) * (ZETA - GAMMA) * inside


class _Reconstruction:
    """The gradient of one layer's reconstruction term on row minibatches (AdaRound, white paper §3.4).

    The rows (input patches, im2col'd once per layer by :func:`_layer_problem`)
    and targets are float32 copies made once; each step gathers its minibatch
    by index into buffers allocated once, then runs one float32 matmul per
    group forward (``z = W~ x + b``) and one backward (``dz^T x``).
    :meth:`LayerProblem.gradient` is its float64 twin.
    """

    def __init__(self, problem: LayerProblem, batch_size: int):
        p = problem
        # Row-major copies: a minibatch gathers whole rows, [G * K] contiguous floats each.
        self.inputs = np.ascontiguousarray(p.inputs.transpose(1, 0, 2), np.float32)
        self.targets = np.ascontiguousarray(p.targets.transpose(1, 0, 2), np.float32)
        self.bias = np.asarray(p.bias, np.float32)[:, None, :]
        self.lo, self.hi = p.clamp
        rows, groups, k = self.inputs.shape
        batch = min(batch_size, rows)
        self.x = np.empty((batch, groups, k), np.float32)
        self.target = np.empty((batch, groups, p.weight.shape[1]), np.float32)
        self.z = np.empty((groups, batch, p.weight.shape[1]), np.float32)
        self.dz = np.empty_like(self.z)
        self.grad = np.empty(p.weight.shape, np.float32)

    def gradient(self, weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``d/dW~`` of ``mean_rows ||clamp(W~ x + b) - target||^2`` for the float32 ``weight`` ``[G, Mg, K]``;
        ``rows`` holds valid row indices (the result is a buffer the next call overwrites)."""
        np.take(self.inputs, rows, axis=0, out=self.x, mode="clip")
        np.take(self.targets, rows, axis=0, out=self.target, mode="clip")
        x = self.x.transpose(1, 0, 2)
        np.matmul(x, weight.transpose(0, 2, 1), out=self.z)
        self.z += self.bias
        # Where the clamp passes z, clamp(z) - target = z - target; elsewhere the slope is 0.
        np.subtract(self.z, self.target.transpose(1, 0, 2), out=self.dz)
        self.dz *= 2.0 / len(rows)
        if self.lo > -math.inf:
            self.dz *= self.z > self.lo
        if self.hi < math.inf:
            self.dz *= self.z < self.hi
        return np.matmul(self.dz.transpose(0, 2, 1), x, out=self.grad)


def adaround_layer(problem: LayerProblem, options: AdaRoundOptions = AdaRoundOptions(), *,
                   progress=None) -> tuple[np.ndarray, dict]:
    """Learn the rounding of one layer (AdaRound, white paper §3.4).

    Minimises ``mean_rows ||clamp(W~ x~ + b) - target||^2 + lambda sum(1 -
    |2 h(V) - 1|^beta)`` over ``V`` with Adam, where ``W~ = s (clip(floor(W / s)
    + h(V) + z, qmin, qmax) - z)`` and ``h`` is the rectified sigmoid; ``V``
    starts where ``h(V)`` is the fractional part of ``W / s``, ``beta`` anneals
    from ``beta_start`` to ``beta_end`` after a warm-up without the
    regulariser.  Each Adam step (float32) sees ``batch_size`` rows drawn
    with replacement.  The result rounds up where ``h(V) >= 1/2``.  If its
    objective on all rows (float64) is not below round-to-nearest's, nearest
    is returned.

    Returns
    -------
    codes : float64 array ``[G, Mg, K]``
        Integer-valued codes in ``[qmin, qmax]``.
    info : dict
        ``objective_nearest``, ``objective_adaround``, ``flipped`` (weights
        rounded otherwise than nearest) and ``kept`` ("adaround"/"nearest").
    """
    p, o = problem, options
    scale = p.scale[..., None]
    zero_point = p.zero_point[..., None]
    ratio = p.weight / scale
    base = np.floor(ratio)
    rest = np.clip(ratio - base, 1e-4, 1 - 1e-4)
    sig = (rest - GAMMA) / (ZETA - GAMMA)
    v = np.log(sig / (1.0 - sig)).astype(np.float32)
    # W~ = s (clip(base + h + z, qmin, qmax) - z) = s base + s clip(h, h_low, h_high): the grid ends at h_low, h_high.
    h_low, h_high = (np.asarray(q - zero_point - base, np.float32) for q in (p.qmin, p.qmax))
    scale32 = np.broadcast_to(scale, v.shape).astype(np.float32)
    floor_weight = (scale * base).astype(np.float32)
    first, second = np.zeros_like(v), np.zeros_like(v)
    reconstruction = _Reconstruction(p, o.batch_size)
    rng = np.random.default_rng(o.seed)
    rows = p.inputs.shape[1]
    warm = int(o.warm_up * o.iterations)
    for step in range(1, o.iterations + 1):
        h, dh_dv = _rectified_sigmoid(v)
        weight = floor_weight + scale32 * np.clip(h, h_low, h_high)
        batch = rng.integers(0, rows, size=min(o.batch_size, rows))
        grad = reconstruction.gradient(weight, batch) * scale32
        grad *= (h >= h_low) & (h <= h_high)
        if step > warm:
            beta = o.beta_end + (o.beta_start - o.beta_end) * max(0.0, 1.0 - (step - warm) / (o.iterations - warm))
            centred = 2.0 * h - 1.0
            grad -= o.reg_weight * 2.0 * beta * np.abs(centred) ** (beta - 1) * np.sign(centred)
        grad *= dh_dv
        first *= 0.9
        first += 0.1 * grad
        second *= 0.999
        second += 0.001 * grad * grad
        v -= (o.learning_rate / (1 - 0.9**step)) * first / (np.sqrt(second / (1 - 0.999**step)) + 1e-8)
        if progress is not None:
            progress.update(step)
    nearest = np.clip(np.rint(ratio) + zero_point, p.qmin, p.qmax)
    learned = np.clip(base + (v >= 0) + zero_point, p.qmin, p.qmax)
    info = {"objective_nearest": p.objective(nearest), "objective_adaround": p.objective(learned),
            "flipped": int(np.sum(nearest != learned))}
    info["kept"] = "adaround" if info["objective_adaround"] < info["objective_nearest"] else "nearest"
    return (learned if info["kept"] == "adaround" else nearest), info


def _groups(node: FloatNode, weight: np.ndarray) -> int:
    return node.attrs["group"] if node.op == "Conv" else 1


def _patch_rows(node: FloatNode, x: np.ndarray, weight: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """Rows ``pick`` (indices over ``N * positions``, image-major) of the layer's input as ``[G, len(pick), K]``:
    for a conv, the im2col patches of those output positions only (zero padding)."""
    if node.op == "Gemm":
        return x[pick][None]
    groups = _groups(node, weight)
    kh, kw = weight.shape[2:]
    (sh, sw), (dh, dw) = node.attrs["strides"], node.attrs["dilations"]
    top, left, bottom, right = node.attrs["pads"]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    image, position = np.divmod(pick, oh * ow)
    y0, x0 = np.divmod(position, ow)
    # [P, C, kh * kw]: the advanced indices around the channel slice put the picked rows first.
    patches = np.stack([padded[image, :, y0 * sh + i * dh, x0 * sw + j * dw] for i in range(kh) for j in range(kw)],
                       axis=-1)
    return patches.reshape(len(pick), groups, -1).transpose(1, 0, 2)


def _output_rows(y: np.ndarray, groups: int) -> np.ndarray:
    """The layer's output as rows ``[G, N * positions, Mg]``."""
    if y.ndim == 2:
        return y.astype(np.float64)[None]
    n, m = y.shape[:2]
    rows = y.astype(np.float64).reshape(n, groups, m // groups, -1).transpose(1, 0, 3, 2)
    return rows.reshape(groups, -1, m // groups)


def _layer_problem(fg: FloatGraph, node: FloatNode, activation: FloatNode | None, quantizer: tuple,
                   qrange: tuple[int, int], inputs: list, outputs: list, options: AdaRoundOptions,
                   rng: np.random.Generator) -> LayerProblem:
    """Sample ``max_rows`` rows of the layer's problem, evenly over the calibration batches: per batch,
    ``inputs`` holds the quantized model's input of ``node``, ``outputs`` the float model's output of
    ``node`` (before ``activation``)."""
    weight = fg.constants[node.inputs[1]].astype(np.float64)
    groups = _groups(node, weight)
    total = sum(len(x) for x in inputs)
    patches, targets = [], []
    for x, y in zip(inputs, outputs):
        target = _output_rows(run_node(activation, [y])[0] if activation is not None else y, groups)
        take = min(target.shape[1], math.ceil(options.max_rows * len(x) / total))
        pick = rng.choice(target.shape[1], size=take, replace=False)
        patches.append(_patch_rows(node, x, weight, pick))
        targets.append(target[:, pick])
    _, scale, zero_point = quantizer
    m = weight.shape[0]
    shape = (groups, m // groups)
    return LayerProblem(
        np.concatenate(patches, axis=1).astype(np.float32), np.concatenate(targets, axis=1),
        weight.reshape(groups, m // groups, -1),
        _bias(fg, node).reshape(shape), np.broadcast_to(np.asarray(scale, np.float64), (m,)).reshape(shape),
        np.broadcast_to(np.asarray(zero_point, np.float64), (m,)).reshape(shape), *qrange,
        _activation_bounds(activation) if activation is not None else (-math.inf, math.inf))


def adaround(fg: FloatGraph, weights: Mapping[str, tuple], qrange: tuple[int, int], data: np.ndarray,
             batch_size: int, options: AdaRoundOptions = AdaRoundOptions(),
             progress: bool = True) -> tuple[dict[str, tuple], dict]:
    """AdaRound every layer of ``weights`` in graph order (white paper §3.4).

    Each layer's input comes from the model whose earlier layers already carry
    their learned quantized weights (activations in float), its target from the
    float model (asymmetric reconstruction, with the layer's ReLU / Clip in the
    objective).  Both models walk the calibration data once, node by node
    (:class:`_Stepper`), stopping at each layer; memory is what the walk keeps
    live plus ``max_rows`` rows of the current layer.

    Parameters
    ----------
    weights : dict
        ``{node name: (codes, scale, zero_point)}`` from the weight range
        setting; the grid (scale, zero point) is kept, the codes relearned.
    qrange : (int, int)
        The code range.

    Returns
    -------
    weights : dict
        The new ``{node name: (codes, scale, zero_point)}``.
    info : dict
        Per layer, :func:`adaround_layer`'s info.
    """
    options = options.checked()
    rng = np.random.default_rng(options.seed)
    quantized_fg = _copy(fg)
    floats, quantized = _Stepper(fg, data, batch_size), _Stepper(quantized_fg, data, batch_size)
    consumers = {t: [n for n in fg.nodes if t in n.inputs] for n in fg.nodes for t in n.outputs}
    position = {n.name: i for i, n in enumerate(fg.nodes)}
    layers = [n for n in mac_nodes(fg) if n.name in weights]
    result, info = dict(weights), {}
    enabled = progress_enabled(progress)
    for i, node in enumerate(layers):
        users = consumers.get(node.outputs[0], [])
        activation = users[0] if (len(users) == 1 and users[0].op in ("Relu", "Clip")
                                  and node.outputs[0] not in fg.outputs) else None
        inputs = [values[node.inputs[0]] for values in quantized.run_to(position[node.name])]
        outputs = [values[node.outputs[0]] for values in floats.run_to(position[node.name] + 1)]
        problem = _layer_problem(fg, node, activation, weights[node.name], qrange, inputs, outputs, options, rng)
        bar = Progress(options.iterations, enabled, f"adaround {i + 1}/{len(layers)}")
        codes, info[node.name] = adaround_layer(problem, options, progress=bar)
        nearest, scale, zero_point = weights[node.name]
        codes = codes.reshape(nearest.shape).astype(nearest.dtype)
        result[node.name] = (codes, scale, zero_point)
        qnode = quantized_fg.nodes[position[node.name]]
        _set_constant(quantized_fg, qnode, 1, dequantize_weight(codes, scale, zero_point), "weight_quantized")
    return result, info


# --------------------------------------------------------------------------
# The pipeline (white paper §3.5).
# --------------------------------------------------------------------------


def _standard_pipeline(has_data: bool) -> dict:
    """§3.5: CLE with bias absorption, MSE weight ranges, AdaRound with data or analytic bias correction
    without, MSE activation ranges and cross-entropy for the logits."""
    return {"cle": True, "weight_range_method": "mse", "adaround": has_data,
            "bias_correction": None if has_data else "analytic", "range_method": "mse",
            "logits_range_method": "cross_entropy"}


PIPELINES = {"standard": _standard_pipeline}


def resolve_settings(pipeline: str | None, has_data: bool, **given) -> dict:
    """The PTQ settings ``convert`` runs with: the ``pipeline`` preset, overridden by every ``given`` value that
    is not None; validated.  ``bias_correction="none"`` turns a preset's bias correction off."""
    if pipeline is not None and pipeline not in PIPELINES:
        raise ValidationError(f"pipeline must be one of {', '.join(PIPELINES)} or None, found {pipeline!r}")
    settings = {"cle": False, "adaround": False, "bias_correction": None, "range_method": "minmax",
                "logits_range_method": None, "weight_range_method": "minmax"}
    if pipeline is not None:
        settings.update(PIPELINES[pipeline](has_data))
    settings.update({k: v for k, v in given.items() if v is not None})
    if not isinstance(settings["cle"], (bool, np.bool_)):
        raise ValidationError(f"cle must be True or False, found {settings['cle']!r}")
    if settings["bias_correction"] == "none":
        settings["bias_correction"] = None
    if settings["bias_correction"] not in (None, *BIAS_CORRECTION_METHODS):
        raise ValidationError(f"bias_correction must be one of {', '.join(BIAS_CORRECTION_METHODS)}, 'none' or None, "
                              f"found {settings['bias_correction']!r}")
    adaround_setting = settings["adaround"]
    if isinstance(adaround_setting, (bool, np.bool_)):
        settings["adaround"] = AdaRoundOptions() if adaround_setting else None
    elif isinstance(adaround_setting, AdaRoundOptions):
        settings["adaround"] = adaround_setting.checked()
    else:
        raise ValidationError(f"adaround must be True, False or an AdaRoundOptions, found {adaround_setting!r}")
    if not has_data:
        needs = [k for k, on in (("adaround", settings["adaround"] is not None),
                                 ("bias_correction='empirical'", settings["bias_correction"] == "empirical")) if on]
        if needs:
            raise ValidationError(f"{' and '.join(needs)} need calibration data; convert got none "
                                  "(use bias_correction='analytic' for a data-free correction)")
    return settings


def _rescaled_tensors(fg: FloatGraph, pairs: list[Pair], scales: Mapping[str, np.ndarray],
                      absorbed: Mapping[str, np.ndarray]) -> dict:
    """``{tensor: {"scale": S, "offset": c}}`` for each quantized tensor that CLE and bias absorption changed:
    the rewritten model holds ``relu(x / S - c)`` where the original holds ``relu(x)`` (``x / S`` without an
    absorbed bias), so that reports compare like with like (:func:`intsim.report.compare`)."""
    nodes = {n.name: n for n in fg.nodes}
    rescaled = {}
    for p in pairs:
        tensor = nodes[p.activation if p.activation is not None else p.first].outputs[0]
        entry = {"scale": scales[nodes[p.first].outputs[0]].tolist()}
        if p.first in absorbed:
            entry["offset"] = absorbed[p.first].tolist()
        rescaled[tensor] = entry
    return rescaled


@dataclass
class PTQResult:
    """What :func:`apply_ptq` hands the converter.

    Attributes
    ----------
    graph : FloatGraph
        The rewritten float graph.
    weights : dict
        ``{node name: (codes, scale, zero_point)}``, codes in the ONNX weight
        layout: what the converter emits for those layers.
    batch_norms : dict
        The batch-norm statistics ``{tensor: (gamma, beta)}`` of the rewritten
        graph (CLE scales and absorbed biases applied), for data-free ranges.
    meta : dict
        What was done, for ``graph.metadata["ptq"]``.
    """

    graph: FloatGraph
    weights: dict
    batch_norms: dict
    meta: dict


def apply_ptq(fg: FloatGraph, batch_norms: Mapping[str, tuple], profile, data: np.ndarray | None, *, cle: bool,
              bias_correction: str | None, adaround_options: AdaRoundOptions | None, weight_range_method: str,
              batch_size: int, progress: bool = True) -> PTQResult:
    """Run the PTQ algorithms on a folded float graph, in the order of white paper §3.5.

    1. CLE and bias absorption (``cle``; absorption needs batch-norm statistics
       or data, :func:`preactivation_statistics`).
    2. Weight range setting (``weight_range_method``) with the profile's weight
       quantizer, for every Conv and Gemm.
    3. AdaRound (``adaround_options``), then bias correction
       (``bias_correction``) of whatever error the chosen codes leave.

    Activation ranges are set afterwards by the converter, on the returned graph.
    """
    meta: dict = {}
    scales: dict = {}
    pairs: list[Pair] = []
    if cle:
        nodes = {n.name: n for n in fg.nodes}
        clipped = [nodes[p.first].outputs[0] for p in equalization_pairs(fg) if _clips(nodes, p)]
        maxima = channel_maxima(fg, clipped, data, batch_size) if data is not None else {
            t: np.asarray(beta, np.float64) + 6.0 * np.abs(np.asarray(gamma, np.float64))
            for t, (gamma, beta) in batch_norms.items() if t in clipped}
        fg, scales, pairs = cross_layer_equalization(fg, clip_maxima=maxima)
        meta["cle_pairs"] = len(pairs)
    stats: dict = {}
    if cle or bias_correction == "analytic":
        stats = preactivation_statistics(fg, batch_norms, scales, data, batch_size)
    if cle:
        fg, stats, absorbed = absorb_biases(fg, stats, pairs)
        meta["bias_absorbed"] = len(absorbed)
        meta["rescaled"] = _rescaled_tensors(fg, pairs, scales, absorbed)
    fmt = WeightFormat.of(profile)
    weights = {n.name: fmt.quantize(fg.constants[n.inputs[1]], weight_range_method) for n in mac_nodes(fg)}
    if adaround_options is not None:
        weights, info = adaround(fg, weights, fmt.codes, data, batch_size, adaround_options, progress)
        meta["adaround_layers"] = info
    if bias_correction == "empirical":
        fg = empirical_bias_correction(fg, weights, data, batch_size)
        meta["bias_corrected"] = len(weights)
    elif bias_correction == "analytic":
        fg, corrected = analytic_bias_correction(fg, weights, stats)
        meta["bias_corrected"] = len(corrected)
    batch_norms = {t: (stats[t][1], stats[t][0]) if t in stats else v for t, v in batch_norms.items()}
    return PTQResult(fg, weights, batch_norms, meta)
