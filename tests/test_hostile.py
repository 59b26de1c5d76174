"""Hostile and malformed input (issue 14): typed errors, bounded memory, no crash, nothing silent.

The fuzz tests run :mod:`tests.hostile_fuzz` cases in worker subprocesses under an
address-space limit and a per-case timeout.  CI runs a seeded subset (every
category, 30 cases each, about a minute); the full run is marked slow::

    python -m pytest tests/test_hostile.py -m slow        # 300 cases per category
    python tests/hostile_fuzz.py --per-category 300        # the same, as a table

The direct tests below pin each accepted-garbage input and each formerly
untyped exception of the issue to its typed error, in-process.
"""

import io
import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import intsim
from intsim.cli import EXIT_RUNTIME_ERROR
from intsim.errors import IntsimError, ModelFormatError, OverflowWarning, ValidationError
from intsim.examples import tiny_cnn
from intsim.graph.fileformat import load_graph, save_graph
from intsim.hwval import export_golden
from tests import hostile_fuzz as hf


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return hf.build_base(tmp_path_factory.mktemp("hostile"))


def _assert_clean(results):
    bad = [r for r in results if r[2] not in ("typed", "accepted") or (r[0] == "garbage" and r[2] != "typed")]
    assert not bad, "\n".join("\t".join(map(str, r)) for r in bad)


def test_fuzz_seeded_subset(base):
    """Every category, 30 seeded cases each (all of the hand-made zip, runtime and garbage cases)."""
    results = hf.run_cases(hf.case_list(30), base)
    assert len(results) == len(hf.case_list(30))
    _assert_clean(results)


@pytest.mark.slow
def test_fuzz_full(base):
    _assert_clean(hf.run_cases(hf.case_list(300), base))


@pytest.mark.parametrize("behaviour, outcome", [("os.kill(os.getpid(), signal.SIGSEGV)", "crash"),
                                                ("time.sleep(60)", "hang")])
def test_fuzz_harness_charges_crashes_and_hangs(behaviour, outcome, monkeypatch):
    """The harness itself: a worker that dies or stops answering is charged to its case, and the next case
    runs in a fresh worker."""
    script = f"import os, signal, sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\n{behaviour}\n"

    def start(base):
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        hf._readline(proc, 30.0)
        return proc

    monkeypatch.setattr(hf, "_start_worker", start)
    results = hf.run_cases([("runtime", 0), ("runtime", 1)], {}, timeout=3.0)
    assert [r[2] for r in results] == [outcome, outcome]


# --------------------------------------------------------------------------
# The segfault: runtime shapes against the graph, MAC depth against the weight.
# --------------------------------------------------------------------------


def _write(make, base, tmp_path, suffix=".intsim"):
    path = tmp_path / f"case{suffix}"
    make(base)(path)
    return path


def test_flatten_axis0_depth_mismatch_is_a_validation_error(base, tmp_path):
    model = intsim.load(_write(lambda b: hf._edit(b, hf._flatten_axis0), base, tmp_path))
    x = np.zeros((16, 8, 8, 3), np.int8)
    for backend in ("fast", "naive"):
        with pytest.raises(ValidationError, match=r"fully_connected 'fc': input \(1, 512\) must be \[batch, 8\]"):
            model.with_backend(backend).run_int(x)
        with pytest.raises(ValidationError, match="fully_connected 'fc'"):
            model.with_backend(backend).trace(x)


def test_flatten_axis0_batch_200000_in_a_subprocess(base):
    index = next(i for i, (what, _) in enumerate(hf.ZIP_CASES) if "batch 200,000" in what)
    [(_, _, outcome, detail)] = hf.run_cases([("intsim_zip", index)], base)
    assert outcome == "typed", detail
    assert "must be [batch, 8]" in detail


# --------------------------------------------------------------------------
# Bounded memory and the zip / npy / JSON layers.
# --------------------------------------------------------------------------

ZIP_EXPECTED = {
    "zip bomb member": "over 200:1",
    "npy header of 1e13 elements": "over the limit of 1073741824",
    "malformed npy header": "malformed .npy header",
    "object npy (pickle)": "must hold an integer or float array",
    "deeply nested JSON": "nests 100001 levels deep",
    "5000-digit integer": "an integer of 5000 digits",
    "manifest padded to 300 MiB": "over the limit of 67108864",
    "manifest not UTF-8": "not valid JSON",
    "pad of 1e9": "more than 268435456 elements per sample",
    "member path traversal": "member '../../../etc/passwd' is missing",
    "graph with no nodes": "never produced",
    "encrypted flag": "encrypted",
    "corrupt deflate": "corrupt",
    "corrupt lzma": "compression method 14",
    "corrupt bzip2": "compression method 12",
}


@pytest.mark.parametrize("what", sorted(ZIP_EXPECTED))
def test_hostile_zip(what, base, tmp_path):
    make = dict(hf.ZIP_CASES)[what]
    with pytest.raises(ModelFormatError, match=ZIP_EXPECTED[what]):
        load_graph(_write(make, base, tmp_path))


def test_npy_member_is_read_in_place(base, tmp_path):
    """A valid file still loads, arrays equal to what was saved (the streaming reader changes nothing)."""
    graph = tiny_cnn("tflite")
    path = tmp_path / "ok.intsim"
    save_graph(graph, path)
    loaded = load_graph(path)
    for a, b in zip(graph.nodes, loaded.nodes):
        for key in a.params:
            np.testing.assert_array_equal(a.params[key], b.params[key], strict=True)


def test_npy_header_lying_about_its_size(base, tmp_path):
    def lie(manifest, members):
        member = hf._node(manifest, "conv")["params"]["bias"]
        members[member] = hf._npy_header("<i4", (400,)) + bytes(16)

    with pytest.raises(ModelFormatError, match="declares 1600 bytes of data, the file holds 16"):
        load_graph(_write(lambda b: hf._edit(b, lie), base, tmp_path))


def test_flipped_array_byte_fails_the_crc(base, tmp_path):
    """Arrays are streamed into place; the member's CRC-32 is still checked (at its end)."""
    path = tmp_path / "stored.intsim"
    manifest, members = hf.read_intsim(base["intsim"])
    hf.write_intsim(path, json.dumps(manifest).encode(), members, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(hf._node(manifest, "conv")["params"]["weight"])
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="Bad CRC-32"):
        load_graph(path)


def test_duplicate_json_keys(base, tmp_path):
    def dup(manifest, members):
        return json.dumps(manifest)[:-1].encode() + b', "graph": {}}'

    with pytest.raises(ModelFormatError, match="duplicate key 'graph'"):
        load_graph(_write(lambda b: hf._edit(b, dup), base, tmp_path))


# --------------------------------------------------------------------------
# Accepted garbage: each case of the issue is now a typed error.
# --------------------------------------------------------------------------

GARBAGE_EXPECTED = {
    ".intsim duplicate tensors entry": (ModelFormatError, "tensors lists 't1' twice"),
    ".intsim duplicate zip member": (ModelFormatError, "member 'arrays/0.bias.npy' appears twice"),
    "QOperator int64 bias beyond int32": (ValidationError, "bias must be int32 .* found int64"),
    "QOperator float bias": (ValidationError, "bias must be int32 .* found float32"),
    "QOperator float zero point": (ValidationError, "zero point must be uint8 or int8.*, found float32"),
    "QOperator int16 zero point on uint8": (ValidationError, "zero point must be uint8 or int8, found int16"),
    "TFLite MEAN axis out of range": (ModelFormatError, r"MEAN axes \[5, 2\] are out of range for rank 4"),
    "TFLite padding enum 7": (ModelFormatError, "padding 7 is neither SAME"),
    "TFLite output index -1": (ModelFormatError, "output tensor index -1 is out of range"),
    "ONNX strides [1.5, 1.5]": (ValidationError, r"strides must be 2 integers, found \[1.5, 1.5\]"),
    "ONNX kernel_shape contradicts weight": (ValidationError, r"kernel_shape \[5, 5\] contradicts the weight's"),
}


@pytest.mark.parametrize("what", sorted(GARBAGE_EXPECTED))
def test_accepted_garbage_is_rejected(what, base, tmp_path):
    [(make, action)] = [(m, a) for w, m, a in hf.GARBAGE_CASES if w == what]
    path = _write(make, base, tmp_path, {"tflite": ".tflite", "onnx": ".onnx", "qop": ".onnx"}.get(action, ".intsim"))
    error, pattern = GARBAGE_EXPECTED[what]
    with pytest.raises(error, match=pattern):
        hf.ACTIONS[action](path)


def test_every_garbage_case_has_a_direct_test():
    assert sorted(GARBAGE_EXPECTED) == sorted(w for w, _, _ in hf.GARBAGE_CASES)
    assert sorted(ZIP_EXPECTED) == sorted(w for w, _ in hf.ZIP_CASES if "flatten" not in w)


# --------------------------------------------------------------------------
# QOperator: each node's own zero point, bit-exact with onnxruntime.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("zero_point", [120, 128, 0, 255])
def test_qoperator_node_zero_point_matches_onnxruntime(zero_point):
    ort = pytest.importorskip("onnxruntime")
    from intsim.importers.onnx_qop import load_onnx_qoperator

    model = hf.qop_onnx_model(conv_x_zero_point=zero_point)
    x = np.random.default_rng(zero_point).normal(size=(3, 2, 6, 6)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    graph = load_onnx_qoperator(model)
    assert ("lut" in [n.op for n in graph.nodes]) == (zero_point != 128)
    for backend in ("fast", "naive"):
        np.testing.assert_array_equal(intsim.Model(graph, backend).run(x), expected, strict=True)


def test_qoperator_zero_point_type_must_match_the_codes():
    from intsim.importers.onnx_qop import load_onnx_qoperator

    with pytest.raises(ValidationError, match="input 0 zero point is int8 but the codes 'yq' are uint8"):
        load_onnx_qoperator(hf.qop_onnx_model(conv_x_zero_point=3, conv_x_zp_dtype=np.int8))


# --------------------------------------------------------------------------
# Formerly untyped exceptions.
# --------------------------------------------------------------------------


def _qop_with(fn):
    model = hf.qop_onnx_model()
    fn(model)
    return model


def _qop_node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _set_qop_attr(model, node, key, value):
    from onnx import helper

    n = _qop_node(model, node)
    for a in list(n.attribute):
        if a.name == key:
            n.attribute.remove(a)
    n.attribute.append(helper.make_attribute(key, value))


def _float_with(fn):
    model = hf.float_onnx_model()
    fn(model)
    return model


def _init(model, name, value):
    from onnx import numpy_helper

    hf._replace_init(model, numpy_helper, name, value)


def _convert(model):
    return intsim.convert(model, np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32),
                          profile="tflite", progress=False)


def _load_qop(model):
    from intsim.importers.onnx_qop import load_onnx_qoperator

    return load_onnx_qoperator(model)


def _external_data(model):
    import onnx

    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"


def _constant_without_value(model):
    from onnx import helper

    model.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="k"))


def _dim(model, index, value):
    model.graph.input[0].type.tensor_type.shape.dim[index].dim_value = value


UNTYPED = {
    "QOperator conv strides 0": (lambda: _load_qop(_qop_with(lambda m: _set_qop_attr(m, "conv1", "strides", [0, 0]))),
                                 ValidationError, r"strides must be 2 integers >= 1"),
    "QOperator 3-value pads": (lambda: _load_qop(_qop_with(lambda m: _set_qop_attr(m, "conv1", "pads", [1, 1, 1]))),
                               ValidationError, r"pads must be 4 integers >= 0"),
    "QOperator wrong-length weight scales": (
        lambda: _load_qop(_qop_with(lambda m: _init(m, "w1s", np.ones(3, np.float32)))), ValidationError,
        "weight scale must be float32 with 1 or 4 values"),
    "QOperator output scale 0": (lambda: _load_qop(_qop_with(lambda m: _init(m, "ys", np.float32(0)))),
                                 ValidationError, "scale must be a finite float32 > 0"),
    "QOperator Constant without value": (lambda: _load_qop(_qop_with(_constant_without_value)),
                                         ModelFormatError, "expected one output and a tensor 'value'"),
    "QOperator negative dim_value": (lambda: _load_qop(_qop_with(lambda m: _dim(m, 2, -3))),
                                     ValidationError, "sizes >= 1"),
    "QOperator initializer dims contradict data": (
        lambda: _load_qop(_qop_with(lambda m: m.graph.initializer[2].dims.__setitem__(0, 7))),
        ModelFormatError, "do not match its data"),
    "QOperator graph with no nodes": (lambda: _load_qop(_qop_with(lambda m: m.graph.ClearField("node"))),
                                      IntsimError, "not produced"),
    "ONNX conv strides 0": (lambda: _convert(_float_with(lambda m: hf._set_attr(m, "conv", "strides", [0, 0]))),
                            ValidationError, "strides must be >= 1"),
    "ONNX 3-value pads": (lambda: _convert(_float_with(lambda m: hf._set_attr(m, "conv", "pads", [1, 1, 1]))),
                          ValidationError, "pads must have 4 values"),
    "ONNX Flatten axis a list": (lambda: _convert(_float_with(lambda m: hf._set_attr(m, "flatten", "axis", [1]))),
                                 ValidationError, "malformed node"),
    "ONNX negative dim_value": (lambda: _convert(_float_with(lambda m: _dim(m, 2, -3))), ValidationError,
                                "sizes must be >= 1"),
    "ONNX placeholder of 298 GiB": (
        lambda: _convert(_float_with(lambda m: (_dim(m, 2, 200000), _dim(m, 3, 200000)))), ValidationError,
        "over the importer's limit"),
    "ONNX initializer dims contradict data": (
        lambda: _convert(_float_with(lambda m: m.graph.initializer[0].dims.__setitem__(0, 5))),
        ModelFormatError, "do not match its data"),
    "ONNX external data path": (lambda: _convert(_float_with(_external_data)), ModelFormatError,
                                "external data is not read"),
    "ONNX graph with no nodes": (lambda: _convert(_float_with(lambda m: m.graph.ClearField("node"))),
                                 ModelFormatError, "never produced"),
    "ONNX NaN in a Gemm weight": (
        lambda: _convert(_float_with(lambda m: _init(m, "fw", np.where(np.eye(10, 64) > 0, np.nan, 0.1)
                                                      .astype(np.float32)))),
        ValidationError, "weights must be finite"),
    "profile path that is a folder": (lambda: intsim.get_profile(Path(__file__).parent), IntsimError, "director"),
}


@pytest.mark.parametrize("what", sorted(UNTYPED))
def test_untyped_exception_is_now_typed(what):
    fn, error, pattern = UNTYPED[what]
    with pytest.raises(error, match=pattern):
        fn()


def _manifest_edit(base, tmp_path, fn):
    path = tmp_path / "edited.intsim"
    hf._edit(base, lambda manifest, members: fn(manifest))(path)
    return path


def _add_layout_node(manifest, op, attrs, out_shape):
    graph = manifest["graph"]
    t5 = next(t for t in graph["tensors"] if t["name"] == "t5")
    graph["tensors"].append({**t5, "name": "z", "shape": out_shape})
    graph["nodes"].append({"op": op, "name": "layout", "inputs": ["t5"], "outputs": ["z"], "attrs": attrs,
                           "params": {}})
    graph["outputs"] = ["z"]


@pytest.mark.parametrize("op, attrs, shape", [
    ("transpose", {"perm": [1.0, 0.0]}, [5, None]),
    ("transpose", {"perm": ["1", "0"]}, [5, None]),
    ("unsqueeze", {"axes": 1}, [None, 1, 5]),
    ("reshape", {"shape": [True, 5]}, [None, 5]),
])
def test_bad_layout_attributes(op, attrs, shape, base, tmp_path):
    path = _manifest_edit(base, tmp_path, lambda m: _add_layout_node(m, op, attrs, shape))
    with pytest.raises(ModelFormatError, match=f"{op} 'layout'"):
        load_graph(path)


def test_all_zero_softmax_table(base, tmp_path):
    def zero(manifest, members):
        members[hf._node(manifest, "softmax")["params"]["exp_table"]] = hf._npy_bytes(np.zeros(256, np.int32))

    with pytest.raises(ModelFormatError, match=r"exp_table\[0\] .* must be >= 1"):
        load_graph(_write(lambda b: hf._edit(b, zero), base, tmp_path))


def test_export_golden_into_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValidationError, match="exists and is not a directory"):
        export_golden(intsim.Model(tiny_cnn("tflite")), [np.zeros((1, 8, 8, 3), np.int8)], target)


def test_golden_manifest_that_is_a_folder(tmp_path):
    from intsim.hwval import load_golden

    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ModelFormatError, match="manifest.json is a directory"):
        load_golden(tmp_path)


def _zero_output_scale(blob, model):
    sub = model.Subgraphs(0)
    q = sub.Tensors(int(sub.OutputsAsNumpy()[0])).Quantization()
    start = q._tab.Vector(q._tab.Offset(8))  # QuantizationParameters.scale
    blob[start:start + 4] = np.float32(0).tobytes()


@pytest.mark.parametrize("name", ["conv_5x5_valid_s2", "mean_keepdims", "reshape_fc"])
def test_tflite_output_scale_zero(name, tmp_path):
    from intsim.importers.tflite import load_tflite

    path = tmp_path / "scale0.tflite"
    hf._tflite_patch(name, _zero_output_scale)(None)(path)
    with pytest.raises(ModelFormatError, match=r"quantization scales \[0.0\]; scales must be finite and > 0"):
        load_tflite(path)


# --------------------------------------------------------------------------
# Empty batches, overflow warnings, the CLI.
# --------------------------------------------------------------------------


def test_empty_batch_gives_empty_outputs(tmp_path):
    model = intsim.Model(tiny_cnn("tflite"))
    empty = np.zeros((0, 8, 8, 3), np.int8)
    for backend in ("fast", "naive"):
        m = model.with_backend(backend)
        assert m.run(empty.astype(np.float32)).shape == (0, 5)
        assert m.run(empty.astype(np.float32)).dtype == np.float32
        assert m.run_int(empty).shape == (0, 5)
        trace = m.trace(empty)
        assert all(v.shape[0] == 0 for v in trace.tensors.values())
    manifest = export_golden(model, [empty], tmp_path / "golden")
    assert json.loads(manifest.read_text())["tensors"]["x"]["shape"] == [0, 8, 8, 3]


def _overflowing_model():
    import dataclasses

    profile = dataclasses.replace(intsim.get_profile("tflite"), accumulator_bits=12, overflow="wrap")
    return intsim.Model(tiny_cnn(profile))


def test_overflow_warning_names_nodes_and_counts():
    model = _overflowing_model()
    x = np.random.default_rng(0).integers(-128, 128, (4, 8, 8, 3)).astype(np.int8)
    counts = {name: s["overflow_count"] for name, s in model.trace(x).stats.items() if s.get("overflow_count")}
    assert counts
    with pytest.warns(OverflowWarning) as record:
        model.run_int(x)
    message = str(record[0].message)
    for name, count in counts.items():
        assert f"'{name}' {count}" in message
    with pytest.warns(OverflowWarning):
        model.run(x.astype(np.float32) * model.inputs[0].scale)


def test_no_overflow_no_warning():
    model = intsim.Model(tiny_cnn("tflite"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run_int(np.zeros((2, 8, 8, 3), np.int8))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "intsim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_prints_error_not_traceback(base, tmp_path):
    path = _write(lambda b: hf._edit(b, hf._huge_header), base, tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 8, 8, 3), np.float32))
    result = _cli("run", path, "--input", x)
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert result.stderr.startswith("intsim: error:") and "Traceback" not in result.stderr


def test_cli_run_prints_the_overflow_warning(tmp_path):
    model = _overflowing_model()
    path, x = tmp_path / "ovf.intsim", tmp_path / "x.npy"
    model.save(path)
    np.save(x, np.random.default_rng(0).integers(-128, 128, (4, 8, 8, 3)).astype(np.int8))
    result = _cli("run", path, "--input", x, "--int")
    assert result.returncode == 0, result.stderr
    assert "intsim: warning: model 'tiny_cnn': accumulators left the 12-bit range" in result.stderr


def test_cli_input_npy_with_hostile_header(tmp_path):
    x, model = tmp_path / "x.npy", tmp_path / "tiny.intsim"
    x.write_bytes(hf._npy_header("<f4", (10**13,)))
    save_graph(tiny_cnn("tflite"), model)
    result = _cli("run", model, "--input", x)
    assert result.returncode == EXIT_RUNTIME_ERROR and "Traceback" not in result.stderr
    assert result.stderr.startswith("intsim: error: input file") and "not a readable .npy array" in result.stderr


# --------------------------------------------------------------------------
# The TFLite verifier against LiteRT's own.
# --------------------------------------------------------------------------


def test_tflite_flips_litert_finds_invalid_are_refused(tmp_path):
    """Every byte flip LiteRT's flatbuffer verifier calls invalid, intsim refuses too."""
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    from intsim.importers.tflite import load_tflite

    files = sorted(p for p in hf.TFLITE_DIR.glob("*.tflite") if not p.name.startswith("error_"))
    rng = np.random.default_rng(0)
    path = tmp_path / "flip.tflite"
    refused_by_both = 0
    for i in range(120):
        blob = bytearray(files[i % len(files)].read_bytes())
        blob[int(rng.integers(8, len(blob)))] ^= 1 << int(rng.integers(8))
        try:
            interpreter.Interpreter(model_content=bytes(blob))
            continue
        except Exception as exc:  # noqa: BLE001 - LiteRT's refusals are plain exceptions
            if "not a valid Flatbuffer" not in str(exc):
                continue
        path.write_bytes(bytes(blob))
        with pytest.raises(ModelFormatError):
            load_tflite(path)
        refused_by_both += 1
    assert refused_by_both > 10


def test_qdq_initializer_dims_contradict_data(tmp_path):
    """The QDQ importer reads initializers through the same checked reader as the other ONNX importers."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from intsim.importers.onnx_qdq import load_onnx_qdq

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.normal(size=(1, 1, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    float_path, qdq_path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    float_path.write_bytes(hf.float_onnx_model().SerializeToString())
    quantize_static(str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(qdq_path))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    weight.dims[0] = 2**31
    with pytest.raises(ModelFormatError, match=f"initializer {weight.name!r}: dims .* do not match its data"):
        load_onnx_qdq(model)


def test_matmul_depth_guard():
    """The run-time check of a matmul: inner dimensions must agree, b's leading ones broadcast to a's."""
    from intsim.graph import Node
    from intsim.runtime.shapeguard import _matmul_depth

    node = Node("matmul", "mm", ["a", "b"], ["y"])
    a = np.zeros((2, 3, 4, 5), np.int8)
    assert _matmul_depth(node, [a, np.zeros((5, 6), np.int8)]) is None
    assert _matmul_depth(node, [a, np.zeros((1, 3, 5, 6), np.int8)]) is None
    assert "inner dimensions differ" in _matmul_depth(node, [a, np.zeros((4, 6), np.int8)])
    assert "do not broadcast" in _matmul_depth(node, [a, np.zeros((2, 2, 5, 6), np.int8)])
