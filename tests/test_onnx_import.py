"""ONNX import and the float executor: every canonical form against onnxruntime, torch exports
in both styles, and every error path."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from intsim.errors import ModelFormatError, UnsupportedOpError, ValidationError
from intsim.floatgraph.execute import resize_source_indices, run_float, run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.importers.onnx import import_onnx

RNG = np.random.default_rng(0)


def _w(*shape, positive=False):
    value = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(value) + 0.1 if positive else value


INITS = {
    "w4": _w(6, 4, 4, 4),
    "b6": _w(6),
    "wdw": _w(4, 1, 2, 2),
    "wg": _w(6, 2, 3, 3),
    "scale": _w(4),
    "shift": _w(4),
    "mean": _w(4),
    "var": _w(4, positive=True),
    "slope": _w(4, 1, 1),
    "c4": _w(4, 1, 1, positive=True),
    "lo": np.array(-0.5, np.float32),
    "hi": np.array(0.25, np.float32),
    "gB": _w(6, 5),
    "gBt": _w(5, 6),
    "gC": _w(1, 5),
    "third": np.array(0.3, np.float32),
    "mW": _w(6, 3),
    "w1d": _w(2, 4, 3),
    "w3d": _w(2, 4, 3, 3, 3),
    "target": np.array([0, -1, 9], np.int64),
    "ax1": np.array([1], np.int64),
    "ax_u": np.array([-1, 1], np.int64),
    "ax_r": np.array([1, -1], np.int64),
    "ax_last": np.array([-1], np.int64),
    "pads8": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
    "pads2": np.array([1, 2], np.int64),
    "half": np.array(0.5, np.float32),
    "roi": np.zeros(0, np.float32),
    "sc23": np.array([1, 1, 2, 3], np.float32),
    "sc_mix": np.array([1, 1, 0.5, 1.5], np.float32),
    "hw": np.array([13, 7], np.int64),
    "sizes2": np.array([5, 12], np.int64),
    "zero": np.array([0], np.int64),
    "two": np.array([2], np.int64),
}

X9 = {"x": ["N", 4, 9, 9]}
X10 = {"x": ["N", 4, 10, 10]}
V6 = {"x": ["N", 6]}


def _n(op, inputs, output="y", **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


def _model(nodes, inputs, opset=17, outputs=("y",), inits=None, elem=TensorProto.FLOAT):
    used = {t for n in nodes for t in n.input}
    inits = {k: v for k, v in INITS.items() if k in used} if inits is None else inits
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, elem, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(model, batch):
    rng = np.random.default_rng(1)
    feeds = {}
    for info in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _onnxruntime(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check_structure(graph: FloatGraph):
    names = [n.name for n in graph.nodes]
    assert all(names) and len(set(names)) == len(names)
    available = set(graph.inputs) | set(graph.constants)
    for node in graph.nodes:
        assert set(node.inputs) <= available, node
        available |= set(node.outputs)
    assert set(graph.outputs) <= available
    assert set(graph.shapes) == available
    assert not set(graph.inputs) & set(graph.constants)


def _compare(model, batch=3, **kwargs):
    """Import, check the structure, and compare every output with onnxruntime."""
    graph = import_onnx(model, **kwargs)
    _check_structure(graph)
    feeds = _feeds(model, batch)
    got = run_float(graph, feeds)
    for name, value in got.items():
        shape = graph.shapes[name]
        assert len(shape) == value.ndim and all(d in (None, v) for d, v in zip(shape, value.shape)), name
    for name, expected in zip(graph.outputs, _onnxruntime(model, feeds)):
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5)
        assert got[name].dtype == np.float32
    return graph


# --------------------------------------------------------------------------
# Op by op: each case is nodes, inputs, opset, the canonical op and attributes of the node making "y".
# --------------------------------------------------------------------------

SHAPE_OF_X = [
    _n("Shape", ["x"], "shape"),
    _n("Slice", ["shape", "zero", "two"], "nc"),
    _n("Concat", ["nc", "hw"], "sizes", axis=0),
]

OP_CASES = {
    "conv_same_upper": ([_n("Conv", ["x", "w4", "b6"], auto_pad="SAME_UPPER", strides=[2, 2])], X9, 17,
                        "Conv", {"pads": [1, 1, 2, 2], "strides": [2, 2], "dilations": [1, 1], "group": 1}),
    "conv_same_lower_depthwise": ([_n("Conv", ["x", "wdw"], auto_pad="SAME_LOWER", group=4)], X9, 11,
                                  "Conv", {"pads": [1, 1, 0, 0], "group": 4}),
    "conv_valid_dilated_grouped": ([_n("Conv", ["x", "wg"], auto_pad="VALID", group=2, dilations=[2, 2])], X9, 13,
                                   "Conv", {"pads": [0, 0, 0, 0], "dilations": [2, 2], "group": 2}),
    "conv_explicit_pads": ([_n("Conv", ["x", "wg", ""], pads=[0, 1, 2, 0], group=2, kernel_shape=[3, 3])], X9, 17,
                           "Conv", {"pads": [0, 1, 2, 0]}),
    "batch_norm": ([_n("BatchNormalization", ["x", "scale", "shift", "mean", "var"], epsilon=1e-3)], X9, 15,
                   "BatchNormalization", {"epsilon": pytest.approx(1e-3)}),
    "relu": ([_n("Relu", ["x"])], X9, 17, "Relu", {}),
    "sigmoid": ([_n("Sigmoid", ["x"])], X9, 17, "Sigmoid", {}),
    "tanh": ([_n("Tanh", ["x"])], X9, 17, "Tanh", {}),
    "hardswish": ([_n("HardSwish", ["x"])], X9, 17, "HardSwish", {}),
    "leaky_relu": ([_n("LeakyRelu", ["x"], alpha=0.3)], X9, 17, "LeakyRelu", {"alpha": pytest.approx(0.3)}),
    "hard_sigmoid": ([_n("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], X9, 17, "HardSigmoid",
                     {"alpha": pytest.approx(0.3), "beta": pytest.approx(0.4)}),
    "prelu": ([_n("PRelu", ["x", "slope"])], X9, 17, "PRelu", {}),
    "clip_min_only": ([_n("Clip", ["x", "lo"])], X9, 13, "Clip", {"min": -0.5, "max": np.inf}),
    "clip_constant_nodes": ([helper.make_node("Constant", [], ["top"], value_float=0.25), _n("Clip", ["x", "", "top"])],
                            X9, 11, "Clip", {"min": -np.inf, "max": 0.25}),
    "add_broadcast": ([_n("Add", ["x", "c4"])], X9, 17, "Add", {}),
    "sub_constant_first": ([_n("Sub", ["c4", "x"])], X9, 17, "Sub", {}),
    "mul": ([_n("Relu", ["x"], "r"), _n("Mul", ["x", "r"])], X9, 17, "Mul", {}),
    "div": ([_n("Div", ["x", "c4"])], X9, 17, "Div", {}),
    "concat_negative_axis": ([_n("Relu", ["x"], "r"), _n("Concat", ["x", "r"], axis=-3)], X9, 17, "Concat", {"axis": 1}),
    "maxpool_ceil": ([_n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)], X10,
                     17, "MaxPool", {"pads": [1, 1, 2, 2], "kernel_shape": [3, 3], "dilations": [1, 1]}),
    "maxpool_ceil_dropped_window": ([_n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1],
                                        ceil_mode=1)], X10, 17, "MaxPool", {"pads": [1, 1, 1, 1]}),
    "maxpool_dilated": ([_n("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 0, 1, 0])], X9, 12,
                        "MaxPool", {"pads": [1, 0, 1, 0], "strides": [1, 1], "dilations": [2, 2]}),
    "maxpool_same_lower": ([_n("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")], X9, 17,
                           "MaxPool", {"pads": [1, 1, 0, 0]}),
    "avgpool_ceil_excluding_pads": ([_n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                        ceil_mode=1)], X10, 17, "AveragePool",
                                    {"pads": [1, 1, 2, 2], "count_include_pad": 0}),
    "avgpool_ceil_including_no_pads": ([_n("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
                                           count_include_pad=1)], X9, 17, "AveragePool",
                                       {"pads": [0, 0, 1, 1], "count_include_pad": 0}),
    "avgpool_including_pads": ([_n("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
                               X9, 17, "AveragePool", {"pads": [1, 1, 1, 1], "count_include_pad": 1, "strides": [1, 1]}),
    "global_average_pool": ([_n("GlobalAveragePool", ["x"])], X9, 17, "ReduceMean", {"axes": [2, 3], "keepdims": 1}),
    "reduce_mean_attribute": ([_n("ReduceMean", ["x"], axes=[-1], keepdims=0)], X9, 17, "ReduceMean",
                              {"axes": [3], "keepdims": 0}),
    "reduce_mean_input": ([_n("ReduceMean", ["x", "ax_r"])], X9, 18, "ReduceMean", {"axes": [1, 3], "keepdims": 1}),
    "reduce_mean_all": ([_n("ReduceMean", ["x"], keepdims=1)], X9, 18, "ReduceMean", {"axes": [0, 1, 2, 3]}),
    "gemm_alpha_beta": ([_n("Gemm", ["x", "gB", "gC"], alpha=0.5, beta=2.0)], V6, 17, "Gemm", {}),
    "gemm_trans_b_scalar_c": ([_n("Gemm", ["x", "gBt", "third"], transB=1)], V6, 11, "Gemm", {}),
    "gemm_dynamic_b": ([_n("Gemm", ["x", "x", "third"], transB=1)], V6, 17, "Add", {}),
    "matmul_constant": ([_n("MatMul", ["x", "mW"])], V6, 17, "MatMul", {}),
    "flatten": ([_n("Flatten", ["x"], axis=2)], X9, 17, "Flatten", {"axis": 2}),
    "flatten_negative": ([_n("Flatten", ["x"], axis=-1)], X9, 17, "Flatten", {"axis": 3}),
    "reshape": ([_n("Reshape", ["x", "target"])], X9, 17, "Reshape", {"shape": [0, -1, 9]}),
    "transpose": ([_n("Transpose", ["x"], perm=[0, 2, 3, 1])], X9, 17, "Transpose", {"perm": [0, 2, 3, 1]}),
    "transpose_default": ([_n("Transpose", ["x"])], X9, 17, "Transpose", {"perm": [3, 2, 1, 0]}),
    "squeeze_attribute": ([_n("Squeeze", ["x"], axes=[-2])], {"x": ["N", 4, 1, 5]}, 11, "Squeeze", {"axes": [2]}),
    "squeeze_all_ones": ([_n("Squeeze", ["x"])], {"x": ["N", 1, 5, 1]}, 13, "Squeeze", {"axes": [1, 3]}),
    "unsqueeze_input": ([_n("Unsqueeze", ["x", "ax_u"])], X9, 13, "Unsqueeze", {"axes": [1, 5]}),
    "unsqueeze_attribute": ([_n("Unsqueeze", ["x"], axes=[0])], V6, 11, "Unsqueeze", {"axes": [0]}),
    "pad": ([_n("Pad", ["x", "pads8", "half"])], X9, 11, "Pad",
            {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "constant", "value": 0.5}),
    "pad_axes": ([_n("Pad", ["x", "pads2", "", "ax_last"])], X9, 18, "Pad",
                 {"pads": [0, 0, 0, 1, 0, 0, 0, 2], "value": 0.0}),
    "softmax_opset11_last_axis": ([_n("Softmax", ["x"])], V6, 11, "Softmax", {"axis": 1}),
    "softmax_channels": ([_n("Softmax", ["x"], axis=1)], X9, 13, "Softmax", {"axis": 1}),
    "resize_sizes_from_shape": (SHAPE_OF_X + [_n("Resize", ["x", "", "", "sizes"], nearest_mode="round_prefer_ceil")],
                                X9, 13, "Resize", {"sizes": [0, 4, 13, 7], "coordinate_transformation_mode": "half_pixel",
                                                   "nearest_mode": "round_prefer_ceil"}),
    "resize_scales_asymmetric": ([_n("Resize", ["x", "roi", "sc23"], coordinate_transformation_mode="asymmetric",
                                     nearest_mode="floor")], X9, 11, "Resize", {"sizes": [0, 4, 18, 27]}),
    "resize_axes_align_corners": ([_n("Resize", ["x", "", "", "sizes2"], axes=[2, 3], nearest_mode="ceil",
                                      coordinate_transformation_mode="align_corners")], X9, 18, "Resize",
                                  {"sizes": [0, 4, 5, 12]}),
    "resize_pytorch_half_pixel": ([_n("Resize", ["x", "", "sc_mix"], coordinate_transformation_mode="pytorch_half_pixel")],
                                  X10, 13, "Resize", {"sizes": [0, 4, 5, 15]}),
    "resize_half_pixel_symmetric": ([_n("Resize", ["x", "", "sc_mix"],
                                        coordinate_transformation_mode="half_pixel_symmetric")], X10, 19, "Resize",
                                    {"sizes": [0, 4, 5, 15]}),
}


@pytest.mark.parametrize("case", OP_CASES, ids=list(OP_CASES))
def test_op_matches_onnxruntime(case):
    nodes, inputs, opset, op, attrs = OP_CASES[case]
    graph = _compare(_model(nodes, inputs, opset))
    node = graph.producer("y")
    assert node.op == op
    assert {k: node.attrs[k] for k in attrs} == attrs
    assert graph.opset == opset


def test_shapes_mark_the_batch_and_inputs_exclude_initializers():
    model = _model([_n("Conv", ["x", "w4", "b6"], "c", pads=[1, 1, 2, 2]), _n("Flatten", ["c"])], {"x": [1, 4, 9, 9]})
    model.graph.input.append(helper.make_tensor_value_info("w4", TensorProto.FLOAT, [6, 4, 4, 4]))
    graph = import_onnx(model)
    assert graph.inputs == ["x"]
    assert graph.shapes == {"x": (None, 4, 9, 9), "w4": (6, 4, 4, 4), "b6": (6,), "c": (None, 6, 9, 9),
                            "y": (None, 486)}
    static = import_onnx(model, batch_dynamic=False)
    assert static.shapes["x"] == (1, 4, 9, 9) and static.shapes["y"] == (1, 486)


def test_identity_and_dropout_disappear_keeping_output_names():
    nodes = [_n("Identity", ["x"], "i"), _n("Relu", ["i"], "r"), helper.make_node("Dropout", ["r"], ["d", ""]),
             _n("Identity", ["d"], "y")]
    graph = _compare(_model(nodes, X9, 13))
    assert [(n.op, n.inputs, n.outputs) for n in graph.nodes] == [("Relu", ["x"], ["y"])]


def test_nodes_are_sorted_and_named():
    nodes = [_n("Add", ["a", "b"], "y", name="same"), _n("Sigmoid", ["x"], "b"), _n("Relu", ["x"], "a", name="same")]
    graph = import_onnx(_model(nodes, X9))
    _check_structure(graph)
    assert [n.op for n in graph.nodes] == ["Sigmoid", "Relu", "Add"]
    assert [n.name for n in graph.nodes] == ["Sigmoid_0", "same", "same_1"]


def test_shape_arithmetic_folds_with_a_dynamic_batch():
    # y = reshape(x, [n * 4 / 4, -1]) + k, with n = shape(x)[0] carried through Gather, Mul, Div,
    # Cast, Unsqueeze and Concat, and k a constant from Range, Equal, Where, ConstantOfShape.
    nodes = [
        _n("Shape", ["x"], "s"),
        helper.make_node("Constant", [], ["i0"], value_int=0),
        helper.make_node("Constant", [], ["four"], value=numpy_helper.from_array(np.array(4, np.int64))),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        _n("Mul", ["n", "four"], "n4"),
        _n("Div", ["n4", "four"], "n1"),
        _n("Cast", ["n1"], "nf", to=TensorProto.FLOAT),
        _n("Cast", ["nf"], "ni", to=TensorProto.INT64),
        _n("Unsqueeze", ["ni", "zero"], "nu"),
        helper.make_node("Constant", [], ["minus"], value_ints=[-1]),
        _n("Concat", ["nu", "minus"], "target", axis=0),
        _n("Reshape", ["x", "target"], "r"),
        _n("Range", ["zero_s", "four", "one_s"], "steps"),
        _n("Equal", ["steps", "two_s"], "eq"),
        _n("Where", ["eq", "f1", "f0"], "mask"),
        _n("Unsqueeze", ["mask", "one"], "column"),
        _n("ConstantOfShape", ["row_shape"], "row", value=numpy_helper.from_array(np.array([3.0], np.float32))),
        _n("Mul", ["column", "row"], "grid"),
        _n("Reshape", ["grid", "flat_shape"], "k"),
        _n("Add", ["r", "k"]),
    ]
    inits = {
        "zero": INITS["zero"], "one": np.array([1], np.int64), "zero_s": np.array(0, np.int64),
        "one_s": np.array(1, np.int64), "two_s": np.array(2, np.int64), "f1": np.array(1.0, np.float32),
        "f0": np.array(0.0, np.float32), "row_shape": np.array([1, 81], np.int64), "flat_shape": np.array([-1], np.int64),
    }
    graph = _compare(_model(nodes, X9, 13, inits=inits))
    assert [(n.op, n.attrs) for n in graph.nodes] == [("Reshape", {"shape": [0, -1]}), ("Add", {})]
    assert list(graph.constants) == ["k"]
    np.testing.assert_array_equal(graph.constants["k"], np.repeat([0, 0, 3, 0], 81).astype(np.float32), strict=True)
    assert graph.shapes["y"] == (None, 324)


def test_hard_coded_batch_becomes_copy():
    nodes = [_n("Reshape", ["x", "one_minus"])]
    model = _model(nodes, {"x": [1, 4, 9, 9]}, inits={"one_minus": np.array([1, -1], np.int64)})
    assert import_onnx(model).nodes[0].attrs["shape"] == [0, -1]
    assert import_onnx(model, batch_dynamic=False).nodes[0].attrs["shape"] == [1, -1]


COORDINATE_OPSETS = {"half_pixel": 13, "pytorch_half_pixel": 13, "asymmetric": 13, "align_corners": 13,
                     "tf_half_pixel_for_nn": 11, "half_pixel_symmetric": 19}


@pytest.mark.parametrize("nearest", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("coordinates", list(COORDINATE_OPSETS))
@pytest.mark.parametrize("sizes", [[1, 1, 2, 12], [1, 1, 1, 6], [1, 1, 12, 3]])
def test_resize_nearest_matches_onnxruntime(coordinates, nearest, sizes):
    # 7 -> 2, 10 -> 12, 7 -> 1 and 10 -> 6 put source coordinates 1 ulp from x.5 in float32.
    # Sizes fixed in the file, batch included: the batch entry becomes 0 like a Reshape target's.
    node = _n("Resize", ["x", "roi", "scales", "sizes"], coordinate_transformation_mode=coordinates, nearest_mode=nearest)
    inits = {"roi": INITS["roi"], "scales": np.zeros(0, np.float32), "sizes": np.array(sizes, np.int64)}
    graph = _compare(_model([node], {"x": [1, 1, 7, 10]}, COORDINATE_OPSETS[coordinates], inits=inits), batch=1)
    assert graph.nodes[0].attrs["sizes"] == [0] + sizes[1:]


def test_resize_source_indices_keep_an_unchanged_axis():
    for mode in COORDINATE_OPSETS:
        np.testing.assert_array_equal(resize_source_indices(5, 5, mode, "ceil"), np.arange(5), strict=True)


def test_batch_moving_position_becomes_inferred():
    # [N, 6] -> transpose -> [6, N] -> reshape to [N, 6] with N from Shape: position 0 holds the
    # batch but the input's batch is at position 1, so it becomes -1.
    nodes = [_n("Transpose", ["x"], "t"), _n("Shape", ["x"], "s"), _n("Slice", ["s", "zero", "one"], "n"),
             _n("Concat", ["n", "six"], "target", axis=0), _n("Reshape", ["t", "target"])]
    inits = {"zero": INITS["zero"], "one": np.array([1], np.int64), "six": np.array([6], np.int64)}
    graph = _compare(_model(nodes, V6, inits=inits))
    assert graph.producer("y").attrs["shape"] == [-1, 6]


def test_gemm_dynamic_b_becomes_transpose_matmul_add():
    graph = import_onnx(_model([_n("Gemm", ["x", "x", "third"], transB=1)], V6))
    assert [n.op for n in graph.nodes] == ["Transpose", "MatMul", "Add"]
    assert graph.shapes["y"] == (None, None)


def test_gemm_folds_alpha_beta_and_transpose():
    graph = import_onnx(_model([_n("Gemm", ["x", "gB", "gC"], alpha=0.5, beta=2.0)], V6))
    _, weight, bias = graph.nodes[0].inputs
    np.testing.assert_array_equal(graph.constants[weight], INITS["gB"].T * np.float32(0.5))
    np.testing.assert_array_equal(graph.constants[bias], INITS["gC"][0] * np.float32(2.0))
    kept = import_onnx(_model([_n("Gemm", ["x", "gBt"], transB=1)], V6))
    assert kept.nodes[0].inputs == ["x", "gBt"]


# --------------------------------------------------------------------------
# Error paths.
# --------------------------------------------------------------------------


def test_unsupported_op_names_op_node_and_opset():
    model = _model([_n("Hardmax", ["x"], name="foo")], X9)
    with pytest.raises(UnsupportedOpError, match=r"node 'foo' \(opset 17\): op 'Hardmax' is not supported"):
        import_onnx(model)


def test_unsupported_domain():
    node = helper.make_node("FusedConv", ["x"], ["y"], name="f", domain="com.microsoft")
    model = _model([node], X9)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match=r"node 'f' \(opset 17\): op 'com.microsoft.FusedConv'"):
        import_onnx(model)


def test_bad_files(tmp_path):
    with pytest.raises(ModelFormatError, match="nope.onnx.*no such file"):
        import_onnx(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x12\x34garbage\xff\xff\x01")
    with pytest.raises(ModelFormatError, match="garbage.onnx.*not an ONNX model"):
        import_onnx(str(garbage))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="no default-domain"):
        import_onnx(empty)
    with pytest.raises(ValidationError, match="path or an onnx.ModelProto, found int"):
        import_onnx(3)


@pytest.mark.parametrize("opset", [22])  # opsets below 11 are upgraded (tests/test_vision_ops.py)
def test_opset_out_of_range(opset):
    with pytest.raises(UnsupportedOpError, match=f"opset {opset} is not supported; intsim imports opsets 11 to 21"):
        import_onnx(_model([_n("Relu", ["x"])], X9, opset))


def test_malformed_graphs():
    with pytest.raises(ModelFormatError, match="'r' is produced twice"):
        import_onnx(_model([_n("Relu", ["x"], "r"), _n("Sigmoid", ["x"], "r"), _n("Relu", ["r"])], X9))
    with pytest.raises(ModelFormatError, match="input 'ghost' of node 'n'"):
        import_onnx(_model([_n("Add", ["x", "ghost"], name="n")], X9))
    with pytest.raises(ModelFormatError, match="cycle"):
        import_onnx(_model([_n("Add", ["x", "b"], "a"), _n("Relu", ["a"], "b"), _n("Relu", ["a"])], X9))


def test_bad_graph_inputs():
    with pytest.raises(ValidationError, match=r"graph input 'x' must be float32, or int64 / int32 \(token ids, "
                                              r"masks\), found FLOAT16"):
        import_onnx(_model([_n("Relu", ["x"])], X9, elem=TensorProto.FLOAT16))
    with pytest.raises(ValidationError, match="only dim 0 \\(the batch\\) may be symbolic"):
        import_onnx(_model([_n("Relu", ["x"])], {"x": ["N", 4, "H", 9]}))
    model = _model([_n("Relu", ["x"])], X9)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ValidationError, match="graph input 'x' has no shape"):
        import_onnx(model)


UNSUPPORTED = {
    "pad_wrap": ([_n("Pad", ["x", "pads8"], mode="wrap")], X9, 19, "Pad mode 'wrap' is not supported"),
    "pad_negative": ([_n("Pad", ["x", "neg_pads"])], X9, 13, r"negative pads \[0, 0, -1"),
    "resize_linear": ([_n("Resize", ["x", "roi", "sc23"], mode="linear")], X9, 13, "Resize mode 'linear'"),
    "resize_crop": ([_n("Resize", ["x", "roi", "sc23"], coordinate_transformation_mode="tf_crop_and_resize")], X9, 13,
                    "coordinate_transformation_mode 'tf_crop_and_resize' is not supported"),
    "resize_fractional": ([_n("Resize", ["x", "", "sc_mix"])], X9, 13, r"\(2, 0.5\).*fractional output size"),
    "resize_batch": ([_n("Resize", ["x", "", "sc_batch"])], X9, 13, "Resize of the batch axis 0"),
    "resize_size_from_batch": (SHAPE_OF_X[:1] + [_n("Slice", ["shape", "zero", "one"], "n"),
                                                 _n("Concat", ["c4s", "n", "n"], "hw2", axis=0),
                                                 _n("Concat", ["n", "hw2"], "sizes", axis=0),
                                                 _n("Resize", ["x", "", "", "sizes"])], X9, 13,
                               "size of axis 2 depends on the batch size"),
    "resize_aspect": ([_n("Resize", ["x", "", "", "sizes2"], axes=[2, 3], keep_aspect_ratio_policy="not_larger")], X9,
                      18, "keep_aspect_ratio_policy 'not_larger'"),
    "conv_3d": ([_n("Conv", ["x", "w3d"])], {"x": ["N", 4, 5, 5, 5]}, 17, r"only 1-D and 2-D convolutions.*\(2, 4, 3, 3, 3\)"),
    "conv_dynamic_weight": ([_n("Conv", ["x", "x"])], X9, 17, r"Conv input 1 \(weight\) 'x' must be a constant"),
    "conv_auto_pad_unknown": ([_n("Conv", ["x", "wg"], group=2, auto_pad="SAME")], X9, 17, "auto_pad 'SAME'"),
    "maxpool_1d": ([_n("MaxPool", ["x"], kernel_shape=[2])], {"x": ["N", 4, 9]}, 17, "only 2-D pooling"),
    "avgpool_dilated": ([_n("AveragePool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])], X9, 19,
                        r"AveragePool with dilations \[2, 2\]"),
    "avgpool_ceil_counting_pads": ([_n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                       ceil_mode=1, count_include_pad=1)], X10, 17, "ceil_mode=1, count_include_pad=1"),
    "batch_norm_training": ([_n("BatchNormalization", ["x", "scale", "shift", "mean", "var"], training_mode=1)], X9, 15,
                            "training_mode=1"),
    "batch_norm_extra_output": ([helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"],
                                                  ["y", "m", "v"]), _n("Add", ["y", "m"], "z")], X9, 13,
                                "output 'm' \\(beyond the first\\) is used"),
    "dropout_mask": ([helper.make_node("Dropout", ["x"], ["d", "mask"]), _n("Cast", ["mask"], "y", to=1)], X9, 13,
                     "Dropout output 'mask'"),
    "reduce_mean_noop": ([_n("ReduceMean", ["x"], noop_with_empty_axes=1)], X9, 18, "noop_with_empty_axes=1"),
    "gemm_trans_a": ([_n("Gemm", ["x", "gB"], transA=1)], V6, 17, "transA=1"),
    "gemm_dynamic_b_alpha": ([_n("Gemm", ["x", "x"], alpha=2.0)], V6, 17, "alpha or beta other than 1"),
    "gemm_bias_per_row": ([_n("Gemm", ["x", "gB", "c25"])], V6, 17, r"bias C of shape \(2, 5\)"),
    "reshape_allowzero": ([_n("Reshape", ["x", "target"], allowzero=1)], X9, 14, "allowzero=1"),
    "reshape_batch_product": ([_n("Shape", ["x"], "s"), _n("Gather", ["s", "zero"], "n"), _n("Mul", ["n", "four"], "n4"),
                               _n("Concat", ["n4", "minus"], "t", axis=0), _n("Reshape", ["x", "t"])], X9, 13,
                              r"depends on the batch size at positions \[0\]"),
    "clip_from_batch": ([_n("Shape", ["x"], "s"), _n("Gather", ["s", "z"], "n"), _n("Cast", ["n"], "m", to=1),
                         _n("Clip", ["x", "m"])], X9, 13, r"Clip input 1 \(min\) 'm' depends on the batch size"),
    "softmax_opset11_coerced": ([_n("Softmax", ["x"])], X9, 11, "only axis 3 \\(the last\\)"),
    "batch_dependent_constant": ([_n("Shape", ["x"], "s"), _n("ConstantOfShape", ["s"], "zeros"),
                                  _n("Add", ["x", "zeros"])], X9, 13, "'zeros' is computed from the batch size"),
    "constant_output": ([_n("Add", ["third", "third"])], X9, 13, "graph output 'y' is a constant"),
    "output_aliases_input": ([_n("Identity", ["x"])], X9, 13, "graph output 'y' is 'x' through Identity"),
    "constant_string": ([helper.make_node("Constant", [], ["k"], value_string="s"), _n("Relu", ["x"])], X9, 13,
                        "Constant with attribute value_string"),
}


@pytest.mark.parametrize("case", UNSUPPORTED, ids=list(UNSUPPORTED))
def test_unsupported(case):
    nodes, inputs, opset, message = UNSUPPORTED[case]
    inits = {**INITS, "neg_pads": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64),
             "sc_batch": np.array([2, 1, 1, 1], np.float32), "one": np.array([1], np.int64),
             "c4s": np.array([4], np.int64), "c25": _w(2, 5), "four": np.array([4], np.int64),
             "minus": np.array([-1], np.int64), "z": np.array(0, np.int64)}
    used = {t for n in nodes for t in n.input}
    outputs = tuple(n.output[0] for n in nodes[-1:])
    model = _model(nodes, inputs, opset, outputs=outputs, inits={k: v for k, v in inits.items() if k in used})
    with pytest.raises(UnsupportedOpError, match=message):
        import_onnx(model)


INVALID = {
    "pads_length": ([_n("Conv", ["x", "wg"], group=2, pads=[1, 1])], X9, 17,
                    r"Conv attribute pads must have 4 values, found \[1, 1\]"),
    "axes_range": ([_n("ReduceMean", ["x"], axes=[4])], X9, 17, r"axes \[4\] must be distinct and in \[-4, 4\)"),
    "flatten_axis": ([_n("Flatten", ["x"], axis=5)], X9, 17, r"axis 5 must be in \[-4, 4\]"),
    "pad_count": ([_n("Pad", ["x", "pads2"])], X9, 13, r"pads \[1, 2\] must have 2 \* rank = 8 values"),
    "pad_missing": ([_n("Pad", ["x"])], X9, 13, r"input 1 \(pads\) is missing"),
    "clip_not_scalar": ([_n("Clip", ["x", "ax_r"])], X9, 13, r"input 1 \(min\) must be a scalar"),
    "node_fails": ([_n("Add", ["x", "gB"], name="bad")], X9, 13,
                   r"node 'bad' \(opset 13\): Add fails at batch size 1 \(Add: operands could not be broadcast"),
    "hard_coded_batch": ([_n("Concat", ["x", "batch1"], axis=1)], {"x": [1, 4, 9, 9]}, 13,
                         "at batch size 2.*hard-code its batch size"),
    "rank_from_batch": ([_n("Shape", ["x"], "s"), _n("Gather", ["s", "z"], "n"), _n("Range", ["z", "n", "o"], "r"),
                         _n("ConstantOfShape", ["r"], "k"), _n("Squeeze", ["k"])], X9, 13,
                        "tensor 'k' has rank 1 at batch size 1 but 2 at batch size 2"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid(case):
    nodes, inputs, opset, message = INVALID[case]
    inits = {**INITS, "batch1": _w(1, 4, 9, 9), "z": np.array(0, np.int64), "o": np.array(1, np.int64)}
    used = {t for n in nodes for t in n.input}
    model = _model(nodes, inputs, opset, inits={k: v for k, v in inits.items() if k in used})
    with pytest.raises(ValidationError, match=message):
        import_onnx(model)


# --------------------------------------------------------------------------
# The executor's own checks.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_graph():
    return import_onnx(_model([_n("Relu", ["x"])], X9))


def test_run_float_feeds(relu_graph):
    x = -np.ones((2, 4, 9, 9), np.float64)
    np.testing.assert_array_equal(run_float(relu_graph, [x])["y"], np.zeros((2, 4, 9, 9), np.float32), strict=True)
    assert set(run_float(relu_graph, {"x": x}, outputs=["y"])) == {"y"}


@pytest.mark.parametrize(
    "feeds, outputs, message",
    [
        ([], None, r"expected 1 feed\(s\) for inputs \['x'\], found 0"),
        ({"x": np.zeros((1, 4, 9, 9), np.float32), "z": 0}, None, r"missing \[\], unknown \['z'\]"),
        ([np.zeros((1, 4, 9, 9), np.int8)], None, "input 'x': expected a float array, found int8"),
        ([[0.0]], None, "expected a float array, found list"),
        ([np.zeros((4, 9, 9), np.float32)], None, r"expected shape \(None, 4, 9, 9\) \(None: any size\), found \(4, 9, 9\)"),
        ([np.zeros((1, 4, 9, 8), np.float32)], None, r"found \(1, 4, 9, 8\)"),
        ([np.zeros((1, 4, 9, 9), np.float32)], ["nope"], r"requested outputs \['nope'\] are not computed"),
    ],
)
def test_run_float_rejects(relu_graph, feeds, outputs, message):
    with pytest.raises(ValidationError, match=message):
        run_float(relu_graph, feeds, outputs=outputs)


def test_run_float_hook_replaces_what_consumers_see():
    graph = import_onnx(_model([_n("Relu", ["x"], "r"), _n("Sigmoid", ["r"])], X9))
    seen = []

    def hook(name, value):
        seen.append(name)
        return np.zeros_like(value) if name == "r" else value

    values = run_float(graph, [np.ones((1, 4, 9, 9), np.float32)], hook=hook)
    assert seen == ["x", "r", "y"]
    np.testing.assert_array_equal(values["r"], np.zeros((1, 4, 9, 9), np.float32), strict=True)
    np.testing.assert_array_equal(values["y"], np.full((1, 4, 9, 9), 0.5, np.float32), strict=True)


def test_run_node_unknown_op():
    with pytest.raises(UnsupportedOpError, match="node 'n': op 'Hardmax' is not a canonical float op"):
        run_node(FloatNode("Hardmax", "n", ["x"], ["y"]), [np.zeros(1, np.float32)])


def test_integer_div_truncates_like_onnx():
    a, b = np.array([7, -7, 7, -7], np.int64), np.array([2, 2, -2, -2], np.int64)
    np.testing.assert_array_equal(run_node(FloatNode("Div", "d", ["a", "b"], ["c"]), [a, b])[0], [3, -3, -3, 3])


# --------------------------------------------------------------------------
# torch exports: TorchScript (with and without dynamic_axes) and dynamo.
# --------------------------------------------------------------------------


def _torch_nets():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(8, 8, 1)
            self.maxpool = nn.MaxPool2d(2)
            self.avgpool = nn.AvgPool2d(2)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            y = self.pw(nn.functional.relu6(self.dw(y))) + y
            y = self.avgpool(self.maxpool(y))
            return self.fc(torch.flatten(self.gap(y), 1))

    class Activations(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.prelu = nn.PReLU(4)
            self.act = nn.Sequential(nn.Hardswish(), nn.LeakyReLU(0.2))

        def forward(self, x):
            y = self.conv(x)
            branches = [self.act(y), torch.sigmoid(y), y * torch.sigmoid(y), torch.tanh(y), self.prelu(y)]
            return torch.softmax(torch.cat(branches, 1), dim=1)

    class Reshapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(16 * 8 * 8, 6)

        def forward(self, x):
            y = nn.functional.interpolate(self.conv(x), scale_factor=2, mode="nearest")
            y = y.reshape(y.shape[0], 2, -1)
            y = y.view(x.size(0), -1)
            return torch.softmax(self.fc(y.reshape(-1, 16 * 8 * 8)), -1)

    return torch, {"backbone": Backbone, "activations": Activations, "reshapes": Reshapes}


# torch warns that the TorchScript exporter is legacy, and about its own internals.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("style", ["trace", "trace_dynamic", "dynamo"])
@pytest.mark.parametrize("net", ["backbone", "activations", "reshapes"])
def test_torch_export(tmp_path, net, style):
    torch, nets = _torch_nets()
    if style == "dynamo":
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = nets[net]().eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / f"{net}.onnx"
    if style == "dynamo":
        torch.onnx.export(module, (x,), path, dynamo=True, verbose=False)
    else:
        dynamic = {"x": {0: "batch"}} if style == "trace_dynamic" else None
        torch.onnx.export(module, x, path, dynamo=False, opset_version=17, input_names=["x"], dynamic_axes=dynamic)
    model = onnx.load(path)
    graph = _compare(model, batch=1)
    assert graph.shapes[graph.inputs[0]] == (None, 3, 8, 8)
    assert all(graph.shapes[t][0] is None for n in graph.nodes for t in n.outputs)
    x3 = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = module(x3).numpy()
    got = run_float(graph, [x3.numpy()])[graph.outputs[0]]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
