"""Golden vectors of the ops issue 15 added (layer norm, GELU and sigmoid tables, masked softmax, slice,
transposed convolution, gather_elements): :func:`intsim.export_golden` writes them, :func:`load_golden`
reads back every tensor and parameter bit for bit in each file format, :func:`intsim.hwval.diff` finds a
clean dump exact and names the node a corrupted dump diverges at."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim.hwval import diff, load_golden, write_golden
from intsim.profiles import get_profile

S, D = 6, 8
PROFILES = {"8-bit": get_profile("paper"),
            "16-bit interpolated": get_profile("paper").replace(activation_bits=16, int16_tables="interpolated")}


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _sequence_model(rng):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("Div", ["ln", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["ln", "erf1"], ["xerf"]),
        helper.make_node("Mul", ["xerf", "half"], ["gelu"]),
        helper.make_node("Transpose", ["gelu"], ["gelu_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["gelu", "gelu_t"], ["scores"]),
        helper.make_node("Where", ["causal", "scores", "fill"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("GatherElements", ["p", "idx"], ["y"], axis=2),
    ]
    inits = [_const("w", rng.normal(size=(D, D)).astype(np.float32) / 2),
             _const("gamma", rng.uniform(0.5, 1.5, D).astype(np.float32)),
             _const("beta", rng.normal(size=D).astype(np.float32) / 4),
             _const("sqrt2", np.float32(np.sqrt(2.0))), _const("one", np.float32(1.0)), _const("half", np.float32(0.5)),
             _const("causal", np.tril(np.ones((S, S), bool))), _const("fill", np.float32(-np.inf)),
             _const("idx", rng.integers(0, S, size=(1, S, 3)).astype(np.int64))]
    graph = helper.make_graph(nodes, "sequence", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, S, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (S, D)


def _vision_model(rng):
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["crop"]),
        helper.make_node("Sigmoid", ["crop"], ["y"]),
    ]
    inits = [_const("wt", rng.normal(size=(3, 4, 3, 3)).astype(np.float32) / 3),
             _const("starts", np.array([1, 2], np.int64)), _const("ends", np.array([-1, 9], np.int64)),
             _const("axes", np.array([2, 3], np.int64))]
    graph = helper.make_graph(nodes, "vision", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (3, 5, 5)


OPS = {"sequence": (_sequence_model, {"layernorm", "masked_softmax", "gather_elements"}),
       "vision": (_vision_model, {"insert_zeros", "conv2d", "slice"})}


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("kind", sorted(OPS))
def test_golden_of_the_new_ops_round_trips_and_diffs(kind, profile, tmp_path):
    build, expected_ops = OPS[kind]
    rng = np.random.default_rng(11)
    model_onnx, shape = build(rng)
    model = intsim.convert(model_onnx, calibration=rng.normal(size=(16, *shape)).astype(np.float32),
                           profile=PROFILES[profile], progress=False)
    ops = {n.op for n in model.graph.nodes}
    table = "lut_interpolated" if profile.startswith("16") else "lut"
    assert expected_ops | {table} <= ops, ops
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    intsim.export_golden(model, x, tmp_path / "golden", float_input=True)
    trace = model.trace(x, float_input=True)
    for fmt in ("npy", "hex", "bin"):
        golden = load_golden(tmp_path / "golden", fmt)
        assert sorted(golden.tensors) == sorted(trace.tensors)
        for name, value in trace.tensors.items():
            np.testing.assert_array_equal(golden.tensors[name], value, strict=True)
        for node in model.graph.nodes:
            for key, value in node.params.items():
                np.testing.assert_array_equal(golden.params[node.name][key], value, strict=True)
    records = {r["op"]: r for r in load_golden(tmp_path / "golden").manifest["nodes"]}
    for op in {"layernorm", "masked_softmax"} & ops:  # requantizing: the rounding and clamp travel with them
        assert records[op]["rounding"] == "single" and len(records[op]["clamp"]) == 2
    clean = diff(model, x, tmp_path / "golden", float_input=True)
    assert clean.first is None and len(clean.comparisons) >= len(model.graph.nodes)
    # A device whose layer norm / transposed convolution is one code off in one place is caught there.
    victim = next(n for n in model.graph.nodes if n.op in ("layernorm", "conv2d"))
    broken = trace.tensors[victim.outputs[0]].copy()
    info = np.iinfo(broken.dtype)
    broken.flat[3] = broken.flat[3] + 1 if broken.flat[3] < info.max else broken.flat[3] - 1
    trace.tensors[victim.outputs[0]] = broken
    write_golden(model.graph, trace, tmp_path / "device", formats=("npy",))
    report = diff(model, x, tmp_path / "device", float_input=True)
    assert report.first.node == victim.name and report.first.mismatches == 1
    assert report.cause is not None and report.cause.mismatches >= 1  # no setting reproduces a one-off flip
