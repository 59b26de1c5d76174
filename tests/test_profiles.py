"""Hardware profiles: built-ins, TOML files, and every validation error."""

import numpy as np
import pytest

from intsim import Model, Profile, ValidationError, get_profile
from intsim.examples import random_codes, tiny_cnn
from intsim.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from intsim.profiles import builtin_names


def test_builtins_load_and_say_what_they_model():
    assert builtin_names() == ["onnxruntime", "onnxruntime_avx2", "paper", "pow2", "tflite", "tosa"]
    tflite = get_profile("tflite")
    assert (tflite.rounding, tflite.weight_range(), tflite.activation_range()) == ("double", (-127, 127), (-128, 127))
    ort = get_profile("onnxruntime")
    assert (ort.rounding, ort.activation_dtype, ort.weight_range(), ort.per_channel) == (
        "float32_rint", np.dtype(np.uint8), (-128, 127), False)
    assert get_profile("onnxruntime_avx2").pairwise_int16
    paper = get_profile("paper")
    assert paper.per_channel and paper.weight_symmetric and not paper.activation_symmetric
    pow2 = get_profile("pow2")
    assert pow2.power_of_two_scales and pow2.rounding == "single"


def test_a_user_toml_profile_drives_the_runtime(tmp_path):
    path = tmp_path / "npu.toml"
    path.write_text('name = "npu"\nrounding = "single"\naccumulator_bits = 16\noverflow = "saturate"\n')
    profile = get_profile(str(path))
    assert profile == Profile("npu", rounding="single", accumulator_bits=16, overflow="saturate")
    graph = tiny_cnn(profile)
    trace = Model(graph).trace(random_codes(graph.tensors["x"], 2))
    # The 3x3x3 convolution reaches |acc| ~ 10**5 with 32 bits (demo table); at 16 bits some saturate.
    assert trace.stats["conv"]["overflow_count"] > 0
    assert np.abs(trace.accumulators["conv"]).max() <= 2**15


def test_sixteen_bit_activations_and_narrow_weights():
    profile = get_profile("paper").replace(activation_bits=16, weight_bits=4, multiplier_bits=15)
    assert profile.activation_dtype == np.dtype(np.int16)
    assert profile.weight_range() == (-7, 7)
    graph = tiny_cnn(profile)
    x = random_codes(graph.tensors["x"], 2)
    np.testing.assert_array_equal(Model(graph).run_int(x), Model(graph, "naive").run_int(x), strict=True)


def test_power_of_two_scales_requantize_as_a_rounding_shift():
    # With scale 2**-k the multiplier is 2**30 and shift 1 - k; single rounding of x * 2**30 / 2**(31 - (1 - k))
    # is (x + 2**(k-1)) >> k with a floor shift: the shift-only hardware's operation.
    x = np.arange(-1000, 1001, dtype=np.int32)
    for k in range(1, 12):
        m, s = quantize_multiplier(2.0**-k)
        assert (int(m), int(s)) == (2**30, 1 - k)
        expected = np.array([(int(v) + 2 ** (k - 1)) >> k for v in x], np.int32)
        np.testing.assert_array_equal(multiply_by_quantized_multiplier(x, m, s, "single"), expected, strict=True)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"weight_bits": 1}, r"weight_bits must be in \[2, 16\], found 1"),
        ({"activation_bits": 17}, r"activation_bits must be in \[2, 16\]"),
        ({"accumulator_bits": 40}, r"accumulator_bits must be in \[8, 32\]"),
        ({"bias_bits": 4}, r"bias_bits must be in \[8, 32\]"),
        ({"multiplier_bits": 32}, r"multiplier_bits must be in \[2, 31\]"),
        ({"rounding": "stochastic"}, "rounding must be one of double, single"),
        ({"overflow": "ignore"}, "overflow must be one of saturate, wrap, error"),
        ({"per_channel": "yes"}, "per_channel must be bool"),
        ({"weight_bits": 8.0}, "weight_bits must be int"),
        ({"weight_bits": True}, "weight_bits must be int"),
        ({"power_of_two_scales": True, "rounding": "float32_rint"}, "power_of_two_scales needs an integer rounding"),
        ({"pairwise_int16": True, "activation_bits": 16}, "pairwise_int16 models 8-bit"),
    ],
)
def test_invalid_fields(fields, message):
    with pytest.raises(ValidationError, match=message):
        Profile("bad", **fields)


def test_toml_errors(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        get_profile(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ValidationError, match="not valid TOML"):
        get_profile(str(bad))
    bad.write_text('name = "x"\nturbo = true\n')
    with pytest.raises(ValidationError, match="unknown profile field.*turbo"):
        get_profile(str(bad))
    bad.write_text("weight_bits = 8\n")
    with pytest.raises(ValidationError, match="needs a name"):
        get_profile(str(bad))
    with pytest.raises(ValidationError, match="unknown profile 'tpu'"):
        get_profile("tpu")
    with pytest.raises(ValidationError, match="profile must be a name"):
        get_profile(42)


def test_float_island_order_is_validated_and_set_for_onnxruntime():
    with pytest.raises(ValidationError, match="float_island_order must be one of exact, mlas, found 'fast'"):
        Profile(name="chip", float_island_order="fast")
    assert get_profile("onnxruntime").float_island_order == "mlas"
    assert get_profile("onnxruntime_avx2").float_island_order == "mlas"
    assert get_profile("tflite").float_island_order == "exact"
