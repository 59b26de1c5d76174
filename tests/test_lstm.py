"""The integer LSTM and GRU: gemmlowp's int16 logistic / tanh, the kernels against their naive twins, the
``lstm`` op's checks, and ONNX LSTM / GRU graphs converted and run against onnxruntime's float ones.

Conformance with LiteRT's reference kernels is in ``tests/test_tflite.py`` (the ``lstm_*`` models of
``tests/data/tflite``, 0 mismatches).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim import Model
from intsim.converter.lower_recurrent import cell_shift
from intsim.errors import UnsupportedOpError, ValidationError
from intsim.fixedpoint import DOUBLE, SINGLE, quantize_multiplier
from intsim.fixedpoint_int16 import logistic_16, tanh_16
from intsim.graph import Graph, Node, TensorInfo
from intsim.kernels import gru_int8, lstm_int8, naive

ALL_INT16 = np.arange(-(2**15), 2**15)


@pytest.fixture(scope="module")
def activations():
    """logistic_16 and tanh_16 (3 and 4 integer bits) of every int16, computed once."""
    return {(name, bits): np.array([int(fn(int(v), bits)) for v in ALL_INT16])
            for name, fn in (("logistic", logistic_16), ("tanh", tanh_16)) for bits in (3, 4)}


@pytest.mark.parametrize("bits", [3, 4])
def test_activations_track_the_real_functions(activations, bits):
    """Within 2**-11 (16 LSBs of Q0.15) of the exact function at every int16 input; mirrored
    (``logistic(-x) = 32767 - logistic(x)``) and odd away from 0; not monotone (gemmlowp's is not)."""
    x = ALL_INT16 / 2.0 ** (15 - bits)
    logistic, tanh = activations[("logistic", bits)], activations[("tanh", bits)]
    assert np.abs(logistic - 2**15 / (1 + np.exp(-x))).max() <= 16
    assert np.abs(tanh - 2**15 * np.tanh(x)).max() <= 16
    mirrored = (ALL_INT16[1:] != 0)
    np.testing.assert_array_equal((logistic[1:] + logistic[1:][::-1])[mirrored], np.full(2**16 - 2, 2**15 - 1),
                                  strict=True)
    np.testing.assert_array_equal(tanh[1:], -tanh[1:][::-1], strict=True)


def test_activation_goldens():
    """Hand-checkable values: 0, the ends, and logistic(1) / tanh(1) in Q3.12."""
    assert (logistic_16(0, 3), tanh_16(0, 3)) == (2**14, 0)
    assert logistic_16(4096, 3) == 23952 and round(2**15 / (1 + math.exp(-1))) == 23955
    assert tanh_16(4096, 3) == 24964 and round(2**15 * math.tanh(1)) == 24956
    assert (logistic_16(-(2**15), 3), logistic_16(2**15 - 1, 3)) == (11, 32756)
    assert (tanh_16(-(2**15), 3), tanh_16(2**15 - 1, 3)) == (-(2**15 - 1), 2**15 - 1)


def _kernel_args(rng, steps=5, batch=2, features=3, cells=4, cifg=False, peephole=True, reverse=False, clip=0,
                 rounding=DOUBLE):
    def requant(n, lo, hi):
        m, s = quantize_multiplier(rng.uniform(lo, hi, n))
        return np.asarray(m, np.int32).reshape(n), np.asarray(s, np.int32).reshape(n)

    hidden_multiplier, hidden_shift = requant(1, 1e-8, 1e-6)
    return (rng.integers(-128, 128, (steps, batch, features), dtype=np.int8),
            rng.integers(-128, 128, (batch, cells), dtype=np.int8),
            rng.integers(-3000, 3000, (batch, cells), dtype=np.int16),
            rng.integers(-127, 128, (4, cells, features), dtype=np.int8),
            rng.integers(-127, 128, (4, cells, cells), dtype=np.int8),
            rng.integers(-5000, 5000, (4, cells), dtype=np.int32),
            rng.integers(-5000, 5000, (4, cells), dtype=np.int32),
            rng.integers(-30000, 30000, (3, cells), dtype=np.int16),
            *requant(4, 0.01, 2), *requant(4, 0.01, 2), *requant(3, 0.001, 0.5),
            int(hidden_multiplier[0]), int(hidden_shift[0]), int(rng.integers(-20, 20)), rounding, 31,
            int(rng.integers(-15, -8)), clip, cifg, peephole, reverse)


@pytest.mark.parametrize("case", range(12))
def test_kernel_matches_naive_twin(case):
    rng = np.random.default_rng(case)
    args = _kernel_args(rng, steps=int(rng.integers(1, 7)), batch=int(rng.integers(1, 3)),
                        features=int(rng.integers(1, 6)), cells=int(rng.integers(1, 6)), cifg=case % 2 == 1,
                        peephole=case % 3 != 0, reverse=case % 4 == 0, clip=int(rng.choice([0, 1500])),
                        rounding=(DOUBLE, SINGLE)[case % 5 == 0])
    fast, slow = lstm_int8(*args), naive.lstm_int8(*args)
    np.testing.assert_array_equal(fast[0], slow[0], strict=True)
    np.testing.assert_array_equal(fast[1], slow[1], strict=True)
    assert fast[2] == slow[2]


@pytest.mark.parametrize("case", range(8))
def test_gru_kernel_matches_naive_twin(case):
    rng = np.random.default_rng(100 + case)
    steps, batch, features, hidden = (int(v) for v in rng.integers(1, 6, 4))
    multipliers = [np.asarray(v, np.int32).reshape(n) for lo, hi, n in ((0.01, 2, 3), (0.01, 2, 3), (1e-8, 1e-6, 1))
                   for v in quantize_multiplier(rng.uniform(lo, hi, n))]
    args = (rng.integers(-128, 128, (steps, batch, features), dtype=np.int8),
            rng.integers(-128, 128, (batch, hidden), dtype=np.int8),
            rng.integers(-127, 128, (3, hidden, features), dtype=np.int8),
            rng.integers(-127, 128, (3, hidden, hidden), dtype=np.int8),
            rng.integers(-5000, 5000, (3, hidden), dtype=np.int32),
            rng.integers(-5000, 5000, (3, hidden), dtype=np.int32),
            *multipliers[:4], int(multipliers[4][0]), int(multipliers[5][0]), int(rng.integers(-20, 20)),
            (DOUBLE, SINGLE)[case % 3 == 0], 31, case % 2 == 0, case % 4 == 1)
    fast, slow = gru_int8(*args), naive.gru_int8(*args)
    np.testing.assert_array_equal(fast[0], slow[0], strict=True)
    assert fast[1] == slow[1]


def test_kernel_saturates_and_counts():
    """Huge multipliers drive every gate and the hidden output into their clamps: counted, same in both."""
    rng = np.random.default_rng(7)
    args = list(_kernel_args(rng))
    args[8] = args[10] = np.full(4, 2**30, np.int32)
    args[9] = args[11] = np.full(4, 20, np.int32)
    y, cells, saturated = lstm_int8(*args)
    assert saturated > 0 and saturated == naive.lstm_int8(*args)[2]
    assert set(np.unique(y)) <= {-128, 127, *range(-128, 128)}


def _lstm_graph(cell_shift_value=-11, outputs=1):
    cells, features = 3, 2
    params = {"weight_input": np.ones((4, cells, features), np.int8), "weight_recurrent": np.ones((4, cells, cells),
                                                                                                   np.int8),
              "bias_input": np.zeros((4, cells), np.int32), "bias_recurrent": np.zeros((4, cells), np.int32)}
    for prefix, n in (("input_", 4), ("recurrent_", 4), ("hidden_", 1)):
        params[f"{prefix}multiplier"] = np.full(n, 2**30, np.int32)
        params[f"{prefix}shift"] = np.full(n, -3, np.int32)
    tensors = [TensorInfo("x", "int8", (4, None, features), 0.1, 0), TensorInfo("y", "int8", (4, None, cells), 0.01, 0),
               TensorInfo("c", "int16", (4, None, cells), 2.0**-11, 0)]
    node = Node("lstm", "lstm", ["x"], ["y", "c"][:outputs],
                {"cell_shift": cell_shift_value, "hidden_zero_point": 0, "cifg": False, "reverse": False}, params)
    return Graph("lstm", "tflite", tensors, [node], ["x"], ["y", "c"][:outputs])


def test_op_runs_and_checks():
    graph = _lstm_graph(outputs=2)
    x = np.random.default_rng(0).integers(-128, 128, (4, 3, 2), dtype=np.int8)
    fast, slow = Model(graph).run_int(x), Model(graph, backend="naive").run_int(x)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b, strict=True)
    with pytest.raises(ValidationError, match=r"cell_shift must be in \[-15, -9\], found -8"):
        _lstm_graph(cell_shift_value=-8)


def test_cell_shift_covers_the_range():
    """32767 * 2**k must reach the magnitude: 1.0 needs 2**-14 (32767 * 2**-15 < 1)."""
    assert cell_shift(0.9) == -15 and cell_shift(1.0) == -14 and cell_shift(1.5) == -14 and cell_shift(2.0) == -13
    assert cell_shift(1000.0) == -9 and cell_shift(0.0) == -15


# --------------------------------------------------------------------------
# ONNX LSTM graphs (batch-first input, as torch exports them) against onnxruntime.
# --------------------------------------------------------------------------

STEPS, FEATURES, HIDDEN = 7, 5, 8


def _onnx_lstm(direction="forward", peephole=False, states=False, activations=None, seed=0, op="LSTM", **attrs):
    """An ONNX LSTM (or GRU) between batch-first transposes; outputs ``y [N, T, D*H]``, ``Y_h`` (and ``Y_c``)."""
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    h = HIDDEN
    gates = 4 if op == "LSTM" else 3
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (d, gates * h, FEATURES)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.4, (d, gates * h, h)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.3, (d, 2 * gates * h)).astype(np.float32), "B"),
             numpy_helper.from_array(np.array([0, STEPS, d * h], np.int64), "shape")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", STEPS, FEATURES])]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    lstm_inputs = ["xt", "W", "R", "B", "", "", ""]
    if states:
        lstm_inputs[5:7] = ["h0", "c0"] if op == "LSTM" else ["h0", ""]
        for name in ("h", "c") if op == "LSTM" else ("h",):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [d, 1, h]))
            nodes.append(helper.make_node("Identity", [name], [f"{name}0"]))
    if peephole:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (d, 3 * h)).astype(np.float32), "P"))
        lstm_inputs.append("P")
    while not lstm_inputs[-1]:
        lstm_inputs.pop()
    extra = {"activations": activations, **attrs} if activations else attrs
    state_outputs = ["Y_h", "Y_c"] if op == "LSTM" else ["Y_h"]
    nodes += [helper.make_node(op, lstm_inputs, ["Y", *state_outputs], hidden_size=h, direction=direction, **extra),
              helper.make_node("Transpose", ["Y"], ["Yt"], perm=[2, 0, 1, 3]),
              helper.make_node("Reshape", ["Yt", "shape"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", STEPS, d * h])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [d, "N", h]) for name in state_outputs]
    model = helper.make_model(helper.make_graph(nodes, "lstm", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _feeds(rng, count, direction, states, op="LSTM"):
    d = 2 if direction == "bidirectional" else 1
    feeds = {"x": rng.normal(0, 1, (count, STEPS, FEATURES)).astype(np.float32)}
    if states:  # [directions, batch, hidden]: samples along axis 0 does not hold; batch them per call
        feeds["h"] = rng.normal(0, 0.3, (d, count, HIDDEN)).astype(np.float32)
        if op == "LSTM":
            feeds["c"] = rng.normal(0, 1.0, (d, count, HIDDEN)).astype(np.float32)
    return feeds


def _sqnr(reference, value):
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - value) ** 2))


def _convert(model, calibration, profile="paper", batch_size=32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the float LSTM has no ONNX form: numpy executor
        return intsim.convert(model, calibration, profile, progress=False, batch_size=batch_size)


@pytest.mark.parametrize("direction, peephole, states", [("forward", False, False), ("reverse", True, False),
                                                         ("bidirectional", False, False)])
def test_onnx_lstm_against_onnxruntime(direction, peephole, states):
    ort = pytest.importorskip("onnxruntime")
    model = _onnx_lstm(direction, peephole, states)
    rng = np.random.default_rng(1)
    integer = _convert(model, _feeds(rng, 64, direction, states)["x"])
    test = _feeds(rng, 16, direction, states)
    reference = ort.InferenceSession(model.SerializeToString()).run(None, test)
    outputs = integer.run(test["x"])
    for ref, got in zip(reference, outputs):
        assert got.shape == ref.shape
        assert _sqnr(ref, got) > 30
    naive_model = Model(integer.graph, backend="naive")
    x = np.random.default_rng(2).integers(-128, 128, (3, STEPS, FEATURES), dtype=np.int8)
    for a, b in zip(integer.run_int(x), naive_model.run_int(x)):
        np.testing.assert_array_equal(a, b, strict=True)


def test_onnx_lstm_with_initial_states():
    """h0 / c0 from graph inputs (rescaled into the output's and the cell state's formats).  Their batch
    axis is ONNX's axis 1, so calibration feeds one sample at a time (``[1, 1, H]`` states)."""
    ort = pytest.importorskip("onnxruntime")
    model = _onnx_lstm("forward", peephole=True, states=True)
    rng = np.random.default_rng(3)
    integer = _convert(model, [_feeds(rng, 1, "forward", True) for _ in range(48)], batch_size=1)
    test = _feeds(rng, 1, "forward", True)
    reference = ort.InferenceSession(model.SerializeToString()).run(None, test)
    for ref, got in zip(reference, integer.run(test)):
        assert _sqnr(ref, got) > 25


@pytest.mark.parametrize("direction, linear_before_reset", [("forward", 0), ("reverse", 1), ("bidirectional", 1)])
def test_onnx_gru_against_onnxruntime(direction, linear_before_reset):
    ort = pytest.importorskip("onnxruntime")
    model = _onnx_lstm(direction, op="GRU", linear_before_reset=linear_before_reset)
    rng = np.random.default_rng(5)
    integer = _convert(model, _feeds(rng, 64, direction, False)["x"])
    test = _feeds(rng, 16, direction, False)["x"]
    reference = ort.InferenceSession(model.SerializeToString()).run(None, {"x": test})
    outputs = integer.run(test)
    for ref, got in zip(reference, outputs):
        assert got.shape == ref.shape
        assert _sqnr(ref, got) > 30
    x = np.random.default_rng(6).integers(-128, 128, (3, STEPS, FEATURES), dtype=np.int8)
    for a, b in zip(integer.run_int(x), Model(integer.graph, backend="naive").run_int(x)):
        np.testing.assert_array_equal(a, b, strict=True)


def test_onnx_gru_with_initial_state():
    ort = pytest.importorskip("onnxruntime")
    model = _onnx_lstm("forward", states=True, op="GRU", linear_before_reset=1)
    rng = np.random.default_rng(8)
    integer = _convert(model, [_feeds(rng, 1, "forward", True, "GRU") for _ in range(48)], batch_size=1)
    test = _feeds(rng, 1, "forward", True, "GRU")
    reference = ort.InferenceSession(model.SerializeToString()).run(None, test)
    for ref, got in zip(reference, integer.run(test)):
        assert _sqnr(ref, got) > 25


@pytest.mark.parametrize("kwargs, message", [
    ({"activations": ["Sigmoid", "Relu", "Tanh"]}, "activations"),
    ({"op": "GRU", "activations": ["Sigmoid", "Relu"]}, "activations"),
    ({"clip": 3.0}, "clip"),
])
def test_onnx_lstm_unsupported(kwargs, message):
    with pytest.raises(UnsupportedOpError, match=message):
        _convert(_onnx_lstm(**kwargs), np.zeros((4, STEPS, FEATURES), np.float32))


def test_profile_without_integer_rounding_is_refused():
    model = _onnx_lstm()
    calibration = np.random.default_rng(4).normal(0, 1, (16, STEPS, FEATURES)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="integer LSTM"):
        _convert(model, calibration, "onnxruntime")


def test_tosa_export_refuses_the_lstm(tmp_path):
    """TOSA has no recurrent operator: a typed error naming the op."""
    with pytest.raises(UnsupportedOpError, match="lstm"):
        intsim.export_tosa(Model(_lstm_graph()), tmp_path / "lstm.tosa")


def test_stacked_lstms_with_state_inputs_and_outputs():
    """Two stacked LSTMs with their initial states as graph inputs and their last states concatenated as
    outputs (a voice-activity detector's shape): the int16 cell states join an int8 Concat."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(9)
    h = HIDDEN
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    for layer, (source, width) in enumerate((("xt", FEATURES), ("y0", h))):
        for name, shape, std in (("W", (1, 4 * h, width), 0.5), ("R", (1, 4 * h, h), 0.4), ("B", (1, 8 * h), 0.3)):
            inits.append(numpy_helper.from_array(rng.normal(0, std, shape).astype(np.float32), f"{name}{layer}"))
        nodes += [helper.make_node("LSTM", [source, f"W{layer}", f"R{layer}", f"B{layer}", "", f"h{layer}",
                                            f"c{layer}"], [f"Y{layer}", f"Yh{layer}", f"Yc{layer}"], hidden_size=h),
                  helper.make_node("Squeeze", [f"Y{layer}", "axis1"], [f"y{layer}"])]
    nodes += [helper.make_node("Concat", ["Yh0", "Yh1"], ["hn"], axis=0),
              helper.make_node("Concat", ["Yc0", "Yc1"], ["cn"], axis=0),
              helper.make_node("Transpose", ["y1"], ["y"], perm=[1, 0, 2])]
    states = [f"{k}{layer}" for layer in (0, 1) for k in "hc"]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", STEPS, FEATURES])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, h]) for name in states]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", STEPS, h]),
               helper.make_tensor_value_info("hn", TensorProto.FLOAT, [2, 1, h]),
               helper.make_tensor_value_info("cn", TensorProto.FLOAT, [2, 1, h])]
    model = helper.make_model(helper.make_graph(nodes, "stacked", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8

    def feeds():
        return {"x": rng.normal(0, 1, (1, STEPS, FEATURES)).astype(np.float32),
                **{name: rng.normal(0, 0.3 if name[0] == "h" else 1.0, (1, 1, h)).astype(np.float32)
                   for name in states}}

    integer = _convert(model, [feeds() for _ in range(40)], batch_size=1)
    test = feeds()
    for ref, got in zip(ort.InferenceSession(model.SerializeToString()).run(None, test), integer.run(test)):
        assert _sqnr(ref, got) > 30
