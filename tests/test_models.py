"""The shipped float ONNX models: present, small, valid, of the agreed op set,
and as accurate under onnxruntime as ``accuracy.json`` records."""

import json
import os

import numpy as np
import onnx
import pytest

from intsim.datasets import FASHION_MNIST_ROOT, load_dataset
from intsim.models import model_path

ACCURACY = json.loads(model_path("accuracy.json").read_text())
MODELS = ["resnet_digits", "mobilenet_digits", "resnet_fashion", "mobilenet_fashion"]
# (file stem, key in accuracy.json): the dynamo exports are the same nets as the legacy ones.
FILES = [(key, key) for key in MODELS] + [(f"{key}_dynamo", key) for key in MODELS if key.endswith("_digits")]
# Ops the exporters may emit for nets.py's layers (BatchNorm is folded into Conv).
ALLOWED_OPS = {"Add", "Clip", "Constant", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "ReduceMean", "Relu", "Reshape"}
MAX_BYTES = 1 << 20


def _dataset(key):
    return key.rsplit("_", 1)[1]


def _needs_data(key):
    if _dataset(key) == "fashion" and not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip(f"{FASHION_MNIST_ROOT} absent (apt install dataset-fashion-mnist)")


def test_accuracy_json_lists_every_model():
    assert sorted(ACCURACY) == sorted(MODELS)
    for key in MODELS:
        assert set(ACCURACY[key]) == {"float_test_accuracy", "test_samples", "epochs", "params", "onnx_bytes"}


@pytest.mark.parametrize("stem, key", FILES)
def test_model_file_is_small_valid_onnx(stem, key):
    path = model_path(f"{stem}.onnx")
    assert path.is_file(), f"{path} missing: run python models/train.py"
    assert path.stat().st_size < MAX_BYTES
    assert not path.with_name(path.name + ".data").exists(), "weights must be inside the .onnx file"
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {node.op_type for node in model.graph.node} <= ALLOWED_OPS
    (x,), (logits,) = model.graph.input, model.graph.output
    assert x.name == "x" and logits.name == "logits"
    x_dims = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    side = 8 if _dataset(key) == "digits" else 28
    assert isinstance(x_dims[0], str) and x_dims[1:] == [1, side, side]


@pytest.mark.parametrize("key", MODELS)
def test_recorded_size_is_the_shipped_file(key):
    assert ACCURACY[key]["onnx_bytes"] == model_path(f"{key}.onnx").stat().st_size


@pytest.mark.parametrize("stem, key", FILES)
def test_float_accuracy_matches_record(stem, key):
    ort = pytest.importorskip("onnxruntime")
    _needs_data(key)
    images, labels = load_dataset(_dataset(key), "test")
    assert len(labels) == ACCURACY[key]["test_samples"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path(f"{stem}.onnx")), opts, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"x": images})[0]
    assert logits.shape == (len(labels), 10)
    accuracy = 100.0 * np.mean(logits.argmax(1) == labels)
    assert accuracy == pytest.approx(ACCURACY[key]["float_test_accuracy"], abs=0.1)
