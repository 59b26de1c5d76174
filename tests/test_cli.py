"""The command line: every subcommand, and errors reported without a traceback."""

import numpy as np
import pytest

from intsim import Model
from intsim.cli import main
from intsim.examples import random_codes, tiny_cnn


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.intsim"
    Model(tiny_cnn("tflite")).save(path)
    return path


def test_demo_reports_zero_mismatches(capsys):
    assert main(["selftest", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("fast vs naive mismatches: 0") == 6


def test_profiles(capsys):
    assert main(["profiles"]) == 0
    assert "[pow2]" in capsys.readouterr().out
    assert main(["profiles", "paper"]) == 0
    assert "rounding = single" in capsys.readouterr().out


def test_inspect(model_file, capsys):
    assert main(["inspect", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "profile 'tflite'" in out and "conv2d" in out and "multiplier" in out


def test_run_int_and_float(model_file, tmp_path, capsys):
    graph = tiny_cnn("tflite")
    x = random_codes(graph.tensors["x"], 2, 4)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(model_file), "--input", str(tmp_path / "x.npy"), "--int",
                 "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), Model(graph).run_int(x), strict=True)
    np.save(tmp_path / "xf.npy", np.zeros((1, 8, 8, 3), np.float32))
    assert main(["run", str(model_file), "--input", str(tmp_path / "xf.npy")]) == 0
    assert main(["trace", str(model_file), "--input", str(tmp_path / "x.npy"), "--int"]) == 0
    assert "headroom" in capsys.readouterr().out


def test_errors_are_reported_not_raised(model_file, tmp_path, capsys):
    assert main(["run", str(model_file), "--input", str(tmp_path / "missing.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.intsim").write_bytes(b"garbage")
    assert main(["inspect", str(tmp_path / "bad.intsim")]) == 2
    assert "not a readable zip" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3), np.int8))
    assert main(["run", str(model_file), "--input", str(tmp_path / "wrong.npy"), "--int"]) == 2
    assert "expected shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run"])


def test_convert_compare_and_demo(tmp_path, capsys):
    from intsim.datasets import load_dataset
    from intsim.models import model_path

    x_train, _ = load_dataset("digits", "train")
    x_test, y_test = load_dataset("digits", "test")
    np.save(tmp_path / "cal.npy", x_train[:128])
    np.save(tmp_path / "x.npy", x_test[:64])
    np.save(tmp_path / "y.npy", y_test[:64])
    onnx_path = str(model_path("resnet_digits.onnx"))
    out = tmp_path / "r.intsim"
    assert main(["convert", onnx_path, "--calibration", str(tmp_path / "cal.npy"), "--profile", "tflite",
                 "--weight-bits", "6", "--range-method", "mse", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "W6A8" in capsys.readouterr().out
    assert main(["compare", onnx_path, str(out), "--data", str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy"), "--html", str(tmp_path / "r.html")]) == 0
    text = capsys.readouterr().out
    assert "SQNR int dB" in text and "accuracy: float" in text and (tmp_path / "r.html").exists()
    assert main(["demo", "--samples", "40", "--calibration-samples", "64"]) == 0
    assert "accuracy: float" in capsys.readouterr().out
    assert main(["convert", onnx_path, "--calibration", str(tmp_path / "missing.npy"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_tosa(model_file, tmp_path, capsys):

    assert main(["export-tosa", str(model_file), str(tmp_path / "t.tosa")]) == 2
    assert "softmax" in capsys.readouterr().err
    path = tmp_path / "nosoftmax.intsim"
    Model(tiny_cnn("tosa", softmax=False)).save(path)
    assert main(["export-tosa", str(path), str(tmp_path / "t2.tosa"), "--batch", "2"]) == 0
    assert (tmp_path / "t2.tosa").read_bytes()[4:8] == b"TOSA"
    assert main(["export-tosa", str(path), str(tmp_path)]) == 2
    assert "expected a file path" in capsys.readouterr().err
