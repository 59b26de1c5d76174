"""16-bit activations end to end (issue 15): every clamp and every int32 saturation the runtime applies is
counted in ``trace.stats``.

A float graph with each requantizing op kind (fully connected, add, mul, activation matmul, softmax, layer
normalization, concat, mean) is converted with ``activation_bits=16``; every node's clamp is then narrowed
so that each one clamps, and each node's ``saturation_count`` (and the matmul's ``overflow_count``) must
equal a count made here from the node's integer inputs and parameters in Python integers, written from the
kernels' documented arithmetic (``single`` rounding: ``(acc * M + 2**(t - 1)) >> t`` with ``t = 31 - shift``).
The issue's own scenario, a product of two int16 activations beyond int32 (with the clamps of the input
quantization), closes the file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim.codes import dtype_range
from intsim.runtime import Model

INT32 = (-(2**31), 2**31 - 1)
S, D = 6, 16


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _onnx(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "int16", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _sat32(v):
    return min(max(v, INT32[0]), INT32[1])


def _rq(acc, multiplier, shift):
    """``single`` requantization of Python integers (exact, then saturated to int32)."""
    total = 31 - int(shift)
    return _sat32((int(acc) * int(multiplier) + (1 << (total - 1))) >> total)


def _codes(trace, name):
    return trace.tensors[name].astype(np.int64)


def _count(values, lo, hi, saturated=None):
    """Outputs outside ``[lo, hi]`` or saturated on the way, each counted once."""
    outside = (values < lo) | (values > hi)
    return int(np.count_nonzero(outside if saturated is None else outside | saturated))


def _fully_connected(node, graph, trace, lo, hi):
    x, out = (graph.tensors[t] for t in (node.inputs[0], node.outputs[0]))
    p = node.params
    centred_w = p["weight"].astype(np.int64) - p["weight_zero_point"][:, None]
    acc = (_codes(trace, x.name) - x.zero_point) @ centred_w.T + p["bias"]
    assert np.abs(acc).max() <= INT32[1]  # the converter's scales keep these accumulators inside int32
    values = np.array([[_rq(a, p["multiplier"][o], p["shift"][o]) + out.zero_point for o, a in enumerate(row)]
                       for row in acc.tolist()])
    return {"saturation_count": _count(values, lo, hi)}


def _add(node, graph, trace, lo, hi):
    a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
    p, left = node.params, node.attrs["left_shift"]
    values, saturated = [], []
    for av, bv in zip(_codes(trace, a.name).ravel().tolist(), _codes(trace, b.name).ravel().tolist()):
        wide = [(av - a.zero_point) << left, (bv - b.zero_point) << left]
        terms = [_rq(_sat32(w), p[f"{k}_multiplier"][0], p[f"{k}_shift"][0]) for w, k in zip(wide, "ab")]
        total = terms[0] + terms[1]
        values.append(_rq(_sat32(total), p["out_multiplier"][0], p["out_shift"][0]) + out.zero_point)
        saturated.append(any(_sat32(v) != v for v in wide + [total]))
    return {"saturation_count": _count(np.array(values), lo, hi, np.array(saturated))}


def _mul(node, graph, trace, lo, hi):
    a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
    products = (_codes(trace, a.name) - a.zero_point) * (_codes(trace, b.name) - b.zero_point)
    m, s = node.params["multiplier"][0], node.params["shift"][0]
    values = np.array([_rq(v, m, s) + out.zero_point for v in products.ravel().tolist()])
    return {"saturation_count": _count(values, lo, hi)}


def _matmul(node, graph, trace, lo, hi):
    """The accumulator policy step by step (``saturate``): ``K z_a z_b``, the products of codes over ``k``,
    then ``- z_b sum_k a`` and ``- z_a sum_k b``."""
    a, b, out = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
    av, bv = _codes(trace, a.name), _codes(trace, b.name)
    m, s = node.params["multiplier"][0], node.params["shift"][0]
    values, overflows = [], 0
    for batch in range(av.shape[0]):
        for i in range(av.shape[1]):
            for j in range(bv.shape[2]):
                row, col = av[batch, i].tolist(), bv[batch, :, j].tolist()
                steps = [len(row) * a.zero_point * b.zero_point] + [x * y for x, y in zip(row, col)]
                steps += [-b.zero_point * sum(row), -a.zero_point * sum(col)]
                acc, left = 0, False
                for step in steps:
                    left |= _sat32(acc + step) != acc + step
                    acc = _sat32(acc + step)
                overflows += left
                values.append(_rq(acc, m, s) + out.zero_point)
    return {"saturation_count": _count(np.array(values), lo, hi), "overflow_count": overflows}


def _softmax(node, graph, trace, lo, hi):
    x, out = (graph.tensors[t] for t in (node.inputs[0], node.outputs[0]))
    table = node.params["exp_table"].astype(np.int64).tolist()
    m, s = node.params["multiplier"][0], node.params["shift"][0]
    values = []
    for row in _codes(trace, x.name).reshape(-1, x.shape[-1]).tolist():
        exps = [table[max(row) - v] for v in row]
        total = sum(exps)
        values += [_rq((e * 2**23 + total // 2) // total, m, s) + out.zero_point for e in exps]
    return {"saturation_count": _count(np.array(values), lo, hi)}


def _layernorm(node, graph, trace, lo, hi):
    x, out = (graph.tensors[t] for t in (node.inputs[0], node.outputs[0]))
    p, k = node.params, node.attrs["variance_shift"]
    values, saturated = [], []
    for row in _codes(trace, x.name).reshape(-1, x.shape[-1]).tolist():
        codes = [v - x.zero_point for v in row]
        centred = [len(codes) * c - sum(codes) for c in codes]
        variance = sum((c >> k) ** 2 for c in centred)
        factor = 2**40 // max(math.isqrt((variance + node.attrs["eps_term"]) // len(codes)) << k, 1)
        for i, c in enumerate(centred):
            q = (c * factor + 2**23) >> 24
            exact = int(p["gamma_sign"][i]) * q + int(p["bias"][i])
            values.append(_rq(_sat32(exact), p["multiplier"][i], p["shift"][i]) + out.zero_point)
            saturated.append(_sat32(exact) != exact)
    return {"saturation_count": _count(np.array(values), lo, hi, np.array(saturated))}


def _concat(node, graph, trace, lo, hi):
    out = graph.tensors[node.outputs[0]]
    total = 0
    for i, name in enumerate(node.inputs):
        x = graph.tensors[name]
        m, s = node.params["multiplier"][i], node.params["shift"][i]
        values = np.array([_rq(v - x.zero_point, m, s) + out.zero_point for v in _codes(trace, name).ravel().tolist()])
        total += _count(values, lo, hi)
    return {"saturation_count": total}


def _mean(node, graph, trace, lo, hi):
    x, out = (graph.tensors[t] for t in (node.inputs[0], node.outputs[0]))
    sums = (_codes(trace, x.name) - x.zero_point).sum(axis=tuple(node.attrs["axes"]))
    m, s = node.params["multiplier"][0], node.params["shift"][0]
    values = np.array([_rq(_sat32(v), m, s) + out.zero_point for v in sums.ravel().tolist()])
    saturated = np.array([_sat32(v) != v for v in sums.ravel().tolist()])
    return {"saturation_count": _count(values, lo, hi, saturated)}


COUNTS = {"fully_connected": _fully_connected, "add": _add, "mul": _mul, "matmul": _matmul, "softmax": _softmax,
          "layernorm": _layernorm, "concat": _concat, "mean": _mean}


def _encoder_block():
    rng = np.random.default_rng(16)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "x"], ["s"]),
        helper.make_node("Mul", ["h", "s"], ["m"]),
        helper.make_node("Transpose", ["s"], ["st"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "st"], ["att"]),
        helper.make_node("Softmax", ["att"], ["p"], axis=-1),
        helper.make_node("LayerNormalization", ["m", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("Concat", ["ln", "s"], ["cat"], axis=-1),
        helper.make_node("ReduceMean", ["cat"], ["r"], axes=[1], keepdims=0),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, S, D])
    outputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, S, S]),
               helper.make_tensor_value_info("r", TensorProto.FLOAT, [None, 2 * D])]
    inits = [_const("w", rng.normal(size=(D, D)) / 4), _const("gamma", rng.uniform(0.5, 1.5, D)),
             _const("beta", rng.normal(size=D) / 4)]
    return _onnx(nodes, [x], outputs, inits), rng


def test_every_clamp_of_a_16_bit_graph_is_counted():
    model_onnx, rng = _encoder_block()
    calibration = rng.normal(size=(64, S, D)).astype(np.float32)
    model = intsim.convert(model_onnx, calibration=calibration, profile="paper", activation_bits=16, progress=False)
    graph = model.graph
    codes = model.quantize_inputs([2 * rng.normal(size=(8, S, D)).astype(np.float32)])
    wide = model.trace(*codes)
    for node in graph.nodes:  # a narrower clamp (a fused activation's) makes every op kind clamp
        if node.op in COUNTS:
            outputs = wide.tensors[node.outputs[0]]
            node.attrs["clamp"] = [int(np.quantile(outputs, 0.2)), int(np.quantile(outputs, 0.8))]
    model = Model(graph)
    trace = model.trace(*codes)
    checked = set()
    for node in graph.nodes:
        if node.op not in COUNTS:
            continue
        lo, hi = node.attrs["clamp"]
        expected = COUNTS[node.op](node, graph, trace, lo, hi)
        got = {k: trace.stats[node.name][k] for k in expected}
        assert got == expected, node.name
        assert expected["saturation_count"] > 0, node.name
        checked.add(node.op)
    assert checked == set(COUNTS)
    naive = Model(graph, backend="naive").trace(*codes)
    assert naive.stats == trace.stats


def test_product_of_two_int16_activations_is_not_clipped_and_its_saturation_is_reported():
    """The issue's scenario: two 16-bit activations multiplied; their centred product leaves int32, the
    output clamps where the test data exceed the calibration, and the integer output stays as close to float
    as the quantization simulation."""
    rng = np.random.default_rng(15)
    w1, w2 = (_const(n, rng.normal(size=(32, 32)) / 8) for n in ("w1", "w2"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a"]),
             helper.make_node("MatMul", ["x", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["y"])]  # codes of non-negative reals: centred up to 65535
    model_onnx = _onnx(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])], [w1, w2])
    model = intsim.convert(model_onnx, calibration=rng.normal(size=(256, 32)).astype(np.float32), profile="paper",
                           activation_bits=16, progress=False)
    data = 1.5 * rng.normal(size=(256, 32)).astype(np.float32)
    trace = model.trace(data, float_input=True)
    mul = next(n for n in model.graph.nodes if n.op == "mul")
    a, b = (model.graph.tensors[t] for t in mul.inputs)
    products = (_codes(trace, a.name) - a.zero_point) * (_codes(trace, b.name) - b.zero_point)
    assert np.abs(products).max() > INT32[1]  # products beyond int32 occur
    lo, hi = dtype_range(model.graph.tensors[mul.outputs[0]].dtype)
    assert trace.stats[mul.name] == _mul(mul, model.graph, trace, lo, hi)
    assert trace.stats[mul.name]["saturation_count"] > 0
    x = model.graph.tensors[model.graph.inputs[0]]
    unclamped = np.rint(data.astype(np.float64) / x.scale) + x.zero_point  # float64, ties to even: the default
    clamped = int(np.count_nonzero((unclamped < -32768) | (unclamped > 32767)))
    assert trace.stats[f"quantize:{x.name}"] == {"saturation_count": clamped} and clamped > 0
    report = intsim.compare(model_onnx, model, data, progress=False)
    row = next(r for r in report.layers if r.node == mul.name)
    assert row.saturated == trace.stats[mul.name]["saturation_count"]
    sqnr_int, sqnr_sim = (10 * np.log10(row.signal / noise) for noise in (row.noise_int, row.noise_sim))
    assert sqnr_int > 10 and abs(sqnr_int - sqnr_sim) < 0.1
