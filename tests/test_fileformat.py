"""The .intsim file: every kind of damaged or hostile file raises ModelFormatError, nothing executes."""

import io
import json
import zipfile

import numpy as np
import pytest

import intsim
from intsim import ModelFormatError, Model
from intsim.examples import tiny_cnn


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.intsim"
    Model(tiny_cnn("tflite")).save(path)
    return path


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _edit_manifest(good_file, tmp_path, edit):
    members = _members(good_file)
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    members["manifest.json"] = json.dumps(manifest)
    return _write(tmp_path / "edited.intsim", members)


def test_manifest_describes_the_graph(good_file):
    manifest = json.loads(_members(good_file)["manifest.json"])
    assert manifest["format"] == "intsim" and manifest["schema_version"] == 1
    assert manifest["graph"]["profile"]["name"] == "tflite"
    assert [n["op"] for n in manifest["graph"]["nodes"]] == ["conv2d", "conv2d", "max_pool", "mean",
                                                            "fully_connected", "softmax"]


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        intsim.load(tmp_path / "absent.intsim")


def test_not_a_zip(tmp_path):
    path = tmp_path / "text.intsim"
    path.write_text("hello")
    with pytest.raises(ModelFormatError, match="not a readable zip"):
        intsim.load(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_file(good_file, tmp_path, keep):
    data = good_file.read_bytes()
    path = tmp_path / "cut.intsim"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFormatError):
        intsim.load(path)


def test_flipped_bytes_inside_a_member(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    start = data.index(b"arrays/0.weight.npy") + 40  # inside the first array's compressed bytes
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    path = tmp_path / "flipped.intsim"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError):
        intsim.load(path)


def test_missing_manifest_and_member(good_file, tmp_path):
    members = _members(good_file)
    no_manifest = {k: v for k, v in members.items() if k != "manifest.json"}
    with pytest.raises(ModelFormatError, match="member 'manifest.json' is missing"):
        intsim.load(_write(tmp_path / "a.intsim", no_manifest))
    no_bias = {k: v for k, v in members.items() if k != "arrays/0.bias.npy"}
    with pytest.raises(ModelFormatError, match="node 'conv' parameter bias.*'arrays/0.bias.npy' is missing"):
        intsim.load(_write(tmp_path / "b.intsim", no_bias))


def test_manifest_not_json(good_file, tmp_path):
    members = _members(good_file)
    members["manifest.json"] = b"{not json"
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        intsim.load(_write(tmp_path / "c.intsim", members))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format="onnx"), "format must be 'intsim'"),
        (lambda m: m.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda m: m.pop("graph"), "missing field 'graph'"),
        (lambda m: m["graph"].update(nodes="x"), "field 'nodes' must be list"),
        (lambda m: m["graph"]["tensors"][0].update(scale="big"), "field 'scale' must be int/float"),
        (lambda m: m["graph"]["tensors"][0].update(zero_point=True), "field 'zero_point' must be int"),
        (lambda m: m["graph"]["profile"].update(rounding="stochastic"), "rounding must be one of"),
        (lambda m: m["graph"]["profile"].update(turbo=True), "unknown profile field"),
        (lambda m: m["graph"]["nodes"][0].update(op="Conv"), "inconsistent graph.*op 'Conv'"),
        (lambda m: m["graph"]["tensors"][1].update(shape=[None, 8, 8, 5]), "inconsistent graph.*declared"),
        (lambda m: m["graph"]["nodes"][0]["params"].update(bias="arrays/1.bias.npy"),
         r"inconsistent graph.*bias must have shape \(4,\)"),
    ],
)
def test_inconsistent_manifests(good_file, tmp_path, edit, message):
    with pytest.raises(ModelFormatError, match=message):
        intsim.load(_edit_manifest(good_file, tmp_path, edit))


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_arrays_are_never_executed(good_file, tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    members = _members(good_file)
    members["arrays/0.bias.npy"] = buffer.getvalue()
    with pytest.raises(ModelFormatError, match="not a valid .npy array"):
        intsim.load(_write(tmp_path / "evil.intsim", members))
    assert not marker.exists()


def test_non_numeric_arrays_are_rejected(good_file, tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array(["a", "b"]), allow_pickle=False)
    members = _members(good_file)
    members["arrays/0.bias.npy"] = buffer.getvalue()
    with pytest.raises(ModelFormatError, match="integer or float array"):
        intsim.load(_write(tmp_path / "str.intsim", members))
