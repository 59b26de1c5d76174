"""The 513-entry interpolated table of 16-bit inputs (profile ``int16_tables = "interpolated"``, issue 15):
the kernel against its naive twin and an independent numpy computation on every input code, the table
builder, the conversion of sigmoid / tanh / erf, and the error paths."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import intsim
from intsim import Graph, Node, TensorInfo, kernels
from intsim.converter.tables import build_interpolated_lut
from intsim.errors import ValidationError
from intsim.kernels import naive
from intsim.profiles import get_profile

CODES = {"int16": np.arange(-32768, 32768).astype(np.int16), "uint16": np.arange(65536).astype(np.uint16)}


def _interpolated_numpy(x, table, x_min):
    """Vectorised: segment ``u // 128``, position ``u % 128``, the chord rounded half up (floor division)."""
    u = x.astype(np.int64) - x_min
    low, high = table[u // 128].astype(np.int64), table[u // 128 + 1].astype(np.int64)
    return low + ((high - low) * (u % 128) + 64) // 128


@pytest.mark.parametrize("x_dtype, out_dtype", [("int16", np.int16), ("uint16", np.uint16), ("int16", np.int8)])
def test_interpolated_lookup_equals_naive_and_numpy_on_every_code(x_dtype, out_dtype):
    rng = np.random.default_rng(7)
    info = np.iinfo(out_dtype)
    x, x_min = CODES[x_dtype], int(np.iinfo(x_dtype).min)
    tables = [rng.integers(info.min, info.max + 1, 513), np.full(513, info.max), np.full(513, info.min),
              np.where(np.arange(513) % 2, info.max, info.min), np.sort(rng.integers(info.min, info.max + 1, 513))]
    for table in tables:
        table = table.astype(np.int32)
        fast = kernels.lookup_table_interpolated(x, table, x_min, out_dtype)
        np.testing.assert_array_equal(fast, naive.lookup_table_interpolated(x, table, x_min, out_dtype), strict=True)
        np.testing.assert_array_equal(fast, _interpolated_numpy(x, table, x_min).astype(out_dtype), strict=True)
        np.testing.assert_array_equal(fast[::128], table[:512].astype(out_dtype), strict=True)  # segment starts


def test_interpolated_lookup_golden():
    # Entries 0 and 1 at -32768 and -32640: 100 and 200; x = -32768 + 64 -> 100 + (100 * 64 + 64) >> 7 = 150;
    # x = -32768 + 1 -> 100 + (100 + 64) >> 7 = 101; x = -32768 + 127 -> 100 + (12700 + 64) >> 7 = 199.
    # Entries 2 and 3: 200 and 190; x = -32768 + 128 + 128 + 77 -> 200 + (-10 * 77 + 64) >> 7 = 200 - 6 = 194.
    table = np.zeros(513, np.int32)
    table[:4] = [100, 200, 200, 190]
    x = np.array([-32768, -32768 + 64, -32767, -32768 + 127, -32768 + 333], np.int16)
    for impl in (kernels, naive):
        out = impl.lookup_table_interpolated(x, table, -32768, np.int16)
        np.testing.assert_array_equal(out, np.array([100, 150, 101, 199, 194], np.int16), strict=True)


def _tensor(name, dtype, scale, zp):
    return TensorInfo(name, dtype, (None, 4), scale, zp)


def test_table_of_a_linear_function_is_its_samples_and_interpolation_is_exact_there():
    # f(r) = 2r with s_y = 2 s_x and equal zero points: the output code equals the input code, every entry
    # is the code it belongs to (no midpoint correction for a straight line) and the lookup is the identity.
    x, y = _tensor("x", "int16", 0.01, 5), _tensor("y", "int16", 0.02, 5)
    table = build_interpolated_lut(lambda r: 2 * r, x, y)
    expected = np.clip(-32768 + 128 * np.arange(513), -32768, 32767)
    np.testing.assert_array_equal(table, expected.astype(np.int32), strict=True)
    codes = CODES["int16"][:-128]  # the last segment ends at the clamped entry 32767, not at 32768
    np.testing.assert_array_equal(kernels.lookup_table_interpolated(codes, table, -32768, np.int16), codes, strict=True)


@pytest.mark.parametrize("op, fn, tolerance", [("Sigmoid", lambda r: 1 / (1 + np.exp(-r)), 2),
                                                ("Tanh", np.tanh, 4)])
def test_sigmoid_and_tanh_convert_to_interpolated_tables_close_to_the_full_table(op, fn, tolerance):
    model_onnx = helper.make_model(helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])]), opset_imports=[helper.make_opsetid("", 17)])
    calibration = 3 * np.random.default_rng(3).normal(size=(64, 64)).astype(np.float32)
    outputs = {}
    for mode in ("full", "interpolated"):
        profile = get_profile("paper").replace(activation_bits=16, int16_tables=mode)
        model = intsim.convert(model_onnx, calibration=calibration, profile=profile, progress=False)
        assert [n.op for n in model.graph.nodes] == [{"full": "lut", "interpolated": "lut_interpolated"}[mode]]
        outputs[mode] = model.run_int(CODES["int16"].reshape(-1, 64)).astype(np.int64)
    gap = np.abs(outputs["full"] - outputs["interpolated"])
    assert gap.max() <= tolerance and gap.mean() < 0.3
    x, y = (model.graph.tensors[t] for t in ("x", "y"))
    exact = fn(x.scale * (CODES["int16"].astype(np.float64) - x.zero_point)) / y.scale + y.zero_point
    assert np.abs(outputs["interpolated"].ravel() - exact).max() <= tolerance + 0.5


def test_8_bit_inputs_keep_the_full_table_under_an_interpolated_profile():
    model_onnx = helper.make_model(helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])]), opset_imports=[helper.make_opsetid("", 17)])
    profile = get_profile("paper").replace(int16_tables="interpolated")
    model = intsim.convert(model_onnx, calibration=np.ones((4, 8), np.float32), profile=profile, progress=False)
    assert [n.op for n in model.graph.nodes] == ["lut"]


def test_errors_name_the_mode_the_input_and_the_table():
    with pytest.raises(ValidationError, match="int16_tables must be one of full, interpolated, found 'two-level'"):
        get_profile("paper").replace(int16_tables="two-level")
    with pytest.raises(ValidationError, match="interpolated tables index 16-bit codes, found int8"):
        build_interpolated_lut(np.tanh, _tensor("x", "int8", 0.1, 0), _tensor("y", "int16", 0.1, 0))
    x, y = _tensor("x", "int16", 0.01, 0), _tensor("y", "int16", 2**-15, 0)
    for table, message in [(np.zeros(512, np.int32), r"table must have shape \(513,\)"),
                           (np.full(513, 40000, np.int32), "table")]:
        with pytest.raises(ValidationError, match=message):
            Graph("g", get_profile("paper").replace(activation_bits=16), [x, y],
                  [Node("lut_interpolated", "t", ["x"], ["y"], {}, {"table": table})], ["x"], ["y"])
