"""intsim.distributed: evaluations and sweeps on a real Dask scheduler and two worker processes on 127.0.0.1
(started as subprocesses, killed by PID at the end) give the serial results exactly, survive a killed
worker, and report a configuration that fails to convert.  The ``slow`` case starts a local cluster of
its own (about 25 s on the shared machine); run everything with
``python -m pytest tests/test_distributed.py -q -m "slow or not slow"``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import intsim
from intsim.errors import ValidationError

distributed = pytest.importorskip("distributed")

from intsim.distributed import NpyData, cluster_client, evaluate  # noqa: E402
from intsim.distributed.cluster import WORKER_ENVIRONMENT  # noqa: E402
from intsim.hwval import bitwidth_sweep, sweep  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_worker(address: str) -> subprocess.Popen:
    # --no-nanny: the worker is the process we start, so killing its PID kills the worker.
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                            env={**os.environ, **WORKER_ENVIRONMENT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def scheduler():
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", str(port), "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        processes += [_start_worker(address) for _ in range(2)]
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield address, client
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="module")
def digits():
    from intsim.datasets import load_digits
    from intsim.models import model_path

    x_train, _ = load_digits("train")
    x_test, y_test = load_digits("test")
    onnx_path = model_path("resnet_digits.onnx")
    model = intsim.convert(onnx_path, calibration=x_train[:64], profile="tflite", progress=False)
    return onnx_path, model, x_train[:64], x_test[:120], y_test[:120]


def test_evaluate_on_two_workers_equals_serial_and_independent_counts(scheduler, digits, tmp_path):
    _, client = scheduler
    onnx_path, model, _, x, y = digits
    serial = evaluate(model, x, y, batch_size=16)
    spread = evaluate(model, x, y, batch_size=16, client=client)
    assert spread.to_dict() == serial.to_dict()
    np.save(tmp_path / "x.npy", x)
    mapped = evaluate(model, NpyData(tmp_path / "x.npy"), y, batch_size=40, client=client)
    assert mapped.to_dict() == serial.to_dict()
    # the counts, recomputed by one whole-data trace here
    trace = model.trace(x, float_input=True)
    top = trace.tensors[model.graph.outputs[0]].argmax(axis=1)
    assert serial.correct == int(np.sum(top == y))
    for layer in serial.layers:
        assert layer.outputs == trace.tensors[next(n for n in model.graph.nodes if n.name == layer.node).outputs[0]].size
        assert layer.clamped == trace.stats[layer.node].get("saturation_count", 0)
    with_float = evaluate(model, x, y, float_model=onnx_path, batch_size=32, client=client)
    assert with_float.to_dict() == evaluate(model, x, y, float_model=onnx_path, batch_size=32).to_dict()
    assert with_float.reference == "float" and 0 < with_float.agreeing <= len(x)


def test_sweep_on_two_workers_equals_serial(scheduler, digits):
    _, client = scheduler
    _, model, _, x, y = digits
    serial = sweep(model, x, y, [16, 20, 24], batch_size=16)
    spread = sweep(model, x, y, [16, 20, 24], batch_size=16, client=client)
    assert spread.table() == serial.table()
    assert json.dumps(spread.to_dict()) == json.dumps(serial.to_dict())


def test_bitwidth_sweep_on_two_workers_equals_serial_and_reports_a_failing_configuration(scheduler, digits):
    _, client = scheduler
    onnx_path, _, calibration, x, y = digits
    options = dict(weight_bits=[1, 4, 8], activation_bits=[8], profile="tflite", batch_size=32)
    serial = bitwidth_sweep(onnx_path, calibration, x, y, **options)
    spread = bitwidth_sweep(onnx_path, calibration, x, y, client=client, **options)
    assert json.dumps(spread.to_dict()) == json.dumps(serial.to_dict())
    assert spread.table() == serial.table()
    failed, w4, w8 = spread.rows
    assert failed.weight_bits == 1 and failed.error is not None and "ValidationError" in failed.error
    assert "failed: ValidationError" in spread.table()
    assert w4.error is None and w8.error is None and w4.final_bits < w8.final_bits


def test_compare_on_two_workers_equals_serial(scheduler, digits):
    _, client = scheduler
    onnx_path, model, _, x, y = digits
    serial = intsim.compare(onnx_path, model, x, y, batch_size=16)
    spread = intsim.compare(onnx_path, model, x, y, batch_size=16, client=client)
    assert json.dumps(spread.to_dict()) == json.dumps(serial.to_dict())


def test_compare_of_a_model_with_integer_inputs_on_two_workers_equals_serial(scheduler):
    from tests.test_sequence import _tiny_bert, _token_batch

    _, client = scheduler
    onnx_model = _tiny_bert()
    model = intsim.convert(onnx_model, _token_batch(16, 3), "paper", progress=False)
    feeds = _token_batch(40, 5)
    serial = intsim.compare(onnx_model, model, feeds, batch_size=8, progress=False)
    spread = intsim.compare(onnx_model, model, feeds, batch_size=8, progress=False, client=client)
    assert serial.samples == 40 and serial.output_sqnr_int > 10
    assert json.dumps(spread.to_dict()) == json.dumps(serial.to_dict())


def test_a_killed_worker_still_gives_identical_results(scheduler, digits):
    address, client = scheduler
    _, model, _, x, y = digits
    x, y = x[:96], y[:96]
    serial = sweep(model, x, y, [16, 24], batch_size=8)
    before = set(client.scheduler_info()["workers"])
    victim = _start_worker(address)
    try:
        client.wait_for_workers(3, timeout=120)
        killed = []

        def kill_when_busy():
            processing = client.processing()
            victims = [w for w in processing if w not in before and processing[w]]
            if victims and not killed:
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victims[0])

        def watch():
            deadline = time.monotonic() + 120
            while not killed and time.monotonic() < deadline:
                kill_when_busy()
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        spread = sweep(model, x, y, [16, 24], batch_size=8, client=client)
        watcher.join()
    finally:
        _stop(victim)
    assert killed, "the third worker never received a task"
    assert json.dumps(spread.to_dict()) == json.dumps(serial.to_dict())


@pytest.mark.slow
def test_local_cluster_runs_workers_without_the_nanny_malloc_trim(digits):
    _, model, _, x, y = digits
    with cluster_client(workers=1) as client:
        environ = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "NUMBA_NUM_THREADS")})
        assert list(environ.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "NUMBA_NUM_THREADS": "1"}]
        assert evaluate(model, x, y, batch_size=64, client=client).to_dict() == \
            evaluate(model, x, y, batch_size=64).to_dict()


def test_cli_evaluate_and_sweep_against_the_scheduler(scheduler, digits, tmp_path, capsys):
    from intsim.cli import main

    address, _ = scheduler
    _, model, _, x, y = digits
    model.save(tmp_path / "m.intsim")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    common = [str(tmp_path / "m.intsim"), "--data", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    outputs = []
    for extra in ([], ["--dask", address]):
        assert main(["evaluate", *common, "--batch-size", "32", *extra]) == 0
        assert main(["sweep", *common, "--acc-bits", "18,24", "--batch-size", "32", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "evaluation of" in outputs[0] and "accumulator sweep of" in outputs[0]


def test_bad_cluster_options_are_typed_errors(tmp_path, capsys):
    from intsim.cli import main

    with pytest.raises(ValidationError, match="give --workers or --dask, not both"):
        with cluster_client(workers=2, address="tcp://127.0.0.1:1"):
            pass
    with pytest.raises(ValidationError, match="--workers must be at least 1, found 0"):
        with cluster_client(workers=0):
            pass
    with pytest.raises(ValidationError, match=r"data file .*missing.npy does not exist"):
        NpyData(tmp_path / "missing.npy")
    from intsim import examples

    model = intsim.Model(examples.tiny_cnn("tflite"))
    with pytest.raises(ValidationError, match=r"evaluate: labels must have shape \(2,\), found \(3,\)"):
        evaluate(model, np.zeros((2, *model.graph.tensors["x"].shape[1:]), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValidationError, match="evaluate: float_input=True needs float data, found dtype int8"):
        evaluate(model, np.zeros((2, 3), np.int8))
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    model.save(tmp_path / "m.intsim")
    assert main(["evaluate", str(tmp_path / "m.intsim"), "--data", str(tmp_path / "x.npy"), "--workers", "0"]) == 2
    assert "--workers must be at least 1, found 0" in capsys.readouterr().err
