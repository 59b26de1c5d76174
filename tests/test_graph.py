"""Graph validation: every check that runs when a graph is built raises a typed, specific error."""

import copy

import numpy as np
import pytest

from intsim import Graph, Node, TensorInfo, UnsupportedOpError, ValidationError
from intsim.examples import branchy, tiny_cnn


def _rebuild(graph, mutate):
    graph = copy.deepcopy(graph)
    mutate(graph)
    return Graph(graph.name, graph.profile, graph.tensors, graph.nodes, graph.inputs, graph.outputs)


def _node(graph, name):
    return next(n for n in graph.nodes if n.name == name)


def test_builders_validate():
    tiny_cnn("tflite")
    branchy("onnxruntime")


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda g: setattr(_node(g, "conv"), "op", "conv3d"), UnsupportedOpError, "op 'conv3d'.*supported"),
        (lambda g: _node(g, "conv").inputs.__setitem__(0, "nope"), ValidationError, "input 'nope' has no tensor"),
        (lambda g: setattr(_node(g, "dw"), "name", "conv"), ValidationError, "node name 'conv' is used twice"),
        (lambda g: g.nodes.reverse(), ValidationError, "not produced before"),
        (lambda g: g.outputs.__setitem__(0, "nope"), ValidationError, "output 'nope' is never produced"),
        (lambda g: _node(g, "conv").params.__setitem__("weight", np.zeros((4, 3, 3, 2), np.int8)), ValidationError,
         "conv2d 'conv': input channels 3 != weight channels 2 x groups 1"),
        (lambda g: _node(g, "conv").params.__setitem__("weight", np.zeros((4, 3, 3, 3), np.uint8)), ValidationError,
         "weight dtype must be int16 or int8 .* found uint8"),
        (lambda g: _node(g, "conv").params.__setitem__("bias", np.zeros(3, np.int32)), ValidationError,
         r"bias must have shape \(4,\)"),
        (lambda g: _node(g, "conv").params.__setitem__("bias", np.full(4, 2**40, np.int64)), ValidationError,
         r"bias must lie in \[-2147483648, 2147483647\]"),
        (lambda g: _node(g, "conv").params.__setitem__("multiplier", np.full(4, -1, np.int32)), ValidationError,
         "multiplier must lie in"),
        (lambda g: _node(g, "conv").params.__setitem__("shift", np.full(4, 40, np.int32)), ValidationError,
         "shift must lie in"),
        (lambda g: _node(g, "conv").params.pop("shift"), ValidationError, "missing parameter 'shift'"),
        (lambda g: _node(g, "conv").params.__setitem__("weight_zero_point", np.full(4, 300)), ValidationError,
         "weight_zero_point must lie in"),
        (lambda g: _node(g, "conv").attrs.__setitem__("clamp", [0, 300]), ValidationError, "clamp"),
        (lambda g: _node(g, "conv").attrs.__setitem__("strides", [0, 1]), ValidationError, "strides must be >= 1"),
        (lambda g: _node(g, "conv").attrs.__setitem__("pads", [1, 1]), ValidationError, "pads must be a list of 4"),
        (lambda g: _node(g, "dw").attrs.__setitem__("groups", 3), ValidationError, "input channels 4"),
        (lambda g: _node(g, "conv").attrs.__setitem__("pairwise_int16", 1), ValidationError,
         "attribute pairwise_int16 must be a bool, found 1"),
        (lambda g: g.tensors["t1"].__setattr__("shape", (None, 8, 8, 5)), ValidationError,
         r"output 't1' is declared \(None, 8, 8, 5\) but the op produces \(None, 8, 8, 4\)"),
        (lambda g: g.tensors["t3"].__setattr__("zero_point", 9), ValidationError, "must be quantized like input"),
        (lambda g: _node(g, "pool").attrs.__setitem__("pads", [2, 0, 0, 0]), ValidationError,
         "smaller than the kernel"),
        (lambda g: _node(g, "gap").attrs.__setitem__("axes", [1, 1]), ValidationError, "repeats an axis"),
        (lambda g: _node(g, "gap").attrs.__setitem__("axes", [4]), ValidationError, "out of range"),
        (lambda g: _node(g, "fc").params.__setitem__("weight", np.zeros((5, 7), np.int8)), ValidationError,
         r"must be \[batch, 7\]"),
        (lambda g: _node(g, "softmax").params.__setitem__("exp_table", np.zeros(10, np.int32)), ValidationError,
         r"exp_table must have shape \(256,\)"),
    ],
)
def test_invalid_graphs_are_rejected(mutate, error, message):
    with pytest.raises(error, match=message):
        _rebuild(tiny_cnn("tflite"), mutate)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: _node(g, "tanh").params.__setitem__("table", np.zeros(256, np.int16)), "table dtype"),
        (lambda g: _node(g, "reshape").attrs.__setitem__("shape", [0, 7, 12]), "cannot reshape"),
        (lambda g: _node(g, "reshape").attrs.__setitem__("shape", [-1, -1, 12]), "more than one -1"),
        (lambda g: _node(g, "transpose").attrs.__setitem__("perm", [0, 1, 1]), "permutation"),
        (lambda g: _node(g, "squeeze").attrs.__setitem__("axes", [2]), "has size 12, not 1"),
        (lambda g: _node(g, "cat").inputs.__setitem__(1, "p"), "agree on every dimension"),
        (lambda g: _node(g, "matmul").inputs.__setitem__(1, "t"), "inner dimensions differ"),
        (lambda g: _node(g, "add").attrs.__setitem__("left_shift", 31), r"left_shift must be in \[0, 30\]"),
        (lambda g: _node(g, "add").attrs.__setitem__("subtract", "yes"), "subtract must be a boolean"),
        (lambda g: _node(g, "add").inputs.__setitem__(1, "p"), "do not broadcast"),
        (lambda g: _node(g, "pad").attrs.__setitem__("value", 1000), "value must be in"),
        (lambda g: _node(g, "avg").attrs.__setitem__("kernel", [3]), "kernel must be a list of 2"),
    ],
)
def test_invalid_branchy_graphs_are_rejected(mutate, message):
    with pytest.raises(ValidationError, match=message):
        _rebuild(branchy("tflite"), mutate)


def test_float_rounding_needs_scales_and_integer_rounding_refuses_them():
    with pytest.raises(ValidationError, match="missing parameter 'scale'"):
        _rebuild(tiny_cnn("onnxruntime"), lambda g: _node(g, "conv").params.pop("scale"))
    with pytest.raises(ValidationError, match="attribute rounding must be one of"):
        _rebuild(tiny_cnn("tflite"), lambda g: _node(g, "conv").attrs.__setitem__("rounding", "stochastic"))
    with pytest.raises(ValidationError, match="only stored for float rounding modes"):
        _rebuild(tiny_cnn("tflite"), lambda g: _node(g, "conv").params.__setitem__("scale", np.ones(4)))
    with pytest.raises(ValidationError, match="integer softmax needs an integer rounding mode"):
        tiny_cnn("onnxruntime", softmax=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "float32"}, "dtype must be one of"),
        ({"shape": (1, 0)}, "dimensions must be >= 1"),
        ({"shape": "abc"}, "shape must be a sequence"),
        ({"scale": 0.0}, "scale must be finite and > 0"),
        ({"scale": float("nan")}, "scale must be finite and > 0"),
        ({"zero_point": 128}, r"zero_point must be an integer in \[-128, 127\]"),
        ({"zero_point": 1.5}, "zero_point must be an integer"),
    ],
)
def test_tensor_info_rejects_bad_fields(kwargs, message):
    fields = {"name": "t", "dtype": "int8", "shape": (None, 4), "scale": 0.1, "zero_point": 0}
    fields.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        TensorInfo(**fields)


def test_graph_needs_inputs_outputs_and_tensor_entries():
    t = TensorInfo("x", "int8", (1, 4), 0.1, 0)
    with pytest.raises(ValidationError, match="at least one input and one output"):
        Graph("g", "tflite", [t], [], [], ["x"])
    with pytest.raises(ValidationError, match="input 'y' has no tensor entry"):
        Graph("g", "tflite", [t], [], ["y"], ["x"])
    with pytest.raises(ValidationError, match="output 'z' is never produced"):
        Graph("g", "tflite", [t, TensorInfo("z", "int8", (1, 4), 0.1, 0)], [], ["x"], ["z"])
    node = Node("transpose", "tr", ["x"], ["x"], {"perm": [1, 0]})
    with pytest.raises(ValidationError, match="output 'x' is produced twice"):
        Graph("g", "tflite", [t], [node], ["x"], ["x"])
