"""Fixing symbolic input dimensions: ``input_shapes=`` in the importer and ``convert``, ``--input-shape``
on the command line (a model like PaddleOCR's classifier declares ``[-1, 3, None, None]``)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

import intsim
from intsim.cli import main
from intsim.errors import ValidationError
from intsim.importers.onnx import import_onnx


@pytest.fixture
def dynamic_hw(tmp_path):
    """Conv 3->4 (3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten on input ``x`` [n, 3, h, w]."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "dynamic_hw", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [weight, bias])
    path = tmp_path / "dynamic_hw.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, rng.random((16, 3, 8, 12), dtype=np.float32)


def test_symbolic_spatial_dims_need_input_shapes(dynamic_hw):
    path, _ = dynamic_hw
    with pytest.raises(ValidationError, match=r"only dim 0 .* fix the others with input_shapes=\{'x': \(1, \.\.\.\)\}"
                                              r" \(CLI: --input-shape x:1,\.\.\.\)"):
        import_onnx(path)
    graph = import_onnx(path, input_shapes={"x": (1, 3, 8, 12)})
    assert graph.shapes["x"] == (None, 3, 8, 12) and graph.shapes["c"] == (None, 4, 8, 12)


@pytest.mark.parametrize("shapes, message", [
    ({"z": (1, 3, 8, 8)}, r"input_shapes names 'z', but the graph's inputs are 'x'"),
    ({"x": (1, 3, 8)}, r"input_shapes\['x'\] = \(1, 3, 8\) has rank 3, but graph input 'x' has shape "
                       r"\[None, 3, None, None\] \(rank 4\)"),
    ({"x": (1, 4, 8, 8)}, r"dim 1 is fixed to 3 by the file \(shape \[None, 3, None, None\]\), found 4"),
    ({"x": (1, 3, 0, 8)}, r"dim 2 must be >= 1, found 0"),
    ({"x": (1, 3, "a", 8)}, r"input_shapes\['x'\] must be a sequence of ints or None"),
])
def test_input_shapes_are_checked(dynamic_hw, shapes, message):
    with pytest.raises(ValidationError, match=message):
        import_onnx(dynamic_hw[0], input_shapes=shapes)


def test_convert_and_compare_with_fixed_shapes(dynamic_hw, tmp_path, capsys):
    path, x = dynamic_hw
    model = intsim.convert(path, calibration=x, input_shapes={"x": (1, 3, 8, 12)})
    assert model.graph.metadata["input_shapes"] == {"x": [1, 3, 8, 12]}
    report = intsim.compare(path, model, x)  # imports the float model with the shapes the conversion kept
    assert report.samples == 16 and report.layers[-1].sqnr_int > 20
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "m.intsim"
    assert main(["convert", str(path), "--calibration", str(tmp_path / "x.npy"), "-o", str(out)]) == 1
    assert "--input-shape x:1" in capsys.readouterr().err
    assert main(["convert", str(path), "--calibration", str(tmp_path / "x.npy"), "-o", str(out),
                 "--input-shape", "x:?,3,8,12"]) == 0
    assert intsim.load(out).graph.metadata["input_shapes"] == {"x": [None, 3, 8, 12]}
    assert main(["compare", str(path), str(out), "--data", str(tmp_path / "x.npy")]) == 0
