"""TOSA export: the ``.tosa`` file's integers == intsim's, exactly, on the TOSA reference model.

The reference model (PyPI ``tosa-tools``) pins numpy < 2.2, so it lives in its own
environment and runs the file intsim wrote through ``tools/tosa_run.py`` in a
subprocess.  The file's structure is also read back here with the plain
``flatbuffers`` table reader, field ids taken from the schema ``tosa.fbs``.
"""

import subprocess
from pathlib import Path

import flatbuffers
import numpy as np
import pytest

import intsim
from intsim import Graph, Model, Node, TensorInfo, UnsupportedOpError, ValidationError, build_lut, get_profile
from intsim.examples import _mac_params, _rescale, random_codes, tiny_cnn
from intsim.export.tosa import export_tosa, lower_to_tosa
from intsim.datasets import load_dataset
from intsim.codes import dtype_range
from intsim.models import model_path
from intsim.fixedpoint import Rescale
from intsim.converter.params import add_params
from intsim.converter.tables import build_interpolated_lut

ROOT = Path(__file__).resolve().parents[1]
TOSA_PYTHON = ROOT / ".venv-tosa" / "bin" / "python"
PROFILE = get_profile("tosa")


def _t(name, shape, scale, zp, dtype="int8"):
    return TensorInfo(name, dtype, shape, scale, zp)


def _single(op, inputs, out, attrs=None, params=None):
    tensors = inputs + [out]
    node = Node(op, op, [t.name for t in inputs], [out.name], attrs or {}, params or {})
    return Graph(op, PROFILE, tensors, [node], [t.name for t in inputs], [out.name])


def _graphs():
    x = _t("x", (None, 4, 4, 6), 0.05, -3)
    a = _t("a", (None, 4, 4, 6), 1 / 128, 0)
    s = _t("s", (None, 4, 4, 6), 0.06, 5)
    add_p, left = add_params(x.scale, a.scale, s.scale, PROFILE, 8)
    sub_p, left_sub = add_params(x.scale, a.scale, s.scale, PROFILE, 8)
    same = lambda name, shape: _t(name, shape, x.scale, x.zero_point)  # noqa: E731
    c = _t("c", (None, 4, 4, 12), 0.07, 2)
    m = _t("m", (None, 4, 4, 6), 0.02, 9)
    row = _t("row", (None, 1, 1, 6), 0.03, -20)
    lhs, rhs, rhs2 = _t("lhs", (None, 3, 5), 0.04, 7), _t("rhs", (None, 5, 4), 0.05, -11), _t("rhs2", (5, 4), 0.05, 3)
    lhs4 = _t("lhs4", (None, 2, 3, 5), 0.04, -6)
    prod = _t("prod", (None, 3, 4), 0.25, -4)
    odd = _t("odd", (None, 5, 7, 6), 0.05, 1)
    wide, tanh16 = _t("wide", (None, 4, 4, 6), 1e-4, 0, "int16"), _t("t16", (None, 4, 4, 6), 2**-15, 0, "int16")
    rng = np.random.default_rng(3)
    return {
        "tiny_cnn": tiny_cnn("tosa", softmax=False),
        "add": _single("add", [x, a], s, {"left_shift": left, "clamp": [s.zero_point, 127]}, add_p),
        "sub": _single("add", [x, a], s, {"left_shift": left_sub, "subtract": True}, sub_p),
        "lut": _single("lut", [x], a, {}, {"table": build_lut(np.tanh, x, a)}),
        "lut_interpolated": _single("lut_interpolated", [wide], tanh16, {},
                                    {"table": build_interpolated_lut(np.tanh, wide, tanh16)}),
        "avg_pool": _single("avg_pool", [x], same("y", (None, 2, 2, 6)), {"kernel": [2, 2], "strides": [2, 2]}),
        "avg_pool_include_pad": _single("avg_pool", [x], same("y", (None, 4, 4, 6)),
                                        {"kernel": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": True}),
        "pad": _single("pad", [x], same("y", (None, 6, 5, 6)), {"pads_before": [0, 1, 0, 0],
                                                                "pads_after": [0, 1, 1, 0], "value": 7}),
        "transpose": _single("transpose", [x], same("y", (None, 6, 4, 4)), {"perm": [0, 3, 1, 2]}),
        "reshape": _single("reshape", [x], same("y", (None, 16, 6)), {"shape": [0, 16, 6]}),
        "rescale": _single("rescale", [x], s, {"clamp": [-100, 90]}, _rescale(PROFILE, x.scale / s.scale)),
        "rescale_to_int16": _single("rescale", [x], _t("w", (None, 4, 4, 6), 0.0004, 0, "int16"), {},
                                    _rescale(PROFILE, x.scale / 0.0004)),
        "concat": _single("concat", [x, a], c, {"axis": 3},
                          _rescale(PROFILE, np.array([x.scale / c.scale, a.scale / c.scale]), channels=2)),
        "mul": _single("mul", [x, s], m, {"clamp": [-90, 100]}, _rescale(PROFILE, x.scale * s.scale / m.scale)),
        "mul_broadcast": _single("mul", [x, row], m, {}, _rescale(PROFILE, x.scale * row.scale / m.scale)),
        "matmul": _single("matmul", [lhs, rhs], prod, {}, _rescale(PROFILE, lhs.scale * rhs.scale / prod.scale)),
        "matmul_shared_rhs": _single("matmul", [lhs4, rhs2], _t("prod4", (None, 2, 3, 4), 0.25, 1), {"clamp": [0, 127]},
                                     _rescale(PROFILE, lhs4.scale * rhs2.scale / 0.25)),
        # Windows that do not tile the input exactly: the unread tail goes from the padding or a SLICE.
        "conv_stride2_padded": _single("conv2d", [x], _t("y", (None, 2, 2, 4), 0.08, -2),
                                       {"strides": [2, 2], "pads": [1, 1, 1, 1]},
                                       _mac_params(PROFILE, rng, (4, 3, 3, 6), x.scale, 0.08)),
        "conv_1x1_stride2": _single("conv2d", [x], _t("y", (None, 2, 2, 5), 0.08, 3), {"strides": [2, 2]},
                                    _mac_params(PROFILE, rng, (5, 1, 1, 6), x.scale, 0.08)),
        "max_pool_odd": _single("max_pool", [odd], _t("y", (None, 2, 3, 6), odd.scale, odd.zero_point),
                                {"kernel": [2, 2], "strides": [2, 2]}),
        "max_pool_padded": _single("max_pool", [x], same("y", (None, 2, 2, 6)),
                                   {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 0, 0]}),
        "slice": _single("slice", [x], same("y", (None, 2, 3, 6)), {"starts": [0, 1, 0, 0], "ends": [-1, 3, 3, 6],
                                                                   "steps": [1, 1, 1, 1]}),
        "arg_max": _single("arg_max", [x], _t("i", (None, 4, 6), 1.0, 0, "int32"), {"axis": 2, "keepdims": False}),
        "tile": _single("tile", [x], same("y", (None, 8, 4, 12)), {"repeats": [1, 2, 1, 2]}),
        "reduce_max": _single("reduce_max", [x], same("y", (None, 6)), {"axes": [1, 2], "keepdims": False}),
        "insert_zeros": _single("insert_zeros", [odd], _t("y", (None, 13, 13, 6), odd.scale, odd.zero_point),
                                {"strides": [3, 2], "value": odd.zero_point}),
    }


GRAPHS = _graphs()


def _inputs(graph, batch=2):
    """Seeded random codes, then every input at its minimum, then at its maximum."""
    feeds = []
    for seed in range(3):
        feeds.append({n: random_codes(graph.tensors[n], batch, seed) for n in graph.inputs})
    for pick in (0, 1):
        feeds.append({n: np.full(random_codes(graph.tensors[n], batch).shape,
                                 dtype_range(graph.tensors[n].dtype)[pick], graph.tensors[n].np_dtype)
                      for n in graph.inputs})
    return feeds


def _reference_model(path, graph, feeds, tmp_path):
    """The TOSA reference model's outputs for ``feeds`` (one dict per run) on the ``.tosa`` file at ``path``."""
    if not TOSA_PYTHON.exists():
        pytest.skip(f"no tosa-tools environment at {TOSA_PYTHON}; create it with "
                    f"`python3 -m venv {TOSA_PYTHON.parents[1]} && {TOSA_PYTHON.parent}/pip install tosa-tools`")
    pairs = []
    for i, feed in enumerate(feeds):
        np.savez(tmp_path / f"in{i}.npz", **feed)
        pairs += [str(tmp_path / f"in{i}.npz"), str(tmp_path / f"out{i}.npz")]
    result = subprocess.run([str(TOSA_PYTHON), "-W", "ignore", str(ROOT / "tools" / "tosa_run.py"), str(path), *pairs],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [np.load(tmp_path / f"out{i}.npz")[graph.outputs[0]] for i in range(len(feeds))]


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_tosa_reference_model_matches_intsim(name, tmp_path):
    model = Model(GRAPHS[name])
    feeds = _inputs(model.graph)
    got = _reference_model(intsim.export_tosa(model, tmp_path / "model.tosa", batch=2), model.graph, feeds, tmp_path)
    for feed, out in zip(feeds, got):
        np.testing.assert_array_equal(out, model.run_int(*[feed[n] for n in model.graph.inputs]), strict=True)


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_shipped_models_on_the_reference_model(name, tmp_path):
    x_train, _ = load_dataset("digits", "train")
    x_test, _ = load_dataset("digits", "test")
    model = intsim.convert(model_path(f"{name}.onnx"), calibration=x_train[:128], profile="tosa", progress=False)
    codes = model.quantize_inputs([x_test[:64]])[0]
    feeds = [{model.graph.inputs[0]: codes[i:i + 16]} for i in range(0, 64, 16)]
    got = _reference_model(intsim.export_tosa(model, tmp_path / f"{name}.tosa", batch=16), model.graph, feeds, tmp_path)
    for feed, out in zip(feeds, got):
        np.testing.assert_array_equal(out, model.run_int(feed[model.graph.inputs[0]]), strict=True)


# --- reading the file back with the plain flatbuffers reader ------------------------------------
# Facts from tosa.fbs, written out here rather than taken from the writer: a table field with id i
# sits at vtable offset 4 + 2 i; the Attribute union of TosaOperator takes ids 1 (type) and 2.
OP_NAMES = {3: "CONV2D", 7: "MATMUL", 57: "RESHAPE", 66: "RESCALE", 67: "CONST", 75: "CONST_SHAPE"}
DTYPE_NAMES = {3: "int8", 5: "int32"}


class _Table:
    def __init__(self, buf, pos):
        self.t = flatbuffers.table.Table(buf, pos)

    def _at(self, field_id):
        return self.t.Offset(4 + 2 * field_id)

    def scalar(self, field_id, flags, default=0):
        o = self._at(field_id)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def table(self, field_id):
        o = self._at(field_id)
        return _Table(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def string(self, field_id):
        o = self._at(field_id)
        return self.t.String(o + self.t.Pos).decode() if o else None

    def vector(self, field_id):
        """(start position, length) of a vector field."""
        o = self._at(field_id)
        return (self.t.Vector(o), self.t.VectorLen(o)) if o else (0, 0)

    def tables(self, field_id):
        start, n = self.vector(field_id)
        return [_Table(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def strings(self, field_id):
        start, n = self.vector(field_id)
        return [self.t.String(start + 4 * i).decode() for i in range(n)]

    def array(self, field_id, dtype):
        start, n = self.vector(field_id)
        return np.frombuffer(bytes(self.t.Bytes[start:start + n * np.dtype(dtype).itemsize]), dtype), start


N = flatbuffers.number_types


def _read_block(buf):
    assert buf[4:8] == b"TOSA"  # file identifier after the root offset
    root = _Table(buf, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))
    version = root.table(0)
    assert [version.scalar(i, N.Int32Flags, -1) for i in range(3)] == [1, 0, 0]
    assert version.scalar(3, N.BoolFlags, True) is False  # a released specification, not a draft
    (region,) = root.tables(1)
    assert region.string(0) == "main"
    (block,) = region.tables(1)
    return block


def _fc_graph():
    rng = np.random.default_rng(5)
    x, y = _t("x", (None, 6), 0.05, -3), _t("y", (None, 3), 0.1, 4)
    params = {"weight": rng.integers(-127, 128, (3, 6)).astype(np.int8), "weight_zero_point": np.zeros(3, np.int64),
              "bias": np.array([100, -200, 300], np.int32)}
    params.update(_rescale(PROFILE, x.scale * np.array([0.01, 0.02, 0.03]) / y.scale, channels=3))
    return _single("fully_connected", [x], y, {}, params)


def test_flatbuffer_structure_read_back(tmp_path):
    graph = _fc_graph()
    block = _read_block(intsim.export_tosa(Model(graph), tmp_path / "fc.tosa", batch=2).read_bytes())
    assert block.strings(3) == ["x"] and block.strings(4) == ["y"]
    ops = [OP_NAMES[op.scalar(0, N.Uint32Flags)] for op in block.tables(1)]
    # RESHAPE x to [2, 1, 1, 6]; CONV2D(x, weight, bias, input_zp, weight_zp); RESCALE(acc, multiplier,
    # shift, input_zp, output_zp); RESHAPE to [2, 3]; each constant made by a CONST / CONST_SHAPE.
    assert ops == ["CONST_SHAPE", "RESHAPE"] + ["CONST"] * 4 + ["CONV2D"] + ["CONST"] * 4 + ["RESCALE",
                                                                                          "CONST_SHAPE", "RESHAPE"]
    for op in block.tables(1):
        assert op.scalar(1, N.Uint8Flags) == op.scalar(0, N.Uint32Flags)  # attribute type == op code
        assert op.table(5).string(0) == "fully_connected"  # location: the intsim node
    tensors = {t.string(0): t for t in block.tables(2)}
    shapes = {name: list(t.array(1, "<i4")[0]) for name, t in tensors.items()}
    types = {name: DTYPE_NAMES[t.scalar(2, N.Uint32Flags)] for name, t in tensors.items()}
    conv = block.tables(1)[6]
    x4, weight, bias = conv.strings(3)[:3]
    assert (shapes["x"], types["x"], shapes[x4], shapes["y"]) == ([2, 6], "int8", [2, 1, 1, 6], [2, 3])
    assert (shapes[conv.strings(4)[0]], types[conv.strings(4)[0]]) == ([2, 1, 1, 3], "int32")
    data, start = tensors[weight].array(3, np.uint8)
    assert start % 8 == 0  # force_align: 8
    np.testing.assert_array_equal(data.view(np.int8).reshape(3, 1, 1, 6),
                                  graph.nodes[0].params["weight"].reshape(3, 1, 1, 6), strict=True)
    np.testing.assert_array_equal(tensors[bias].array(3, np.uint8)[0].view("<i4"), np.array([100, -200, 300], "<i4"),
                                  strict=True)
    (shape,) = [s for s in block.tables(5) if s.string(0) == block.tables(1)[1].strings(3)[1]]
    assert shape.scalar(1, N.Uint32Flags) == 4
    np.testing.assert_array_equal(shape.array(2, np.uint8)[0].view("<i8"), np.array([2, 1, 1, 6], "<i8"), strict=True)
    rescale = block.tables(1)[11].table(2)  # scale32, rounding_mode (DOUBLE_ROUND = 3), per_channel
    assert (rescale.scalar(0, N.BoolFlags), rescale.scalar(1, N.Uint32Flags), rescale.scalar(2, N.BoolFlags)) == (
        True, 3, True)


def test_matmul_lowering_read_back(tmp_path):
    block = _read_block(intsim.export_tosa(Model(GRAPHS["matmul_shared_rhs"]), tmp_path / "mm.tosa", batch=2).read_bytes())
    ops = [OP_NAMES.get(op.scalar(0, N.Uint32Flags), "other") for op in block.tables(1)]
    matmul = block.tables(1)[ops.index("MATMUL")]
    shapes = {t.string(0): list(t.array(1, "<i4")[0]) for t in block.tables(2)}
    lhs, rhs = matmul.strings(3)[:2]
    # [2, 2, 3, 5] @ [5, 4]: every row of lhs in one batch against the single right-hand matrix.
    assert (shapes[lhs], shapes[rhs], shapes[matmul.strings(4)[0]]) == ([1, 12, 5], [1, 5, 4], [1, 12, 4])
    assert shapes["prod4"] == [2, 2, 3, 4]


def test_unsupported_op_is_named():
    with pytest.raises(UnsupportedOpError, match="softmax 'softmax'"):
        lower_to_tosa(tiny_cnn("tosa"))


def test_malformed_export_requests(tmp_path):
    graph = GRAPHS["add"]
    with pytest.raises(ValidationError, match="expected a file path.*found"):
        export_tosa(graph, tmp_path)
    with pytest.raises(ValidationError, match="existing directory"):
        export_tosa(graph, tmp_path / "missing" / "m.tosa")
    for batch in (0, -1, 1.5, True):
        with pytest.raises(ValidationError, match=f"batch must be a positive integer.*found {batch!r}"):
            export_tosa(graph, tmp_path / "m.tosa", batch=batch)
    assert not (tmp_path / "m.tosa").exists()


def test_mul_of_wide_products_is_refused():
    a, b = _t("a", (None, 4), 0.1, 20000, "int16"), _t("b", (None, 4), 0.1, -20000, "int16")
    graph = _single("mul", [a, b], _t("z", (None, 4), 0.2, 0, "int16"), {}, _rescale(PROFILE, 0.05))
    with pytest.raises(UnsupportedOpError, match="mul 'mul': products .* beyond int32"):
        lower_to_tosa(graph)


def test_mul_of_unequal_ranks_is_refused():
    graph = _single("mul", [_t("x", (None, 4, 6), 0.1, 0), _t("v", (6,), 0.1, 0)], _t("z", (None, 4, 6), 0.2, 0),
                    {}, _rescale(PROFILE, 0.05))
    with pytest.raises(UnsupportedOpError, match="mul 'mul': inputs of rank 3 and 1"):
        lower_to_tosa(graph)


def test_matmul_refusals():
    wide = _single("matmul", [_t("a", (None, 3, 5), 0.1, 0, "int16"), _t("b", (None, 5, 4), 0.1, 0, "int16")],
                   _t("z", (None, 3, 4), 0.2, 0, "int16"), {}, _rescale(PROFILE, 0.05))
    with pytest.raises(UnsupportedOpError, match="matmul 'matmul': input 'a' is int16"):
        lower_to_tosa(wide)
    partial = _single("matmul", [_t("a", (None, 2, 3, 5), 0.1, 0), _t("b", (1, 2, 5, 4), 0.1, 0)],
                      _t("z", (None, 2, 3, 4), 0.2, 0), {}, _rescale(PROFILE, 0.05))
    with pytest.raises(UnsupportedOpError, match=r"matmul 'matmul': leading dimensions \[1, 2\]"):
        lower_to_tosa(partial, batch=2)


def test_avg_pool_with_varying_divisor_is_refused():
    x = _t("x", (None, 4, 4, 6), 0.05, -3)
    graph = _single("avg_pool", [x], _t("y", (None, 4, 4, 6), 0.05, -3),
                    {"kernel": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": False})
    with pytest.raises(UnsupportedOpError, match="avg_pool 'avg_pool'"):
        lower_to_tosa(graph)


def _refusals():
    x = _t("x", (None, 4, 4, 6), 0.05, -3)
    rng = np.random.default_rng(9)
    float_rescale = Rescale.from_real(np.array([0.5]), "float64_half_away").params()
    grouped = _mac_params(PROFILE, rng, (6, 1, 1, 3), x.scale, 0.08)
    mixed_zp = _mac_params(PROFILE, rng, (4, 1, 1, 6), x.scale, 0.08)
    mixed_zp["weight_zero_point"] = np.array([0, 0, 1, 0])
    add_p, _ = add_params(x.scale, x.scale, x.scale, PROFILE, 8)
    return {
        "tensor 'u': dtype uint8": _single("rescale", [_t("u", (None, 4), 0.1, 128, "uint8")], _t("y", (None, 4), 0.1, 0),
                                           {}, _rescale(PROFILE, 1.0)),
        "rescale 'rescale': TOSA RESCALE needs an integer rounding mode": _single(
            "rescale", [x], _t("y", (None, 4, 4, 6), 0.1, 0), {"rounding": "float64_half_away"}, float_rescale),
        r"rescale 'rescale': TOSA RESCALE right shift must be in \[2, 62\]": _single(
            "rescale", [x], _t("y", (None, 4, 4, 6), 0.1, 0), {}, _rescale(PROFILE, 2.0**29.5)),  # left shift 30
        "conv2d 'conv2d': grouped convolution with 2 groups": _single(
            "conv2d", [x], _t("y", (None, 4, 4, 6), 0.1, 0), {"groups": 2}, grouped),
        "conv2d 'conv2d': per-channel weight zero points differ": _single(
            "conv2d", [x], _t("y", (None, 4, 4, 4), 0.1, 0), {}, mixed_zp),
        "add 'add': left_shift 29": _single("add", [x, x], _t("y", (None, 4, 4, 6), 0.05, -3), {"left_shift": 29}, add_p),
        "max_pool 'max_pool': dilations": _single("max_pool", [x], _t("y", (None, 2, 2, 6), x.scale, x.zero_point),
                                                  {"kernel": [2, 2], "dilations": [2, 2]}),
    }


REFUSALS = _refusals()


@pytest.mark.parametrize("message", sorted(REFUSALS))
def test_inexpressible_graphs_are_refused(message):
    with pytest.raises(UnsupportedOpError, match=message):
        lower_to_tosa(REFUSALS[message])
