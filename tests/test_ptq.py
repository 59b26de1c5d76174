"""The PTQ algorithms of the white paper §3.2-3.5 (intsim.ptq) on small graphs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import intsim
from intsim.cli import main
from intsim.errors import ValidationError
from intsim.floatgraph.execute import run_float, run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.models import model_path
from intsim.ptq.adaround import AdaRoundOptions, LayerProblem, adaround, adaround_layer
from intsim.ptq.cle import Pair, absorb_biases, cross_layer_equalization, equalization_pairs
from intsim.ptq.bias_correction import (
    WeightFormat,
    analytic_bias_correction,
    clipped_normal_mean,
    dequantize_weight,
    empirical_bias_correction,
)
from intsim.ptq.statistics import channel_maxima, preactivation_statistics
from intsim.profiles import get_profile
from intsim.ptq import statistics as ptq_statistics
from intsim.ptq.statistics import Stepper

CONV = {"strides": [1, 1], "dilations": [1, 1], "pads": [1, 1, 1, 1]}


def _conv(name, x, w, b, y, group=1, pads=(1, 1, 1, 1)):
    return FloatNode("Conv", name, [x, w, b], [y], dict(CONV, group=group, pads=list(pads)))


def _graph(nodes, constants, input_shape, outputs):
    return FloatGraph("toy", nodes, ["x"], outputs, {k: np.asarray(v, np.float32) for k, v in constants.items()},
                      {"x": (None, *input_shape)})


def _lopsided(rng, shape, axis):
    """Random weights whose channels along ``axis`` differ in scale by up to 1000x."""
    scale = np.exp(rng.uniform(-3.5, 3.5, shape[axis])).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return rng.normal(size=shape) * scale


def _mobile_block(rng, activation="Relu"):
    """conv 3x3 (3 -> 8) -> act -> depthwise 3x3 (8) -> act -> conv 1x1 (8 -> 4): the paper's CLE triplet."""
    acts = {"Relu": {}, "Clip": {"min": 0.0, "max": 6.0}}
    nodes = [
        _conv("c1", "x", "w1", "b1", "y1"), FloatNode(activation, "a1", ["y1"], ["z1"], acts[activation]),
        _conv("dw", "z1", "w2", "b2", "y2", group=8), FloatNode(activation, "a2", ["y2"], ["z2"], acts[activation]),
        _conv("c3", "z2", "w3", "b3", "y3", pads=(0, 0, 0, 0)),
    ]
    constants = {"w1": _lopsided(rng, (8, 3, 3, 3), 0), "b1": rng.normal(size=8),
                 "w2": _lopsided(rng, (8, 1, 3, 3), 0), "b2": rng.normal(size=8),
                 "w3": _lopsided(rng, (4, 8, 1, 1), 1), "b3": rng.normal(size=4)}
    return _graph(nodes, constants, (3, 6, 6), ["y3"])


def _dense_chain(rng):
    """gemm (6 -> 5) -> identity -> gemm (5 -> 3): one pair with no activation."""
    nodes = [FloatNode("Gemm", "g1", ["x", "w1", "b1"], ["h"]), FloatNode("Gemm", "g2", ["h", "w2", "b2"], ["y"])]
    constants = {"w1": _lopsided(rng, (5, 6), 0), "b1": rng.normal(size=5), "w2": _lopsided(rng, (3, 5), 1),
                 "b2": rng.normal(size=3)}
    return _graph(nodes, constants, (6,), ["y"])


def _ranges(fg, pair):
    nodes = {n.name: n for n in fg.nodes}
    w1 = np.abs(fg.constants[nodes[pair.first].inputs[1]].astype(np.float64))
    w2 = np.abs(fg.constants[nodes[pair.second].inputs[1]].astype(np.float64))
    r1 = w1.reshape(w1.shape[0], -1).max(axis=1)
    r2 = w2.reshape(w2.shape[0], -1).max(axis=1) if nodes[pair.second].attrs.get("group", 1) > 1 \
        else np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1).max(axis=1)
    return r1, r2


# --------------------------------------------------------------------------
# Cross-layer equalization.
# --------------------------------------------------------------------------


def test_cle_finds_the_triplet_and_the_dense_pair():
    rng = np.random.default_rng(0)
    assert equalization_pairs(_mobile_block(rng)) == [Pair("c1", "a1", "dw"), Pair("dw", "a2", "c3")]
    assert equalization_pairs(_dense_chain(rng)) == [Pair("g1", None, "g2")]


@pytest.mark.parametrize("build", [_mobile_block, _dense_chain])
def test_cle_keeps_the_function_and_equalises_the_ranges(build):
    rng = np.random.default_rng(1)
    fg = build(rng)
    x = rng.normal(size=(4, *fg.shapes["x"][1:])).astype(np.float32)
    before = run_float(fg, [x])[fg.outputs[0]]
    equalized, scales, pairs = cross_layer_equalization(fg)
    after = run_float(equalized, [x])[fg.outputs[0]]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    for pair in pairs:
        r1_old, r2_old = _ranges(fg, pair)
        r1, r2 = _ranges(equalized, pair)
        assert np.ptp(r1_old / r1_old.max()) > 0.5  # the test weights really were lopsided
        np.testing.assert_allclose(r1, r2, rtol=1e-5)
    if len(pairs) == 1:  # one pair: the closed form r1_i = r2_i = sqrt(r1_i r2_i) of the original ranges
        np.testing.assert_allclose(_ranges(equalized, pairs[0])[0], np.sqrt(np.prod(_ranges(fg, pairs[0]), axis=0)),
                                   rtol=1e-5)
    assert fg.constants["w1"] is not equalized.constants["w1"]  # the argument graph is left as it was


def test_cle_keeps_relu6_and_the_function_on_the_calibration_data():
    rng = np.random.default_rng(2)
    fg = _mobile_block(rng, "Clip")
    x = rng.normal(size=(16, 3, 6, 6)).astype(np.float32) * 0.6
    maxima = channel_maxima(fg, ["y1", "y2"], x, batch_size=4)
    assert np.any(maxima["y1"] >= 6) and np.any(maxima["y1"] < 6)  # some channels clip, some do not
    equalized, scales, _ = cross_layer_equalization(fg, clip_maxima=maxima)
    assert [n.op for n in equalized.nodes if n.name in ("a1", "a2")] == ["Clip", "Clip"]
    expected = run_float(fg, [x])["y3"]
    np.testing.assert_allclose(run_float(equalized, [x])["y3"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    for t in ("y1", "y2"):
        clipping = maxima[t] >= 6
        np.testing.assert_array_equal(scales[t][clipping], 1.0)
        assert np.all(maxima[t][~clipping] / scales[t][~clipping] <= 6 * (1 + 1e-12))
        assert np.any(np.abs(scales[t][~clipping] - 1) > 0.1)  # the others were equalized
    unscaled, no_scales, _ = cross_layer_equalization(fg)  # no maxima: a clipped pair is left as it is
    assert all(np.all(v == 1.0) for v in no_scales.values())


# --------------------------------------------------------------------------
# Bias absorption.
# --------------------------------------------------------------------------


def _relu_pair(rng):
    """gemm (4 -> 6) -> relu -> conv-free gemm (6 -> 3), first-layer biases far above zero."""
    nodes = [FloatNode("Gemm", "g1", ["x", "w1", "b1"], ["h"]), FloatNode("Relu", "r", ["h"], ["z"]),
             FloatNode("Gemm", "g2", ["z", "w2", "b2"], ["y"])]
    constants = {"w1": rng.normal(size=(6, 4)) * 0.3, "b1": rng.uniform(3, 5, 6), "w2": rng.normal(size=(3, 6)),
                 "b2": rng.normal(size=3)}
    return _graph(nodes, constants, (4,), ["y"])


def test_bias_absorption_keeps_the_function_where_relu_inputs_stay_above_c():
    rng = np.random.default_rng(3)
    fg = _relu_pair(rng)
    x = rng.uniform(-1, 1, size=(256, 4)).astype(np.float32)
    stats = preactivation_statistics(fg, {}, {}, x, batch_size=64)
    mean, std = stats["h"]
    c = np.maximum(0, mean - 3 * std)
    h = run_float(fg, [x])["h"]
    assert np.all(c > 0) and np.all(h >= c)  # the case the rule is exact for
    absorbed, new_stats, names = absorb_biases(fg, stats, [Pair("g1", "r", "g2")])
    assert list(names) == ["g1"]
    np.testing.assert_array_equal(names["g1"], c)
    np.testing.assert_allclose(absorbed.constants["b1"], fg.constants["b1"] - c, rtol=1e-6)
    np.testing.assert_allclose(new_stats["h"][0], mean - c)
    np.testing.assert_allclose(run_float(absorbed, [x])["y"], run_float(fg, [x])["y"], rtol=1e-5, atol=1e-5)


def test_bias_absorption_into_a_conv_adds_the_kernel_sum():
    rng = np.random.default_rng(4)
    nodes = [_conv("c1", "x", "w1", "b1", "y1", pads=(0, 0, 0, 0)), FloatNode("Relu", "r", ["y1"], ["z"]),
             _conv("c2", "z", "w2", "b2", "y2", pads=(0, 0, 0, 0))]
    fg = _graph(nodes, {"w1": rng.normal(size=(4, 2, 1, 1)) * 0.2, "b1": rng.uniform(2, 3, 4),
                        "w2": rng.normal(size=(3, 4, 3, 3)), "b2": np.zeros(3)}, (2, 5, 5), ["y2"])
    c = np.array([1.0, 0.5, 0.0, 2.0])
    stats = {"y1": (c + 3.0, np.ones(4))}
    absorbed, _, _ = absorb_biases(fg, stats, [Pair("c1", "r", "c2")])
    np.testing.assert_allclose(absorbed.constants["b2"], fg.constants["w2"].astype(np.float64).sum(axis=(2, 3)) @ c,
                               rtol=1e-6)
    x = rng.uniform(-1, 1, size=(2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run_float(absorbed, [x])["y2"], run_float(fg, [x])["y2"], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Bias correction.
# --------------------------------------------------------------------------


def _quantized(fg, bits=3):
    fmt = WeightFormat.of(get_profile("paper").replace(weight_bits=bits, per_channel=False))
    return {n.name: fmt.quantize(fg.constants[n.inputs[1]], "minmax") for n in fg.nodes if n.op in ("Conv", "Gemm")}


def _mean_preactivation_error(fg, corrected, weights, x):
    """Per layer of ``weights`` and output channel: mean over ``x`` of the pre-activation of the weight-quantized
    model (every layer of ``weights`` quantized, ``corrected``'s biases) minus the float model's; and the float
    pre-activation's mean magnitude."""
    constants = dict(corrected.constants)
    for node in corrected.nodes:
        if node.name in weights:
            constants[node.inputs[1]] = dequantize_weight(*weights[node.name]).astype(np.float32)
    quantized = FloatGraph(fg.name, corrected.nodes, fg.inputs, fg.outputs, constants, corrected.shapes)
    values, values_quantized = run_float(fg, [x]), run_float(quantized, [x])
    errors = {}
    for node in fg.nodes:
        if node.name in weights:
            y = values[node.outputs[0]].astype(np.float64)
            error = values_quantized[node.outputs[0]].astype(np.float64) - y
            axes = tuple(a for a in range(y.ndim) if a != 1)
            errors[node.name] = (error.mean(axis=axes), np.abs(y).mean())
    return errors


def test_empirical_bias_correction_zeroes_the_mean_preactivation_error_of_the_quantized_model():
    """§3.3: layer by layer, the quantized model (earlier layers quantized and corrected) against the float model;
    a correction measured on the float model's layer inputs leaves an error in the layers after the first."""
    rng = np.random.default_rng(5)
    fg = _mobile_block(rng)
    x = rng.uniform(0, 1, size=(64, 3, 6, 6)).astype(np.float32)
    weights = _quantized(fg)
    before = _mean_preactivation_error(fg, fg, weights, x)
    after = _mean_preactivation_error(fg, empirical_bias_correction(fg, weights, x, batch_size=16), weights, x)
    assert list(after) == ["c1", "dw", "c3"]
    for name, (error, size) in after.items():
        assert np.max(np.abs(before[name][0])) > 1e-2 * size  # 3-bit weights leave a real bias
        np.testing.assert_allclose(error, 0.0, atol=1e-5 * size)


def test_clipped_normal_mean_matches_sampling_and_the_relu_closed_form():
    rng = np.random.default_rng(6)
    mean, std = np.array([-1.0, 0.3, 2.0, 5.5]), np.array([1.0, 2.0, 0.5, 1.5])
    z = rng.normal(mean, std, size=(400_000, 4))
    np.testing.assert_allclose(clipped_normal_mean(mean, std, 0.0, 6.0), np.clip(z, 0, 6).mean(axis=0), atol=0.01)
    phi = np.exp(-0.5 * (mean / std) ** 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.array([math.erf(m / s / math.sqrt(2)) for m, s in zip(mean, std)]))
    np.testing.assert_allclose(clipped_normal_mean(mean, std, 0.0, math.inf), mean * cdf + std * phi, rtol=1e-12)
    np.testing.assert_array_equal(clipped_normal_mean(mean, 0 * std, 0.0, 6.0), np.clip(mean, 0, 6))


def test_analytic_bias_correction_matches_empirical_on_a_gaussian_toy():
    """Gaussian inputs make the first layer's pre-activation exactly normal, with mean b1 and std ||W1_i||,
    the statistics a batch norm would hold; the analytic correction of the layer after the ReLU must
    match the empirical one measured on many samples."""
    rng = np.random.default_rng(7)
    fg = _relu_pair(rng)
    fg.constants["b1"] = rng.normal(size=6).astype(np.float32)
    w1 = fg.constants["w1"].astype(np.float64)
    gamma, beta = np.linalg.norm(w1, axis=1), fg.constants["b1"].astype(np.float64)
    stats = preactivation_statistics(fg, {"h": (gamma, beta)}, {}, None, batch_size=1)
    np.testing.assert_array_equal(stats["h"][0], beta)
    weights = {"g2": _quantized(fg)["g2"]}
    analytic, corrected = analytic_bias_correction(fg, weights, stats)
    assert corrected == ["g2"]
    x = rng.normal(size=(200_000, 4)).astype(np.float32)
    empirical = empirical_bias_correction(fg, weights, x, batch_size=50_000)
    shift_analytic = fg.constants["b2"] - analytic.constants["b2"]
    shift_empirical = fg.constants["b2"] - empirical.constants["b2"]
    assert np.max(np.abs(shift_empirical)) > 0.05
    np.testing.assert_allclose(shift_analytic, shift_empirical, atol=0.01 * np.max(np.abs(shift_empirical)))


# --------------------------------------------------------------------------
# AdaRound.
# --------------------------------------------------------------------------


def _problem(rng, groups=1, outputs=4, inputs=12, rows=1024, bits=3, clamp=(-math.inf, math.inf)):
    x = rng.normal(size=(groups, rows, inputs)) + 0.5  # correlated inputs with a mean: nearest is not optimal
    x[..., 1::2] = x[..., ::2] * 0.8 + 0.2 * x[..., 1::2]
    w = rng.normal(size=(groups, outputs, inputs))
    b = rng.normal(size=(groups, outputs))
    target = np.clip(np.matmul(x, w.transpose(0, 2, 1)) + b[:, None], *clamp)
    scale = np.abs(w).max(axis=2) / (2 ** (bits - 1) - 1)
    return LayerProblem(x, target, w, b, scale, np.zeros_like(scale), -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1,
                        clamp)


def _objective(problem, codes):
    w = codes * problem.scale[..., None]
    y = np.clip(np.matmul(problem.inputs, w.transpose(0, 2, 1)) + problem.bias[:, None], *problem.clamp)
    return np.sum((y - problem.targets) ** 2) / problem.inputs.shape[1]


@pytest.mark.parametrize("groups, clamp", [(1, (-math.inf, math.inf)), (3, (0.0, math.inf)), (1, (0.0, 6.0))])
def test_adaround_beats_nearest_on_its_layer_objective(groups, clamp):
    rng = np.random.default_rng(8)
    problem = _problem(rng, groups=groups, clamp=clamp)
    codes, info = adaround_layer(problem, AdaRoundOptions(iterations=400, learning_rate=0.02, batch_size=128))
    nearest = np.clip(np.rint(problem.weight / problem.scale[..., None]), problem.qmin, problem.qmax)
    assert np.all(codes == np.rint(codes)) and codes.min() >= problem.qmin and codes.max() <= problem.qmax
    assert np.all(np.abs(codes - problem.weight / problem.scale[..., None]) < 1)  # rounds up or down, nothing else
    assert _objective(problem, codes) <= _objective(problem, nearest)
    assert info["kept"] == "adaround" and info["flipped"] > 0
    assert math.isclose(info["objective_nearest"], _objective(problem, nearest), rel_tol=1e-9)
    assert _objective(problem, codes) < 0.9 * _objective(problem, nearest)


@pytest.mark.parametrize("groups, outputs, clamp", [(1, 4, (-math.inf, math.inf)), (3, 4, (0.0, math.inf)),
                                                     (6, 1, (0.0, 6.0))])
def test_adaround_step_gradient_matches_its_float64_twin(groups, outputs, clamp):
    """The float32 minibatch gradient of each Adam step (gathered rows, preallocated buffers) against the plain
    float64 formula, on rows drawn with repeats."""
    from intsim.ptq.adaround import Reconstruction

    rng = np.random.default_rng(11)
    problem = _problem(rng, groups=groups, outputs=outputs, clamp=clamp)
    weight = problem.weight + rng.normal(scale=0.1, size=problem.weight.shape)
    fast = Reconstruction(problem, batch_size=64)
    for _ in range(3):
        rows = rng.integers(0, problem.inputs.shape[1], size=64)
        expected = problem.gradient(weight, rows)
        assert np.max(np.abs(expected)) > 0.1
        np.testing.assert_allclose(fast.gradient(weight.astype(np.float32), rows), expected, rtol=1e-4,
                                   atol=1e-5 * np.max(np.abs(expected)))


@pytest.mark.parametrize("channels, outputs, group, kernel, stride, dilation, pads", [
    (8, 8, 8, 3, 1, 1, [1, 1, 1, 1]), (6, 4, 2, 3, 2, 1, [0, 1, 2, 1]), (4, 5, 1, 2, 1, 2, [1, 0, 0, 1]),
    (16, 32, 1, 1, 1, 1, [0, 0, 0, 0])])
def test_adaround_patch_rows_times_the_weights_are_the_conv_outputs(channels, outputs, group, kernel, stride,
                                                                    dilation, pads):
    """The im2col rows AdaRound samples (only the picked output positions) against the float conv."""
    from intsim.ptq.adaround import output_rows, patch_rows

    rng = np.random.default_rng(12)
    node = FloatNode("Conv", "c", ["x", "w"], ["y"], {"group": group, "strides": [stride] * 2,
                                                      "dilations": [dilation] * 2, "pads": pads})
    w = rng.normal(size=(outputs, channels // group, kernel, kernel)).astype(np.float32)
    x = rng.normal(size=(3, channels, 7, 6)).astype(np.float32)
    y = output_rows(run_node(node, [x, w])[0], group)
    pick = rng.choice(y.shape[1], size=min(25, y.shape[1]), replace=False)
    rows = patch_rows(node, x, w, pick)
    assert rows.shape == (group, len(pick), (channels // group) * kernel * kernel)
    grouped = w.astype(np.float64).reshape(group, outputs // group, -1)
    mine = np.matmul(rows.astype(np.float64), grouped.transpose(0, 2, 1))
    np.testing.assert_allclose(mine, y[:, pick], rtol=1e-5, atol=1e-5)


def test_adaround_keeps_nearest_when_it_cannot_improve():
    rng = np.random.default_rng(9)
    problem = _problem(rng)
    nearest = np.clip(np.rint(problem.weight / problem.scale[..., None]), problem.qmin, problem.qmax)
    problem.targets = np.matmul(problem.inputs, (nearest * problem.scale[..., None]).transpose(0, 2, 1)) \
        + problem.bias[:, None]  # nearest is exact: objective 0
    codes, info = adaround_layer(problem, AdaRoundOptions(iterations=50, learning_rate=0.05))
    assert info["objective_nearest"] == 0.0
    np.testing.assert_array_equal(codes, nearest, strict=True)


def test_adaround_on_a_graph_reads_the_quantized_prefix_and_draws_progress(monkeypatch, capsys):
    rng = np.random.default_rng(10)
    fg = _mobile_block(rng)
    x = rng.uniform(0, 1, size=(40, 3, 6, 6)).astype(np.float32)
    weights = _quantized(fg, bits=4)
    fmt = WeightFormat.of(get_profile("paper").replace(weight_bits=4, per_channel=False))
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    options = AdaRoundOptions(iterations=60, learning_rate=0.02, max_rows=40 * 36)  # every row
    learned, info = adaround(fg, weights, fmt.codes, x, 16, options)
    assert "adaround 3/3 [" in capsys.readouterr().err
    assert list(info) == ["c1", "dw", "c3"]
    for name, (codes, scale, zero_point) in learned.items():
        assert codes.dtype == weights[name][0].dtype and codes.shape == weights[name][0].shape
        assert scale is weights[name][1]
    # Layer c3's objective, recomputed here: its input from c1 and dw with their learned weights.
    quantized = {k: dequantize_weight(*v).astype(np.float32) for k, v in learned.items()}
    prefix = FloatGraph(fg.name, fg.nodes, fg.inputs, fg.outputs,
                        {**fg.constants, "w1": quantized["c1"], "w2": quantized["dw"]}, fg.shapes)
    z2 = run_float(prefix, [x])["z2"].astype(np.float64)
    c3 = fg.nodes[-1]
    target = run_float(fg, [x])["y3"].astype(np.float64)
    mine = run_node(c3, [z2.astype(np.float32), quantized["c3"], fg.constants["b3"]])[0].astype(np.float64)
    objective = np.mean(np.sum((mine - target) ** 2, axis=1))
    assert math.isclose(objective, info["c3"]["objective_" + info["c3"]["kept"]], rel_tol=1e-5)


def test_walk_beyond_its_memory_budget_keeps_tensors_on_disk_with_the_same_values(monkeypatch):
    rng = np.random.default_rng(11)
    fg = _mobile_block(rng)
    x = rng.uniform(0, 1, size=(24, 3, 6, 6)).astype(np.float32)
    in_ram, on_disk = Stepper(fg, x, 8, memory_budget=1 << 30), Stepper(fg, x, 8, memory_budget=0)
    for stop in (2, 4, len(fg.nodes)):
        for kept, spilled in zip(in_ram.run_to(stop), on_disk.run_to(stop)):
            assert kept.keys() == spilled.keys()
            for name in kept:
                assert isinstance(spilled[name], np.memmap) and not isinstance(kept[name], np.memmap)
                np.testing.assert_array_equal(np.asarray(spilled[name]), kept[name], strict=True)
    assert on_disk.in_ram == 0 and in_ram.in_ram == sum(v.nbytes for b in in_ram.values for v in b.values())
    # AdaRound learns the same codes whether its walks stay in RAM or spill to disk.
    weights = _quantized(fg, bits=4)
    fmt = WeightFormat.of(get_profile("paper").replace(weight_bits=4, per_channel=False))
    options = AdaRoundOptions(iterations=30, learning_rate=0.02)
    learned, _ = adaround(fg, weights, fmt.codes, x, 8, options)
    monkeypatch.setattr(ptq_statistics, "WALK_MEMORY_BYTES", 0)
    spilled, _ = adaround(fg, weights, fmt.codes, x, 8, options)
    for name in learned:
        np.testing.assert_array_equal(spilled[name][0], learned[name][0], strict=True)


# --------------------------------------------------------------------------
# Through convert, on the integer datapath.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from intsim.datasets import load_dataset

    x_train, _ = load_dataset("digits", "train")
    x_test, y_test = load_dataset("digits", "test")
    return x_train[:128], x_test, y_test


def test_convert_emits_the_adarounded_codes(digits):
    calibration, x_test, _ = digits
    options = AdaRoundOptions(iterations=30, max_rows=256)
    model = intsim.convert(model_path("resnet_digits.onnx"), calibration=calibration, weight_bits=4,
                           adaround=options, progress=False)
    layers = model.graph.metadata["ptq"]["adaround_layers"]
    assert len(layers) == 10 and all(v["objective_adaround"] <= v["objective_nearest"] or v["kept"] == "nearest"
                                    for v in layers.values())
    nearest = intsim.convert(model_path("resnet_digits.onnx"), calibration=calibration, weight_bits=4, progress=False)
    changed = [n.name for n, m in zip(model.graph.nodes, nearest.graph.nodes)
               if "weight" in n.params and not np.array_equal(n.params["weight"], m.params["weight"])]
    assert sorted(changed) == sorted(k for k, v in layers.items() if v["kept"] == "adaround")


def test_standard_pipeline_w4a8_on_the_integer_datapath(digits):
    calibration, x_test, y_test = digits
    model = intsim.convert(model_path("mobilenet_digits.onnx"), calibration=calibration, weight_bits=4,
                           pipeline="standard", adaround=AdaRoundOptions(iterations=300, learning_rate=1e-2),
                           progress=False)
    meta = model.graph.metadata
    assert meta["ptq"]["cle_pairs"] == 10 and meta["ptq"]["bias_absorbed"] == 0  # all ten pairs have a ReLU6
    assert meta["calibration"]["weight_range_method"] == "mse"
    assert meta["calibration"]["logits_range_method"] == "cross_entropy"
    accuracy = float(np.mean(model.run(x_test).argmax(axis=1) == y_test))
    assert accuracy >= 0.9778 - 0.02  # float: 97.78%


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_compare_measures_equalized_tensors_in_the_rewritten_units(name, digits):
    """The report's float reference is the original model; on tensors CLE and bias absorption rescaled it is
    mapped into the rewritten model's units, so per-layer SQNR stays that of quantization alone."""
    calibration, x_test, _ = digits
    path = model_path(f"{name}.onnx")
    plain = intsim.compare(path, intsim.convert(path, calibration=calibration, progress=False), x_test[:64])
    model = intsim.convert(path, calibration=calibration, cle=True, progress=False)
    rescaled = model.graph.metadata["ptq"]["rescaled"]
    equalized = intsim.compare(path, model, x_test[:64])
    assert len(rescaled) == {"resnet_digits": 3, "mobilenet_digits": 10}[name]
    assert any("offset" in e for e in rescaled.values()) == (name == "resnet_digits")
    before = {r.tensor: r.sqnr_int for r in plain.layers}
    for row in equalized.layers:
        if row.tensor in rescaled:
            assert row.sqnr_int > before[row.tensor] - 6.0, (row.tensor, row.sqnr_int, before[row.tensor])


def test_cli_convert_takes_the_ptq_options(tmp_path, digits):
    np.save(tmp_path / "cal.npy", digits[0][:32])
    out = tmp_path / "m.intsim"
    assert main(["convert", str(model_path("mobilenet_digits.onnx")), "--calibration", str(tmp_path / "cal.npy"),
                 "-o", str(out), "--per-tensor", "--cle", "--bias-correction", "empirical",
                 "--adaround-iterations", "5"]) == 0
    ptq = intsim.load(out).graph.metadata["ptq"]
    assert ptq["cle"] and ptq["bias_correction"] == "empirical" and ptq["adaround"]
    assert main(["convert", str(model_path("mobilenet_digits.onnx")), "--calibration", str(tmp_path / "cal.npy"),
                 "-o", str(out), "--adaround-iterations", "0"]) == 2


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"bias_correction": "exact"}, "bias_correction must be one of empirical, analytic"),
    ({"pipeline": "fancy"}, "pipeline must be one of standard"),
    ({"cle": "yes"}, "cle must be True or False"),
    ({"adaround": "yes"}, "adaround must be True, False or an AdaRoundOptions"),
])
def test_convert_rejects_bad_ptq_options(kwargs, message, digits):
    with pytest.raises(ValidationError, match=message):
        intsim.convert(model_path("resnet_digits.onnx"), calibration=digits[0][:8], progress=False, **kwargs)


@pytest.mark.parametrize("kwargs", [{"adaround": True}, {"bias_correction": "empirical"}])
def test_data_free_convert_refuses_what_needs_data(kwargs):
    with pytest.raises(ValidationError, match="need calibration data"):
        intsim.convert(model_path("resnet_digits.onnx"), input_range=(0.0, 1.0), **kwargs)


@pytest.mark.parametrize("field, value, message", [
    ("iterations", 0, "iterations must be an integer >= 1"),
    ("batch_size", 2.5, "batch_size must be an integer >= 1"),
    ("reg_weight", -1.0, "reg_weight must be a finite number >= 0"),
    ("warm_up", 1.0, "warm_up must be a fraction"),
    ("learning_rate", 0.0, "need learning_rate > 0"),
    ("beta_end", 0.5, "beta_end >= 1"),
])
def test_adaround_options_are_checked(field, value, message):
    with pytest.raises(ValidationError, match=message):
        AdaRoundOptions(**{field: value}).checked()


def test_data_free_standard_pipeline_uses_the_batch_norm_statistics(batch_norm_net):
    path, x, y = batch_norm_net
    model = intsim.convert(path, input_range=(0.0, 1.0), pipeline="standard", weight_bits=6)
    ptq = model.graph.metadata["ptq"]
    # conv -> ReLU -> conv is one pair; with no data, only the batch norms can give its beta and gamma, and the
    # E[x] of the second conv (after BN 1 and ReLU) and of the classifier (after BN 2, ReLU, pool, flatten).
    assert (ptq["cle_pairs"], ptq["bias_absorbed"], ptq["bias_correction"], ptq["bias_corrected"]) == \
        (1, 1, "analytic", 2)
    assert not ptq["adaround"]
    expected = y[:128].argmax(axis=1)
    assert np.mean(model.run(x[:128]).argmax(axis=1) == expected) >= 0.9
