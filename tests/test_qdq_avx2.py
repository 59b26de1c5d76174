"""QDQ models under the ``onnxruntime_avx2`` profile against onnxruntime on an emulated AVX2 CPU without VNNI.

``tests/test_onnxruntime_avx2.py`` explains the emulation (``qemu-x86_64 -cpu Haswell`` running the same
onnxruntime wheel, which then takes its ``vpmaddubsw`` u8s8 kernels).  Here the models are QDQ files from
``quantize_static``: onnxruntime fuses them into the same QLinear kernels, so intsim's QDQ import under
``onnxruntime_avx2`` must equal the emulated onnxruntime in every code tensor, and the exact
``onnxruntime`` profile must not (the pairs saturate).  Skips where ``qemu-x86_64`` is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import intsim  # noqa: E402
from intsim.datasets import load_dataset  # noqa: E402
from intsim.models import model_path  # noqa: E402
from tests.test_onnxruntime_avx2 import _run_emulated  # noqa: E402
from tests.test_qdq import _quantize_qdq, _with_outputs  # noqa: E402

@pytest.fixture(params=[("resnet_digits", "u8s8_per_channel"),
                        pytest.param(("mobilenet_digits", "u8s8"), marks=pytest.mark.slow)], ids=lambda p: "_".join(p))
def emulated(request, tmp_path):
    """``(QDQ model, input batch, {probed code tensor: onnxruntime's codes})`` from one emulated onnxruntime."""
    name, variant = request.param
    calibration, _ = load_dataset("digits", "train")
    x, _ = load_dataset("digits", "test")
    model = _quantize_qdq(model_path(f"{name}.onnx"), tmp_path / "model.qdq", variant, calibration[:32])
    codes = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    onnx.save(_with_outputs(model, codes), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "model.in.npz", **{"0:x": x[:48]})
    _run_emulated(tmp_path)
    with np.load(tmp_path / "model.out.npz") as out:
        return model, x[:48], {c: out[f"0:{c}"] for c in codes}


def test_qdq_models_match_emulated_avx2_onnxruntime(emulated):
    # About 15 s per model (the emulation); mobilenet_digits runs with -m slow.
    model, x, theirs = emulated
    differs = {}
    for profile in ("onnxruntime_avx2", "onnxruntime"):
        ours = intsim.load(model, profile=profile)
        trace = ours.trace(x, float_input=True)
        mapping = ours.graph.metadata["onnx_tensors"]
        differs[profile] = 0
        for code, expected in theirs.items():
            if code not in mapping:
                continue
            got = trace.tensors[mapping[code]["tensor"]]
            perm = mapping[code]["perm"]
            got = got.transpose(np.argsort(perm)) if perm is not None else got
            if profile == "onnxruntime_avx2":
                np.testing.assert_array_equal(got, expected, strict=True, err_msg=code)
            differs[profile] += int(np.count_nonzero(got != expected))
    assert differs["onnxruntime"] > 0  # the emulated onnxruntime really ran the saturating AVX2 kernels
