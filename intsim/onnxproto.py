"""ONNX's protobuf messages and the few helpers intsim uses, without importing the ``onnx`` package.

``import onnx`` costs about 0.6 s of CPU, most of it ``ml_dtypes``, which its dtype tables import and whose
extension registers the bfloat16 / float8 / int4 types with numpy (0.4-0.5 s with numpy 2.4): more than
``intsim demo`` spends on its own work.  The importers and the onnxruntime float sessions need only the
message classes and arrays of numpy's own dtypes, so they come from here:

- the messages are onnx's generated ``onnx.onnx_ml_pb2``, executed on its own and registered under that
  name, so that a later ``import onnx`` reuses the module: ``onnx.ModelProto is onnxproto.ModelProto``
  (``from onnx import onnx_ml_pb2`` finds it too; only the package attribute ``onnx.onnx_ml_pb2`` is not
  set then, as Python sets it only on a submodule it loads itself);
- :func:`load`, :func:`to_array`, :func:`from_array`, :func:`attribute_value`, :func:`np_dtype`,
  :func:`make_node`, :func:`value_info` and :func:`make_model` do what ``onnx.load`` and ``onnx.helper`` /
  ``onnx.numpy_helper``'s functions of the same purpose do (``tests/test_onnxproto.py`` compares them) for the
  dtypes numpy has; anything else (bfloat16, float8, int4, string tensors, the text formats, external data)
  is handed to the ``onnx`` package, imported then.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import sys

import numpy as np

_PB2 = "onnx.onnx_ml_pb2"


def _messages():
    """onnx's generated message module, without running ``onnx/__init__.py`` unless onnx is already loaded."""
    if _PB2 in sys.modules:
        return sys.modules[_PB2]
    if "onnx" in sys.modules:
        import onnx.onnx_ml_pb2

        return onnx.onnx_ml_pb2
    package = importlib.util.find_spec("onnx")
    path = os.path.join(package.submodule_search_locations[0], "onnx_ml_pb2.py")
    spec = importlib.util.spec_from_file_location(_PB2, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PB2] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PB2]
        raise
    return module


pb = _messages()
AttributeProto, GraphProto, ModelProto, NodeProto = pb.AttributeProto, pb.GraphProto, pb.ModelProto, pb.NodeProto
TensorProto, TensorShapeProto, ValueInfoProto = pb.TensorProto, pb.TensorShapeProto, pb.ValueInfoProto

# TensorProto element types numpy holds natively, and the field each is stored in when not in raw_data
# (onnx.helper.tensor_dtype_to_field); 16- and 8-bit types in int32_data keep their bit pattern.
_NP_DTYPES = {
    TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.INT8: np.dtype(np.int8), TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT16: np.dtype(np.int16), TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT32: np.dtype(np.int32), TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.INT64: np.dtype(np.int64), TensorProto.UINT64: np.dtype(np.uint64),
}
_TENSOR_TYPES = {dtype: kind for kind, dtype in _NP_DTYPES.items()}
_FIELDS = {
    TensorProto.FLOAT: ("float_data", np.float32), TensorProto.DOUBLE: ("double_data", np.float64),
    TensorProto.INT8: ("int32_data", np.int32), TensorProto.UINT8: ("int32_data", np.int32),
    TensorProto.INT32: ("int32_data", np.int32), TensorProto.INT64: ("int64_data", np.int64),
    TensorProto.UINT32: ("uint64_data", np.uint64), TensorProto.UINT64: ("uint64_data", np.uint64),
}
_BITS_IN_INT32 = {TensorProto.FLOAT16: np.uint16, TensorProto.INT16: np.uint16, TensorProto.UINT16: np.uint16,
                  TensorProto.BOOL: np.uint8}
# onnx.load's formats other than binary protobuf, by file extension (onnx.serialization).
_TEXT_EXTENSIONS = (".txtpb", ".textproto", ".prototxt", ".pbtxt", ".json", ".onnxjson", ".onnxtxt", ".onnxtext")


def load(path: str) -> ModelProto:
    """``onnx.load(path, load_external_data=False)``: a binary model parsed here (a malformed file raises
    protobuf's ``DecodeError``), the text formats by onnx."""
    if path.lower().endswith(_TEXT_EXTENSIONS):
        import onnx

        return onnx.load(path, load_external_data=False)
    with open(path, "rb") as f:
        return ModelProto.FromString(f.read())


def np_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of a TensorProto element type (``onnx.helper.tensor_dtype_to_np_dtype``)."""
    dtype = _NP_DTYPES.get(elem_type)
    if dtype is None:
        from onnx import helper

        return helper.tensor_dtype_to_np_dtype(elem_type)
    return dtype


def to_array(tensor: TensorProto) -> np.ndarray:
    """The tensor's values as an array of its dtype (``onnx.numpy_helper.to_array``); dims that do not match
    the data raise ``ValueError``."""
    kind = tensor.data_type
    if (kind not in _NP_DTYPES or tensor.HasField("segment")
            or tensor.data_location == TensorProto.EXTERNAL):
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor)
    dtype, dims = _NP_DTYPES[kind], tensor.dims
    if tensor.HasField("raw_data"):
        data = np.frombuffer(tensor.raw_data, dtype=dtype)
        if sys.byteorder == "big":
            data = data.byteswap()
        return data.reshape(dims)
    if kind in _BITS_IN_INT32:
        bits = np.array(tensor.int32_data, dtype=np.int32).view(np.uint32).astype(_BITS_IN_INT32[kind])
        return bits.reshape(dims).view(dtype)
    field, storage = _FIELDS[kind]
    return np.asarray(getattr(tensor, field), dtype=storage).astype(dtype).reshape(dims)


def from_array(array: np.ndarray, name: str | None = None) -> TensorProto:
    """A TensorProto holding ``array`` in raw_data, little-endian (``onnx.numpy_helper.from_array``)."""
    kind = _TENSOR_TYPES.get(array.dtype)
    if kind is None:
        from onnx import numpy_helper

        return numpy_helper.from_array(array, name)
    tensor = TensorProto()
    tensor.dims.extend(array.shape)
    if name:
        tensor.name = name
    tensor.data_type = kind
    if sys.byteorder == "big":
        array = array.astype(array.dtype.newbyteorder("<"))
    tensor.raw_data = array.tobytes()
    return tensor


# AttributeProto types whose value is one field, and those whose value is a repeated field.
_ONE = {AttributeProto.FLOAT: "f", AttributeProto.INT: "i", AttributeProto.STRING: "s", AttributeProto.TENSOR: "t",
        AttributeProto.SPARSE_TENSOR: "sparse_tensor", AttributeProto.GRAPH: "g", AttributeProto.TYPE_PROTO: "tp"}
_MANY = {AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints", AttributeProto.STRINGS: "strings",
         AttributeProto.TENSORS: "tensors", AttributeProto.SPARSE_TENSORS: "sparse_tensors",
         AttributeProto.GRAPHS: "graphs", AttributeProto.TYPE_PROTOS: "type_protos"}


def attribute_value(attr: AttributeProto):
    """The attribute's value (``onnx.helper.get_attribute_value``): a number, bytes, a message, or a list of
    them; ``None`` for an UNDEFINED attribute; ``ValueError`` for a reference or an unknown type."""
    if attr.ref_attr_name:
        raise ValueError(f"Cannot get value of reference attribute: {attr}")
    if attr.type in _ONE:
        return getattr(attr, _ONE[attr.type])
    if attr.type in _MANY:
        return list(getattr(attr, _MANY[attr.type]))
    if attr.type == AttributeProto.UNDEFINED:
        return None
    raise ValueError(f"Unsupported ONNX attribute: {attr}")


def _attribute(key: str, value) -> AttributeProto:
    """``onnx.helper.make_attribute`` for numbers, strings and non-empty lists of one of them; other values
    are made by onnx."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    attr = AttributeProto()
    attr.name = key
    if isinstance(value, numbers.Integral):
        attr.i, attr.type = int(value), AttributeProto.INT
    elif isinstance(value, numbers.Real):
        attr.f, attr.type = float(value), AttributeProto.FLOAT
    elif isinstance(value, str):
        attr.s, attr.type = value.encode("utf-8"), AttributeProto.STRING
    elif values and all(isinstance(v, numbers.Integral) for v in values):
        attr.ints.extend(values)
        attr.type = AttributeProto.INTS
    elif values and all(isinstance(v, numbers.Real) for v in values):
        attr.floats.extend(values)
        attr.type = AttributeProto.FLOATS
    elif values and all(isinstance(v, str) for v in values):
        attr.strings.extend(v.encode("utf-8") for v in values)
        attr.type = AttributeProto.STRINGS
    else:
        from onnx import helper

        return helper.make_attribute(key, value)
    return attr


def make_node(op_type: str, inputs, outputs, name: str | None = None, domain: str | None = None,
              **attrs) -> NodeProto:
    """``onnx.helper.make_node``: the attributes sorted by name, those given as ``None`` left out."""
    node = NodeProto()
    node.op_type = op_type
    node.input.extend(inputs)
    node.output.extend(outputs)
    if name:
        node.name = name
    if domain is not None:
        node.domain = domain
    node.attribute.extend(_attribute(key, value) for key, value in sorted(attrs.items()) if value is not None)
    return node


def value_info(name: str, elem_type: int, shape) -> ValueInfoProto:
    """``onnx.helper.make_tensor_value_info``: ``shape`` None for no shape at all, a dim None for an unknown
    one, a str for a named one."""
    info = ValueInfoProto()
    info.name = name
    tensor_type = info.type.tensor_type
    tensor_type.elem_type = elem_type
    if shape is not None:
        tensor_type.shape.dim.extend([])
        for d in shape:
            dim = tensor_type.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            elif d is not None:
                dim.dim_value = d
    return info


def make_model(nodes, name: str, inputs, outputs, initializers, opset: int, ir_version: int) -> ModelProto:
    """``onnx.helper.make_model(make_graph(nodes, name, inputs, outputs, initializers),
    opset_imports=[make_opsetid("", opset)], ir_version=ir_version)``."""
    model = ModelProto()
    model.ir_version = ir_version
    graph = model.graph
    graph.node.extend(nodes)
    graph.name = name
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(initializers)
    opset_id = model.opset_import.add()
    opset_id.domain, opset_id.version = "", opset
    return model
