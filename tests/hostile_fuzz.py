"""Seeded hostile-input fuzzing of intsim's loaders and runtime (issue 14).

Every case mutates one valid artifact (an ``.intsim`` file, a ``.tflite``
flatbuffer, a float ONNX model, a QOperator ONNX model) or the arguments of a
run, then loads and runs it.  Cases run in worker subprocesses under an
address-space limit, batched to amortise numba's start-up; the parent reads one
line per case, so a crash (the worker dies) or a hang (no line within the
timeout) is charged to the case that was running, and the worker restarts after it.

Outcomes:

``typed``       an :class:`intsim.errors.IntsimError`
``accepted``    it ran (for the ``garbage`` category, whose every case is invalid
                input the peers reject, this is a silently accepted input)
``untyped``     any other exception (the class name is kept)
``memory``      ``MemoryError``, or a case whose peak RSS grew by more than :data:`RSS_LIMIT`
``crash``       the worker died (a signal, e.g. SIGSEGV)
``hang``        no answer within the per-case timeout

Run everything (the numbers of the issue's closing table)::

    python tests/hostile_fuzz.py --per-category 120

The file imports only intsim's public loaders, so it also measures an older
checkout (``PYTHONPATH=/path/to/checkout``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

SEED = 20261207
AS_LIMIT = 3 * 2**30  # address space of a worker: numba and onnxruntime reserve ~1.2 GiB of it at import
RSS_LIMIT = 2**30  # a case whose peak resident memory grows past the resting worker by this is a blow-up
CASE_TIMEOUT = 30.0
TFLITE_DIR = Path(__file__).parent / "data" / "tflite"
TFLITE_FILES = ("conv_5x5_valid_s2", "mean_keepdims", "reshape_fc", "softmax_fc", "residual_cnn", "pad_conv")
CATEGORIES = ("intsim_bytes", "intsim_manifest", "intsim_zip", "tflite_bytes", "onnx_float", "onnx_qop", "golden",
              "runtime", "garbage")


# --------------------------------------------------------------------------
# The valid artifacts every mutation starts from.
# --------------------------------------------------------------------------


def float_onnx_model():
    """Conv 3x3 -> Relu -> MaxPool 2x2 -> Flatten -> Gemm, input [N, 1, 8, 8]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.2, (10, 64)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def qop_onnx_model(conv_x_zero_point=128, conv_x_zp_dtype=np.uint8):
    """QuantizeLinear -> QLinearConv 3x3 -> QLinearConv 1x1 -> DequantizeLinear, uint8 codes, input
    [N, 2, 6, 6].  ``conv_x_zero_point`` is the second conv's own ``x_zero_point`` (the producer's is 128)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)

    def c(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        c("xs", np.float32(0.05)), c("xz", np.uint8(128)),
        c("w1", rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)), c("w1s", np.float32(0.02)),
        c("w1z", np.int8(0)), c("b1", rng.integers(-500, 500, 4).astype(np.int32)),
        c("ys", np.float32(0.1)), c("yz", np.uint8(128)),
        c("xz2", conv_x_zp_dtype(conv_x_zero_point)),
        c("w2", rng.integers(-127, 128, (5, 4, 1, 1)).astype(np.int8)), c("w2s", np.float32(0.03)),
        c("w2z", np.int8(0)), c("b2", rng.integers(-500, 500, 5).astype(np.int32)),
        c("zs", np.float32(0.07)), c("zz", np.uint8(120)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w1", "w1s", "w1z", "ys", "yz", "b1"], ["yq"],
                         name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("QLinearConv", ["yq", "ys", "xz2", "w2", "w2s", "w2z", "zs", "zz", "b2"], ["zq"],
                         name="conv2", kernel_shape=[1, 1]),
        helper.make_node("DequantizeLinear", ["zq", "zs", "zz"], ["z"], name="dq"),
    ]
    graph = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 6, 6])], inits)
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def build_base(directory: Path) -> dict:
    """Write the valid artifacts into ``directory``; returns their paths."""
    import intsim
    from intsim.examples import tiny_cnn

    directory.mkdir(parents=True, exist_ok=True)
    paths = {"intsim": directory / "tiny.intsim", "onnx": directory / "float.onnx", "qop": directory / "qop.onnx"}
    intsim.Model(tiny_cnn("tflite")).save(paths["intsim"])
    paths["onnx"].write_bytes(float_onnx_model().SerializeToString())
    paths["qop"].write_bytes(qop_onnx_model().SerializeToString())
    paths["golden"] = directory / "golden"
    _export_golden(intsim.Model(tiny_cnn("tflite")), [np.zeros((2, 8, 8, 3), np.int8)], paths["golden"])
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------
# Actions: what a user does with a file.
# --------------------------------------------------------------------------


def _batch(model, n=2, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for info in model.inputs:
        shape = tuple(n if d is None else d for d in info.shape)
        lo, hi = np.iinfo(info.np_dtype).min, np.iinfo(info.np_dtype).max
        arrays.append(rng.integers(lo, hi + 1, size=shape).astype(info.np_dtype))
    return arrays


NAIVE_MAX_ELEMENTS = 20000  # the naive twins are plain Python: larger (valid) inputs run fast only


def _use(model):
    """Run integer codes through both backends and insist they agree (a silent disagreement is a wrong answer)."""
    codes = _batch(model)
    fast = model.run_int(*codes)
    if sum(c.size for c in codes) > NAIVE_MAX_ELEMENTS:
        return
    naive = model.with_backend("naive").run_int(*codes)
    for a, b in zip(fast if isinstance(fast, tuple) else (fast,), naive if isinstance(naive, tuple) else (naive,)):
        if a.shape != b.shape or not np.array_equal(a, b):
            raise AssertionError("fast and naive backends disagree")


def load_and_use_intsim(path):
    import intsim

    _use(intsim.load(path))


def load_and_use_tflite(path):
    from intsim import Model
    from intsim.importers.tflite import load_tflite

    _use(Model(load_tflite(path)))


def load_and_use_onnx(path):
    import intsim

    rng = np.random.default_rng(3)
    model = intsim.convert(str(path), rng.normal(size=(4, 1, 8, 8)).astype(np.float32), profile="tflite",
                           progress=False)
    _use(model)


def load_golden_formats(path):
    """Read a (damaged) golden directory in each of its formats."""
    from intsim.hwval import load_golden

    for fmt in ("npy", "hex", "bin"):
        load_golden(path, fmt)


def load_and_use_qop(path):
    from intsim import Model
    from intsim.importers.onnx_qop import load_onnx_qoperator

    _use(Model(load_onnx_qoperator(str(path))))


# --------------------------------------------------------------------------
# Mutations.
# --------------------------------------------------------------------------

HOSTILE_VALUES = (None, -1, 0, 1, 2**31, 10**9, -(10**9), 2**70, 1.5, float("nan"), "x", "", [], {}, True,
                  [0], [1.5, 1.5], ["a"], [True, False], [-1, -1, -1], [10**9] * 4, [0, 0, 0, 0])


def mutate_bytes(data: bytes, rng) -> bytes:
    data = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        return bytes(data[: rng.integers(len(data))])
    for _ in range(rng.integers(1, 5)):
        pos = rng.integers(len(data))
        data[pos] = rng.integers(256) if kind == 1 else data[pos] ^ (1 << rng.integers(8))
    return bytes(data)


def _json_paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_paths(v, path + (i,))


def mutate_manifest(manifest: dict, rng) -> dict:
    paths = [p for p in _json_paths(manifest) if p]
    path = paths[rng.integers(len(paths))]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    kind = rng.integers(4)
    if kind == 0 and isinstance(parent, dict):
        del parent[key]
    elif kind == 1 and isinstance(parent, list):
        parent.append(json.loads(json.dumps(parent[key])))
    else:
        parent[key] = json.loads(json.dumps(HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]))
    return manifest


def read_intsim(path) -> tuple[dict, dict]:
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return json.loads(members.pop("manifest.json")), members


def write_intsim(path, manifest_bytes: bytes, members: dict, compression=zipfile.ZIP_DEFLATED, extra=()):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("manifest.json", manifest_bytes)
        for name, data in members.items():
            zf.writestr(name, data)
        for name, data in extra:
            zf.writestr(name, data)


def _npy_header(dtype="<i1", shape=(10**13,)) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode() + b" "
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _edit(base, fn, compression=zipfile.ZIP_DEFLATED):
    """A hostile ``.intsim``: ``fn(manifest, members)`` edits the parsed file, which is written back."""

    def make(path):
        manifest, members = read_intsim(base["intsim"])
        manifest_bytes = fn(manifest, members)
        if manifest_bytes is None:
            manifest_bytes = json.dumps(manifest).encode()
        write_intsim(path, manifest_bytes, members, compression)

    return make


def _node(manifest, name):
    return next(n for n in manifest["graph"]["nodes"] if n["name"] == name)


def _set(fn):
    def edit(manifest, members):
        fn(manifest, members)

    return edit


def _flatten_axis0(manifest, members):
    """Replace the mean by a flatten at axis 0 whose output the fc reads (the issue's segfault)."""
    gap = _node(manifest, "gap")
    gap.update(op="flatten", attrs={"axis": 0}, params={})
    tensors = {t["name"]: t for t in manifest["graph"]["tensors"]}
    tensors["t4"].update(shape=[1, None], scale=tensors["t3"]["scale"], zero_point=tensors["t3"]["zero_point"])


def _zip_bomb(manifest, members):
    member = _node(manifest, "conv")["params"]["weight"]
    members[member] = _npy_header("<i1", (4, 3, 3, 3 + 2**28)) + bytes(2**28)


def _huge_header(manifest, members):
    members[_node(manifest, "conv")["params"]["weight"]] = _npy_header("<i1", (10**13,))


def _malformed_header(manifest, members):
    members[_node(manifest, "conv")["params"]["bias"]] = b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i4'(\n"


def _object_npy(manifest, members):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    members[_node(manifest, "conv")["params"]["bias"]] = buffer.getvalue()


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _dup_tensor(manifest, members):
    tensors = manifest["graph"]["tensors"]
    dup = json.loads(json.dumps(tensors[1]))
    dup["zero_point"] = dup["zero_point"] + 1
    tensors.append(dup)


def _deep_json(manifest, members):
    return b'{"format": "intsim", "schema_version": 1, "graph": ' + b"[" * 100000 + b"]" * 100000 + b"}"


def _big_int(manifest, members):
    return json.dumps(manifest).replace('"schema_version": 1', '"schema_version": ' + "9" * 5000).encode()


def _padded_manifest(manifest, members):
    return json.dumps(manifest).encode() + b" " * (300 * 2**20)


def _bad_utf8(manifest, members):
    return b"\xff\xfe" + json.dumps(manifest).encode()


def _pad_huge(manifest, members):
    graph = manifest["graph"]
    x = graph["tensors"][0]
    graph["tensors"].append({"name": "xp", "dtype": x["dtype"], "shape": [None, 8 + 10**9, 8, 3],
                             "scale": x["scale"], "zero_point": x["zero_point"]})
    graph["nodes"].insert(0, {"op": "pad", "name": "padbig", "inputs": ["x"], "outputs": ["xp"],
                              "attrs": {"pads_before": [0, 10**9, 0, 0], "pads_after": [0, 0, 0, 0]}, "params": {}})
    graph["outputs"] = ["xp"]


def _traversal(manifest, members):
    _node(manifest, "conv")["params"]["weight"] = "../../../etc/passwd"


def _no_nodes(manifest, members):
    manifest["graph"]["nodes"] = []


def _zip_with(extra, compression=zipfile.ZIP_DEFLATED, flag_bits=0):
    def make(base):
        def write(path):
            manifest, members = read_intsim(base["intsim"])
            write_intsim(path, json.dumps(manifest).encode(), members, compression, extra)
            if flag_bits:
                data = bytearray(Path(path).read_bytes())
                pos = data.find(b"PK\x01\x02")  # first central directory entry: general purpose flag at +8
                data[pos + 8] |= flag_bits
                local = int.from_bytes(data[pos + 42:pos + 46], "little")
                data[local + 6] |= flag_bits
                Path(path).write_bytes(bytes(data))

        return write

    return make


def _corrupt_compressed(compression):
    def make(base):
        def write(path):
            manifest, members = read_intsim(base["intsim"])
            write_intsim(path, json.dumps(manifest).encode() * 20, members, compression)
            data = bytearray(Path(path).read_bytes())
            start = data.find(b"PK\x03\x04") + 30 + len("manifest.json")
            for i in range(start + 20, start + 60):
                data[i] ^= 0x5A
            Path(path).write_bytes(bytes(data))

        return write

    return make


ZIP_CASES = [
    ("zip bomb member", lambda b: _edit(b, _zip_bomb)),
    ("npy header of 1e13 elements", lambda b: _edit(b, _huge_header)),
    ("malformed npy header", lambda b: _edit(b, _malformed_header)),
    ("object npy (pickle)", lambda b: _edit(b, _object_npy)),
    ("deeply nested JSON", lambda b: _edit(b, _deep_json)),
    ("5000-digit integer", lambda b: _edit(b, _big_int)),
    ("manifest padded to 300 MiB", lambda b: _edit(b, _padded_manifest)),
    ("manifest not UTF-8", lambda b: _edit(b, _bad_utf8)),
    ("pad of 1e9", lambda b: _edit(b, _pad_huge)),
    ("member path traversal", lambda b: _edit(b, _traversal)),
    ("graph with no nodes", lambda b: _edit(b, _no_nodes)),
    ("flatten axis 0 (fast and naive disagree)", lambda b: _edit(b, _flatten_axis0)),
    ("flatten axis 0, batch 200,000 (segfault)", lambda b: _edit(b, _flatten_axis0)),
    ("encrypted flag", _zip_with((), flag_bits=0x1)),
    ("corrupt deflate", _corrupt_compressed(zipfile.ZIP_DEFLATED)),
    ("corrupt lzma", _corrupt_compressed(zipfile.ZIP_LZMA)),
    ("corrupt bzip2", _corrupt_compressed(zipfile.ZIP_BZIP2)),
]


def _flatbuffer_field(table, slot: int) -> int:
    """Absolute byte position of field ``slot`` (4 + 2 * field index) of a flatbuffer table, 0 if absent."""
    offset = table._tab.Offset(slot)
    return table._tab.Pos + offset if offset else 0


def _tflite_patch(name, edit):
    """A TFLite file from tests/data/tflite with ``edit(blob, model)`` patching bytes in place."""

    def make(base):
        def write(path):
            import tflite

            blob = bytearray((TFLITE_DIR / f"{name}.tflite").read_bytes())
            edit(blob, tflite.Model.GetRootAsModel(bytes(blob), 0))
            Path(path).write_bytes(bytes(blob))

        return write

    return make


def _tflite_output_minus_one(blob, model):
    sub = model.Subgraphs(0)
    vec = sub._tab.Vector(sub._tab.Offset(8))  # SubGraph.outputs
    blob[vec:vec + 4] = (-1).to_bytes(4, "little", signed=True)


def _first_op(model, builtin: str):
    import tflite

    sub = model.Subgraphs(0)
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == getattr(tflite.BuiltinOperator, builtin):
            return sub, op
    raise AssertionError(f"no {builtin}")


def _tflite_padding_7(blob, model):
    import tflite

    _, op = _first_op(model, "CONV_2D")
    options, table = tflite.Conv2DOptions(), op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    blob[_flatbuffer_field(options, 4)] = 7  # Conv2DOptions.padding (present: the file's is VALID)


def _tflite_mean_axis(blob, model):
    sub, op = _first_op(model, "MEAN")
    buffer = model.Buffers(sub.Tensors(op.Inputs(1)).Buffer())
    start = buffer._tab.Vector(buffer._tab.Offset(4))
    blob[start:start + 4] = (5).to_bytes(4, "little", signed=True)  # rank 4: 5 wraps to axis 1


def _qop_edit(fn, **model_args):
    def make(base):
        def write(path):
            from onnx import numpy_helper

            model = qop_onnx_model(**model_args)
            fn(model, numpy_helper)
            Path(path).write_bytes(model.SerializeToString())

        return write

    return make


def _replace_init(model, numpy_helper, name, value):
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def _float_edit(fn):
    def make(base):
        def write(path):
            model = float_onnx_model()
            fn(model)
            Path(path).write_bytes(model.SerializeToString())

        return write

    return make


def _set_attr(model, node_name, key, value):
    from onnx import helper

    node = next(n for n in model.graph.node if n.name == node_name)
    for i, a in enumerate(node.attribute):
        if a.name == key:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(key, value))


# (what, make(base) -> write(path), action); every one is invalid input that a peer rejects.
GARBAGE_CASES = [
    (".intsim duplicate tensors entry", lambda b: _edit(b, _dup_tensor), "intsim"),
    (".intsim duplicate zip member", _zip_with((("arrays/0.bias.npy", _npy_bytes(np.arange(4, dtype=np.int32))),)),
     "intsim"),
    ("QOperator int64 bias beyond int32", _qop_edit(lambda m, h: _replace_init(m, h, "b1", np.array([2**40] * 4))),
     "qop"),
    ("QOperator float bias", _qop_edit(lambda m, h: _replace_init(m, h, "b1", np.ones(4, np.float32))), "qop"),
    ("QOperator float zero point", _qop_edit(lambda m, h: _replace_init(m, h, "xz", np.float32(128))), "qop"),
    ("QOperator int16 zero point on uint8", _qop_edit(lambda m, h: _replace_init(m, h, "yz", np.int16(128))), "qop"),
    ("TFLite MEAN axis out of range", _tflite_patch("mean_keepdims", _tflite_mean_axis), "tflite"),
    ("TFLite padding enum 7", _tflite_patch("conv_5x5_valid_s2", _tflite_padding_7), "tflite"),
    ("TFLite output index -1", _tflite_patch("conv_5x5_valid_s2", _tflite_output_minus_one), "tflite"),
    ("ONNX strides [1.5, 1.5]", _float_edit(lambda m: _set_attr(m, "conv", "strides", [1.5, 1.5])), "onnx"),
    ("ONNX kernel_shape contradicts weight", _float_edit(lambda m: _set_attr(m, "conv", "kernel_shape", [5, 5])),
     "onnx"),
]

def load_and_run_big_batch(path):
    """run_int on a batch of 200,000 (the issue's segfault: a kernel read past its weight)."""
    import intsim

    model = intsim.load(path)
    model.run_int(np.zeros((200_000,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].np_dtype))


ACTIONS = {"intsim": load_and_use_intsim, "intsim_big_batch": load_and_run_big_batch, "tflite": load_and_use_tflite,
           "onnx": load_and_use_onnx, "qop": load_and_use_qop, "golden": load_golden_formats}


def _onnx_mutation(model, rng):
    """Edit one attribute, input dimension, initializer dimension or node of a model."""
    from onnx import helper

    graph = model.graph
    kind = rng.integers(5)
    if kind == 0:
        nodes = [n for n in graph.node if n.attribute]
        node = nodes[rng.integers(len(nodes))]
        attr = node.attribute[rng.integers(len(node.attribute))]
        value = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
        node.attribute.remove(attr)
        if value is not None and value != {} and value != []:
            try:
                node.attribute.append(helper.make_attribute(attr.name, value))
            except (ValueError, TypeError):  # not encodable in an AttributeProto (2**70): the attribute is dropped
                pass
    elif kind == 1:
        dims = graph.input[0].type.tensor_type.shape.dim
        dim = dims[rng.integers(len(dims))]
        dim.Clear()
        dim.dim_value = int(rng.choice([0, 1, -5, 200000, 2**40, 7]))
    elif kind == 2:
        init = graph.initializer[rng.integers(len(graph.initializer))]
        if init.dims:
            init.dims[rng.integers(len(init.dims))] = int(rng.choice([0, 1, 3, 2**31, -1]))
    elif kind == 3:
        del graph.node[rng.integers(len(graph.node))]
    else:
        data = bytearray(model.SerializeToString())
        return mutate_bytes(bytes(data), rng)
    return model.SerializeToString()


RUNTIME_ARGS = [
    ("wrong rank", lambda m: m.run_int(np.zeros((2, 8, 8), np.int8))),
    ("wrong dtype float to run_int", lambda m: m.run_int(np.zeros((2, 8, 8, 3), np.float32))),
    ("out of range codes", lambda m: m.run_int(np.full((2, 8, 8, 3), 1000, np.int32))),
    ("object array", lambda m: m.run_int(np.array([[object()]], dtype=object))),
    ("string", lambda m: m.run("not an array")),
    ("no inputs", lambda m: m.run_int()),
    ("two inputs", lambda m: m.run_int(np.zeros((1, 8, 8, 3), np.int8), np.zeros((1, 8, 8, 3), np.int8))),
    ("NaN", lambda m: m.run(np.full((1, 8, 8, 3), np.nan, np.float32))),
    ("inf", lambda m: m.run(np.full((1, 8, 8, 3), np.inf, np.float64))),
    ("complex", lambda m: m.run(np.zeros((1, 8, 8, 3), np.complex64))),
    ("bool", lambda m: m.run_int(np.zeros((1, 8, 8, 3), bool))),
    ("empty batch run", lambda m: _expect_empty(m.run(np.zeros((0, 8, 8, 3), np.float32)), (0, 5))),
    ("empty batch run_int", lambda m: _expect_empty(m.run_int(np.zeros((0, 8, 8, 3), np.int8)), (0, 5))),
    ("empty batch trace", lambda m: _expect_empty(m.trace(np.zeros((0, 8, 8, 3), np.int8)).tensors["t5"], (0, 5))),
    ("wrong spatial size", lambda m: m.run_int(np.zeros((1, 9, 8, 3), np.int8))),
    ("non-contiguous", lambda m: _check_equal(m, np.zeros((2, 8, 8, 6), np.int8)[..., ::2])),
    ("big-endian", lambda m: _check_equal(m, np.arange(384, dtype=">i2").reshape(2, 8, 8, 3) % 100)),
    ("unknown backend", lambda m: m.with_backend("gpu")),
    ("trace with float_input strings", lambda m: m.trace(["a"], float_input=True)),
    ("golden into a file path", lambda m: _export_golden(m, [np.zeros((1, 8, 8, 3), np.int8)], __file__)),
]


def _export_golden(model, inputs, out_dir):
    from intsim.hwval import export_golden

    return export_golden(model, inputs, out_dir)


def _expect_empty(out, shape):
    if out.shape != shape:
        raise AssertionError(f"expected shape {shape}, found {out.shape}")


def _check_equal(model, x):
    got = model.run_int(x)
    want = model.run_int(np.ascontiguousarray(x, dtype=np.int8))
    if not np.array_equal(got, want):
        raise AssertionError("layout changed the result")


def make_case(category: str, index: int, base: dict):
    """``(description, action, write)``: ``write(path)`` makes the file (``None`` for runtime cases)."""
    rng = np.random.default_rng([SEED, CATEGORIES.index(category), index])
    if category == "intsim_bytes":
        data = mutate_bytes(Path(base["intsim"]).read_bytes(), rng)
        return f"intsim bytes #{index}", "intsim", lambda p: Path(p).write_bytes(data)
    if category == "intsim_manifest":
        def write(path):
            manifest, members = read_intsim(base["intsim"])
            write_intsim(path, json.dumps(mutate_manifest(manifest, rng)).encode(), members)

        return f"manifest edit #{index}", "intsim", write
    if category == "intsim_zip":
        what, make = ZIP_CASES[index % len(ZIP_CASES)]
        return what, "intsim_big_batch" if "batch 200,000" in what else "intsim", make(base)
    if category == "tflite_bytes":
        name = TFLITE_FILES[index % len(TFLITE_FILES)]
        data = mutate_bytes((TFLITE_DIR / f"{name}.tflite").read_bytes(), rng)
        return f"tflite {name} bytes #{index}", "tflite", lambda p: Path(p).write_bytes(data)
    if category in ("onnx_float", "onnx_qop"):
        import onnx

        key = "onnx" if category == "onnx_float" else "qop"
        data = _onnx_mutation(onnx.load(base[key]), rng)
        return f"{category} edit #{index}", key, lambda p: Path(p).write_bytes(data)
    if category == "golden":
        def write(path):
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(base["golden"], path)
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            target = files[rng.integers(len(files))]
            if target.name == "manifest.json" and rng.integers(2):
                target.write_text(json.dumps(mutate_manifest(json.loads(target.read_text()), rng)))
            else:
                target.write_bytes(mutate_bytes(target.read_bytes(), rng))

        return f"golden edit #{index}", "golden", write
    if category == "runtime":
        what, fn = RUNTIME_ARGS[index % len(RUNTIME_ARGS)]
        return what, "runtime", fn
    what, make, action = GARBAGE_CASES[index % len(GARBAGE_CASES)]
    return what, action, make(base)


# --------------------------------------------------------------------------
# Worker and driver.
# --------------------------------------------------------------------------


def _peak_rss_reset():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    return _status_bytes("VmHWM:")


def _current_rss() -> int:
    return _status_bytes("VmRSS:")


def run_case(category, index, base, workdir) -> tuple[str, str]:
    """Run one case here; ``(outcome, detail)``."""
    import intsim
    from intsim.errors import IntsimError

    try:
        what, action, target = make_case(category, index, base)
    except Exception as exc:  # noqa: BLE001 - a bug of this harness, reported apart from intsim's outcomes
        return "harness", f"making the case failed: {type(exc).__name__}: {exc}"
    try:
        if action == "runtime":
            from intsim.examples import tiny_cnn

            target(intsim.Model(tiny_cnn("tflite")))
        else:
            suffix = {"tflite": ".tflite", "onnx": ".onnx", "qop": ".onnx", "golden": "_golden"}.get(action, ".intsim")
            path = Path(workdir) / f"case{suffix}"
            target(path)
            _peak_rss_reset()  # the harness's own bytes (a 300 MiB manifest) are not charged to intsim
            ACTIONS[action](path)
    except IntsimError as exc:
        return "typed", f"{what}: {type(exc).__name__}: {str(exc)[:200]}"
    except MemoryError as exc:
        return "memory", f"{what}: MemoryError {str(exc)[:200]}"
    except RecursionError:
        return "untyped", f"{what}: RecursionError"
    except Exception as exc:  # noqa: BLE001 - classifying every escape is the point
        return "untyped", f"{what}: {type(exc).__name__}: {str(exc)[:200]}"
    return "accepted", what


def _warm_up(base, workdir):
    """Run each valid artifact once, so that kernel compilation is not charged to a case as a hang."""
    load_and_use_intsim(base["intsim"])
    load_and_use_qop(base["qop"])
    load_and_use_onnx(base["onnx"])
    for name in TFLITE_FILES:
        load_and_use_tflite(TFLITE_DIR / f"{name}.tflite")


def worker(base_json: str):
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    sys.setrecursionlimit(10000)
    base = json.loads(base_json)
    with tempfile.TemporaryDirectory() as workdir:
        _warm_up(base, workdir)  # numba compiles (or loads from its cache) before the first case is timed
        print("ready", flush=True)
        for line in sys.stdin:
            category, index = json.loads(line)
            _peak_rss_reset()
            baseline = _current_rss()
            outcome, detail = run_case(category, index, base, workdir)
            grown = _peak_rss() - baseline
            if outcome != "memory" and grown > RSS_LIMIT:
                outcome, detail = "memory", f"{detail} (peak RSS grew by {grown >> 20} MiB)"
            print(json.dumps([category, index, outcome, detail]), flush=True)


def _start_worker(base):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(base)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    _readline(proc, 300.0)
    return proc


def _readline(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return proc.stdout.readline()


def run_cases(cases, base, timeout=CASE_TIMEOUT):
    """Run ``[(category, index), ...]`` in worker subprocesses; ``[(category, index, outcome, detail)]``."""
    results = []
    proc = None
    for category, index in cases:
        if proc is None:
            proc = _start_worker(base)
        try:
            proc.stdin.write(json.dumps([category, index]) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:  # the worker died before reading the case: the next line says how
            pass
        line = _readline(proc, timeout)
        if line:
            results.append(tuple(json.loads(line)))
            continue
        if line is None:
            proc.kill()
            proc.wait()
            results.append((category, index, "hang", f"no answer in {timeout:.0f} s"))
        else:
            results.append((category, index, "crash", f"worker died with status {proc.wait()}"))
        proc = None
    if proc is not None:
        proc.stdin.close()
        proc.wait()
    return results


def table(results) -> str:
    outcomes = ("typed", "accepted", "crash", "hang", "memory", "untyped", "harness")
    counts = {c: Counter() for c in CATEGORIES}
    for category, _, outcome, _ in results:
        counts[category][outcome] += 1
    lines = ["| category | " + " | ".join(outcomes) + " |", "|---" * (len(outcomes) + 1) + "|"]
    for c in CATEGORIES:
        if counts[c]:
            lines.append(f"| {c} | " + " | ".join(str(counts[c][o]) for o in outcomes) + " |")
    total = sum(counts.values(), Counter())
    lines.append("| total | " + " | ".join(str(total[o]) for o in outcomes) + " |")
    return "\n".join(lines)


def case_list(per_category: int, categories=CATEGORIES):
    sizes = {"intsim_zip": len(ZIP_CASES), "runtime": len(RUNTIME_ARGS), "garbage": len(GARBAGE_CASES)}
    return [(c, i) for c in categories for i in range(min(per_category, sizes.get(c, per_category)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker")
    parser.add_argument("--per-category", type=int, default=40)
    parser.add_argument("--categories", nargs="*", default=list(CATEGORIES))
    parser.add_argument("--details", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(Path(tmp))
        start = time.time()
        results = run_cases(case_list(args.per_category, args.categories), base)
        print(table(results))
        print(f"{len(results)} cases in {time.time() - start:.0f} s")
        for r in results:
            if args.details or r[2] not in ("typed", "accepted") or r[0] == "garbage":
                print(*r, sep="\t")
    return 0


if __name__ == "__main__":
    sys.exit(main())
