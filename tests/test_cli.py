"""The command line: every subcommand, and errors reported without a traceback."""

import importlib.util
import json
import subprocess
import sys
import time
import tomllib
import warnings

import numpy as np
import pytest

import intsim
from intsim import Model, Profile, get_profile, progress
from intsim.cli import main
from intsim.config import progress_enabled
from intsim.errors import InputWarning
from intsim.examples import random_codes, tiny_cnn
from intsim.profiles import builtin_names


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.intsim"
    Model(tiny_cnn("tflite")).save(path)
    return path


def test_selftest_checks_trace_and_run_paths(capsys):
    assert main(["selftest", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("fast vs naive mismatches: 0; run (fused) fast vs naive and vs trace") == 6
    assert out.count("outputs: mismatches 0") == 6
    assert main(["selftest", "--batch", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["profile"] for r in results] == builtin_names()
    assert all(r["run_elements"] == 2 * 5 and r["run_mismatches"] == 0 and r["trace_mismatches"] == 0
               for r in results)


@pytest.mark.parametrize("name", builtin_names())
def test_profiles_print_toml_that_loads_back(name, capsys):
    assert main(["profiles", name]) == 0
    assert Profile.from_dict(tomllib.loads(capsys.readouterr().out)) == get_profile(name)
    assert main(["profiles", name, "--json"]) == 0
    assert Profile.from_dict(json.loads(capsys.readouterr().out)) == get_profile(name)


def test_profiles_list(capsys):
    assert main(["profiles"]) == 0
    assert "[pow2]" in capsys.readouterr().out
    assert main(["profiles", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == builtin_names()


def test_inspect(model_file, capsys):
    assert main(["inspect", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "profile 'tflite'" in out and "conv2d" in out and "multiplier" in out
    assert main(["inspect", str(model_file), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    graph = tiny_cnn("tflite")
    assert document["profile"]["name"] == "tflite" and [i["name"] for i in document["inputs"]] == graph.inputs
    assert [(n["op"], n["name"]) for n in document["nodes"]] == [(n.op, n.name) for n in graph.nodes]
    assert document["nodes"][0]["params"]["multiplier"]["dtype"] == str(graph.nodes[0].params["multiplier"].dtype)


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
    assert main(["run", str(model_file), "--input", str(tmp_path / "missing.npy")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.intsim").write_bytes(b"garbage")
    assert main(["inspect", str(tmp_path / "bad.intsim")]) == 1
    assert "not a readable zip" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3), np.int8))
    assert main(["run", str(model_file), "--input", str(tmp_path / "wrong.npy"), "--int"]) == 1
    assert "expected shape" in capsys.readouterr().err


def test_usage_errors_exit_2_runtime_errors_exit_1(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(model_file), "--input", "x.npy", "--no-such-option"])
    assert exit_info.value.code == 2
    assert main(["convert", "m.onnx", "--calibration", "c.npy", "-o", "m.intsim", "--input-shape", "x:1,a"]) == 2
    assert "--input-shape takes NAME:D0,D1" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.intsim")]) == 1


def test_outputs_are_checked_before_computing(model_file, tmp_path, capsys, monkeypatch):
    # The input does not exist either: a usage error (2) before anything is read proves the order.
    missing = str(tmp_path / "missing.npy")
    assert main(["run", str(model_file), "--input", missing, "--output", str(tmp_path / "no" / "y.npy")]) == 2
    assert f"the folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    assert main(["run", str(model_file), "--input", missing, "--output", str(tmp_path / "y.txt")]) == 2
    assert "expected a .npy, .npz, .csv file" in capsys.readouterr().err
    assert main(["compare", "m.onnx", str(model_file), "--data", missing, "--html", str(tmp_path / "no/r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["compare", "m.onnx", str(model_file), "--data", missing, "--plot", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "needs matplotlib" in err


def test_run_output_honours_the_extension(model_file, tmp_path, capsys):
    graph = tiny_cnn("tflite")
    x = random_codes(graph.tensors["x"], 3, 4)
    expected = Model(graph).run_int(x)
    np.save(tmp_path / "x.npy", x)
    run = ["run", str(model_file), "--input", str(tmp_path / "x.npy"), "--int", "--output"]
    assert main(run + [str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as saved:
        np.testing.assert_array_equal(saved[graph.outputs[0]], expected, strict=True)
    assert main(run + [str(tmp_path / "y.csv")]) == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "y.csv", delimiter=",", dtype=np.int64, ndmin=2),
                                  expected.reshape(3, -1).astype(np.int64), strict=True)
    assert not (tmp_path / "y.csv.npy").exists()
    capsys.readouterr()
    assert main(run[:-1] + ["--json"]) == 0
    (output,) = json.loads(capsys.readouterr().out)["outputs"]
    assert output["name"] == graph.outputs[0] and output["shape"] == list(expected.shape)
    np.testing.assert_array_equal(np.array(output["values"], dtype=output["dtype"]), expected, strict=True)


def test_integer_float_input_warns(model_file, tmp_path, capsys):
    np.save(tmp_path / "pixels.npy", np.full((1, 8, 8, 3), 200, np.uint8))
    assert main(["run", str(model_file), "--input", str(tmp_path / "pixels.npy")]) == 0
    assert "intsim: warning: input 'x': float input has integer dtype uint8" in capsys.readouterr().err
    model = Model(tiny_cnn("tflite"))
    info = model.inputs[0]
    hi = info.scale * (127 - info.zero_point)
    with pytest.warns(InputWarning, match="lie far outside the range"):
        model.run(np.full((1, 8, 8, 3), 5 * hi, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run(np.full((1, 8, 8, 3), hi, np.float32))


def test_version_and_python_m(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"intsim {intsim.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "intsim", "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"intsim {intsim.__version__}\n")


def test_progress_redraws_while_a_step_takes_long(capsys, monkeypatch):
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.01)
    with progress.Progress(4, progress_enabled(), "comparing") as bar:
        time.sleep(0.2)  # one long step (a first numba compile), no update
        bar.update(4)
    draws = capsys.readouterr().err.split("\r")[1:]
    assert len(draws) >= 5 and draws[1].startswith("comparing [....") and draws[-1].startswith("comparing [####")
    monkeypatch.setenv("INTSIM_PROGRESS", "0")
    with progress.Progress(None, progress_enabled(), "converting"):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""


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
    assert "SQNR int dB" in text and "accuracy: float" in text
    assert "<img alt='per-layer SQNR' src='data:image/png;base64," in (tmp_path / "r.html").read_text()
    assert main(["compare", onnx_path, str(out), "--data", str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["samples"] == 64 and set(document["accuracy"]) == {"float", "simulated", "integer"}
    np.save(tmp_path / "x_wide.npy", np.zeros((100, 1, 8, 9), np.float32))
    assert main(["compare", onnx_path, str(out), "--data", str(tmp_path / "x_wide.npy")]) == 1
    assert "expected shape (N, 1, 8, 8), found (100, 1, 8, 9)" in capsys.readouterr().err
    assert main(["demo", "--samples", "40", "--calibration-samples", "64"]) == 0
    assert "accuracy: float" in capsys.readouterr().out
    assert main(["convert", onnx_path, "--calibration", str(tmp_path / "missing.npy"), "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    np.save(tmp_path / "cal_uint8.npy", np.rint(x_train[:16] * 16).astype(np.uint8))
    assert main(["convert", onnx_path, "--calibration", str(tmp_path / "cal_uint8.npy"), "-o", str(out)]) == 0
    assert "intsim: warning: calibration" in capsys.readouterr().err


def test_export_tosa(model_file, tmp_path, capsys):

    assert main(["export-tosa", str(model_file), str(tmp_path / "t.tosa")]) == 1
    assert "softmax" in capsys.readouterr().err
    path = tmp_path / "nosoftmax.intsim"
    Model(tiny_cnn("tosa", softmax=False)).save(path)
    assert main(["export-tosa", str(path), str(tmp_path / "t2.tosa"), "--batch", "2"]) == 0
    assert (tmp_path / "t2.tosa").read_bytes()[4:8] == b"TOSA"
    assert main(["export-tosa", str(path), str(tmp_path)]) == 1
    assert "expected a file path" in capsys.readouterr().err
