"""TFLite import: bit-exact conformance with LiteRT's reference kernels, and the importer's errors.

Every committed model in ``tests/data/tflite`` (written by ``models/make_tflite_suite.py``)
runs in LiteRT with ``OpResolverType.BUILTIN_REF`` and in intsim (fast and
naive kernels) on its committed input, all-min, all-max and seeded random int8
inputs; no element may differ.  The ``float_io_*`` models keep float input and output
(QUANTIZE and DEQUANTIZE at the edges): ``intsim.load(path).run`` on float inputs, exact
rounding ties among them, must give LiteRT's float32 outputs exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import intsim
from intsim import Model
from intsim.errors import ModelFormatError, UnsupportedOpError
from intsim.importers.tflite import load_tflite
from intsim.kernels import naive, softmax_gemmlowp_lastaxis

DATA = Path(__file__).parent / "data" / "tflite"
MODELS = sorted(p.stem for p in DATA.glob("*.tflite") if not p.stem.startswith(("error_", "float_io_")))
FLOAT_IO_MODELS = sorted(p.stem for p in DATA.glob("float_io_*.tflite"))


def _litert(resolver: str):
    """``run(name, x)``: the model's output; ``run(name, x, keep=tensor name)``: (that tensor, output)."""
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    kind = getattr(interpreter.OpResolverType, resolver)

    def run(name, x, keep=None):
        it = interpreter.Interpreter(model_path=str(DATA / f"{name}.tflite"), experimental_op_resolver_type=kind,
                                     experimental_preserve_all_tensors=keep is not None)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        output = it.get_tensor(it.get_output_details()[0]["index"])
        if keep is None:
            return output
        (index,) = [d["index"] for d in it.get_tensor_details() if d["name"] == keep]
        return it.get_tensor(index), output

    return run


def _inputs(name, random_count):
    x = np.load(DATA / f"{name}.input.npy")
    rng = np.random.default_rng(sum(map(ord, name)))
    yield "committed", x
    yield "all-min", np.full_like(x, -128)
    yield "all-max", np.full_like(x, 127)
    for i in range(random_count):
        yield f"random{i}", rng.integers(-128, 128, size=x.shape, dtype=np.int8)


def test_suite_is_committed():
    assert len(MODELS) >= 25
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 3_000_000


@pytest.mark.parametrize("backend, random_count", [("fast", 12), ("naive", 2)])
@pytest.mark.parametrize("name", MODELS)
def test_matches_litert_reference(name, backend, random_count):
    reference = _litert("BUILTIN_REF")
    model = Model(load_tflite(DATA / f"{name}.tflite"), backend=backend)
    for label, x in _inputs(name, random_count):
        expected = reference(name, x)
        np.testing.assert_array_equal(model.run_int(x), expected, strict=True, err_msg=f"{name} {backend} {label}")


def test_optimized_vs_reference_differences():
    """LiteRT's default (optimized) kernels may differ from its reference; intsim follows the reference."""
    reference, optimized = _litert("BUILTIN_REF"), _litert("AUTO")
    report = []
    for name in MODELS:
        model = Model(load_tflite(DATA / f"{name}.tflite"))
        differing = total = 0
        for label, x in _inputs(name, 4):
            expected = reference(name, x)
            np.testing.assert_array_equal(model.run_int(x), expected, strict=True, err_msg=f"{name} {label}")
            differing += int(np.count_nonzero(optimized(name, x) != expected))
            total += expected.size
        report.append(f"{name}: optimized differs from reference in {differing} of {total} elements")
    print("\n".join(report))


def _float_inputs(name, info, random_count):
    """The committed float sample, exact ties ``(j + 1/2) * scale`` over the whole code range and past it
    (clamping), and seeded normal samples."""
    x = np.load(DATA / f"{name}.input.npy")
    rng = np.random.default_rng(sum(map(ord, name)))
    scale = np.float32(info.scale)
    yield "committed", x
    for i in range(random_count):
        steps = rng.integers(-140, 140, size=x.shape) - info.zero_point
        yield f"ties{i}", (steps + 0.5).astype(np.float32) * scale
        yield f"normal{i}", rng.normal(0.0, 2.0, size=x.shape).astype(np.float32)


@pytest.mark.parametrize("backend", ["fast", "naive"])
@pytest.mark.parametrize("name", FLOAT_IO_MODELS)
def test_float_io_matches_litert_reference(name, backend):
    from intsim.runtime import quantize

    reference = _litert("BUILTIN_REF")
    model = intsim.load(DATA / f"{name}.tflite", backend)
    assert model.input_quantization == "float32_half_away"
    info = model.inputs[0]
    ties = half_even_differs = 0
    for label, x in _float_inputs(name, info, 4):
        codes, expected = reference(name, x, keep=info.name)
        np.testing.assert_array_equal(model.quantize_inputs([x])[0], codes, strict=True, err_msg=f"{name} {label}")
        np.testing.assert_array_equal(model.run(x), expected, strict=True, err_msg=f"{name} {backend} {label}")
        quotient = x / np.float32(info.scale)
        ties += int(np.count_nonzero(quotient - np.floor(quotient) == 0.5))
        half_even_differs += int(np.count_nonzero(quantize(x, info, mode="float32_rint") != codes))
    assert ties >= 2 * x.size  # at least half the elements of the 4 tie inputs are exact ties in float32
    assert half_even_differs > 0  # ... and they tell the rounding modes apart


def test_float_io_model_saves_its_input_quantization(tmp_path):
    model = intsim.load(DATA / "float_io_conv_fc.tflite")
    model.save(tmp_path / "m.intsim")
    loaded = intsim.load(tmp_path / "m.intsim")
    assert loaded.input_quantization == "float32_half_away"
    x = next(_float_inputs("float_io_conv_fc", model.inputs[0], 1))[1]
    np.testing.assert_array_equal(loaded.run(x), model.run(x), strict=True)


def test_batch_dimension_is_free():
    model = Model(load_tflite(DATA / "residual_cnn.tflite"))
    x = np.stack([x[0] for _, x in _inputs("residual_cnn", 2)])
    batched = model.run_int(x)
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(batched[i : i + 1], model.run_int(x[i : i + 1]), strict=True)


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def test_not_a_flatbuffer(tmp_path):
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFormatError, match="not a TFLite flatbuffer"):
        load_tflite(path)


def test_corrupt_file(tmp_path):
    blob = bytearray((DATA / "residual_cnn.tflite").read_bytes())
    rng = np.random.default_rng(0)
    blob[8:] = rng.integers(0, 256, size=len(blob) - 8, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFormatError, match="corrupt or truncated"):
        load_tflite(path)


def test_truncated_file(tmp_path):
    blob = (DATA / "residual_cnn.tflite").read_bytes()
    path = tmp_path / "truncated.tflite"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFormatError, match="corrupt or truncated"):
        load_tflite(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot read"):
        load_tflite(tmp_path / "absent.tflite")


def test_float_model_is_refused():
    with pytest.raises(ModelFormatError, match="only fully-int8 models"):
        load_tflite(DATA / "error_float_model.tflite")


def test_unsupported_op_is_named():
    with pytest.raises(UnsupportedOpError, match="LEAKY_RELU"):
        load_tflite(DATA / "error_unsupported_op.tflite")


# --------------------------------------------------------------------------
# The gemmlowp softmax kernel: fast equals naive; probabilities sum to about 1.
# --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), columns=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       input_scale=st.floats(0.005, 2.0), beta=st.sampled_from([0.5, 1.0, 2.0]))
def test_softmax_gemmlowp_fast_equals_naive(rows, columns, seed, input_scale, beta):
    from intsim.fixedpoint import quantize_multiplier

    mult, shift = (int(v) for v in quantize_multiplier(min(beta * input_scale * 2.0**26, 2.0**31 - 1)))
    diff_min = -int(np.floor(31 * 2.0**26 / 2.0**shift))
    x = np.random.default_rng(seed).integers(-128, 128, size=(rows, columns), dtype=np.int8)
    fast, saturated = softmax_gemmlowp_lastaxis(x, mult, shift, diff_min, np.int8)
    slow, slow_saturated = naive.softmax_gemmlowp_lastaxis(x, mult, shift, diff_min, np.int8)
    np.testing.assert_array_equal(fast, slow, strict=True)
    assert saturated == slow_saturated
    centred = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    real = np.exp(beta * input_scale * centred)
    real /= real.sum(axis=1, keepdims=True)
    assert np.abs((fast.astype(np.int64) + 128) / 256.0 - real).max() <= 1.5 / 256
