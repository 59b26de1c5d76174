"""intsim.onnxproto against the onnx package's own helpers (the reference: what onnx.load, onnx.helper and
onnx.numpy_helper return for the same input), and what ``import intsim`` leaves unimported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from intsim import onnxproto
from intsim.models import model_path

NUMPY_TYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.INT8,
               TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32,
               TensorProto.INT64, TensorProto.UINT64]


def _values(kind, shape, seed=0):
    dtype = helper.tensor_dtype_to_np_dtype(kind)
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    values.flat[: min(2, values.size)] = [info.min, info.max][: min(2, values.size)]
    return values


@pytest.mark.parametrize("kind", NUMPY_TYPES, ids=TensorProto.DataType.Name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 5), (2, 1, 4)], ids=str)
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_field"])
def test_to_array_equals_numpy_helper(kind, shape, raw):
    values = _values(kind, shape)
    tensor = helper.make_tensor("t", kind, shape, values.tobytes() if raw else values.flatten().tolist(), raw=raw)
    want = numpy_helper.to_array(tensor)
    got = onnxproto.to_array(tensor)
    np.testing.assert_array_equal(got, want, strict=True)
    np.testing.assert_array_equal(got, values, strict=True)


def test_to_array_of_wrong_dims_is_a_value_error_as_in_onnx():
    tensor = TensorProto(name="t", dims=(2, 3), data_type=TensorProto.FLOAT, raw_data=np.zeros(5, np.float32).tobytes())
    with pytest.raises(ValueError):
        numpy_helper.to_array(tensor)
    with pytest.raises(ValueError):
        onnxproto.to_array(tensor)


def test_to_array_hands_other_dtypes_to_onnx():
    tensor = helper.make_tensor("s", TensorProto.STRING, (2,), [b"ab", b"c"])
    np.testing.assert_array_equal(onnxproto.to_array(tensor), numpy_helper.to_array(tensor), strict=True)


@pytest.mark.parametrize("kind", NUMPY_TYPES, ids=TensorProto.DataType.Name)
def test_from_array_equals_numpy_helper(kind):
    values = _values(kind, (3, 4), seed=1)
    got = onnxproto.from_array(values, "w")
    assert got.SerializeToString() == numpy_helper.from_array(values, "w").SerializeToString()
    assert onnxproto.from_array(values[0, 0]).SerializeToString() == numpy_helper.from_array(values[0, 0]).SerializeToString()


ATTRIBUTES = {"i": 3, "neg": -7, "flag": True, "f": 0.25, "s": "nearest", "ints": [1, -2, 3], "floats": [0.5, 2.0],
              "mixed": [1, 2.5], "strings": ["a", "bc"], "np_ints": np.array([4, 5], np.int64),
              "np_scalar": np.float32(1.5), "t": numpy_helper.from_array(np.arange(3, dtype=np.int64)),
              "bytes": b"raw", "skipped": None}


def test_make_node_equals_helper():
    want = helper.make_node("Conv", ["x", "w"], ["y"], name="n", domain="", **ATTRIBUTES)
    got = onnxproto.make_node("Conv", ["x", "w"], ["y"], name="n", domain="", **ATTRIBUTES)
    assert got.SerializeToString() == want.SerializeToString()
    bare = onnxproto.make_node("Relu", ("x",), ("y",))
    assert bare.SerializeToString() == helper.make_node("Relu", ["x"], ["y"]).SerializeToString()


def test_attribute_value_equals_helper():
    node = helper.make_node("Op", [], [], **ATTRIBUTES,
                            g=helper.make_graph([], "g", [], []), graphs=[helper.make_graph([], "h", [], [])])
    node.attribute.add(name="undefined")
    for attr in node.attribute:
        assert onnxproto.attribute_value(attr) == helper.get_attribute_value(attr), attr.name
    reference = onnx.AttributeProto(name="r", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT)
    with pytest.raises(ValueError, match="reference attribute"):
        onnxproto.attribute_value(reference)


@pytest.mark.parametrize("shape", [None, (), (None, 3, "batch")], ids=str)
def test_value_info_equals_helper(shape):
    got = onnxproto.value_info("x", TensorProto.INT64, shape)
    assert got.SerializeToString() == helper.make_tensor_value_info("x", TensorProto.INT64, shape).SerializeToString()


def test_make_model_equals_helper():
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    inits = [numpy_helper.from_array(np.ones(2, np.float32), "c")]
    want = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    got = onnxproto.make_model(nodes, "g", inputs, outputs, inits, opset=17, ir_version=9)
    assert got.SerializeToString() == want.SerializeToString()


def test_load_equals_onnx_load(tmp_path):
    path = str(model_path("resnet_digits.onnx"))
    model = onnxproto.load(path)
    assert isinstance(model, onnx.ModelProto)
    assert model.SerializeToString() == onnx.load(path, load_external_data=False).SerializeToString()
    text = tmp_path / "m.txtpb"
    onnx.save(model, str(text), format="textproto")
    assert onnxproto.load(str(text)).SerializeToString() == model.SerializeToString()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff not a model")
    with pytest.raises(DecodeError):
        onnxproto.load(str(garbage))


# The heavy packages a plain `import intsim` (or importing an ONNX model) must not load: onnx costs 0.6 s
# (ml_dtypes), onnxruntime, matplotlib, dask and torch are imported where they are used.
_PROBE = """
import sys
import intsim
after_import = sorted(set(sys.modules) & set(sys.argv[1:]))
from intsim.importers.onnx import import_onnx
from intsim.models import model_path
import_onnx(model_path("resnet_digits.onnx"))
after_onnx = sorted(m for m in sys.modules if m in ("onnx", "ml_dtypes"))
import onnx
from intsim import onnxproto
print(after_import, after_onnx, onnx.ModelProto is onnxproto.ModelProto)
"""


def test_import_intsim_leaves_heavy_packages_unimported():
    heavy = ["onnx", "onnxruntime", "torch", "matplotlib", "dask", "ml_dtypes", "scipy.linalg"]
    result = subprocess.run([sys.executable, "-c", _PROBE, *heavy], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[0] == "[] [] True"
