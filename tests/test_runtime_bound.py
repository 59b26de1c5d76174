"""BoundRun: a model's repeated calls over preallocated arrays equal the plan's first call and the naive kernels."""

import os
import subprocess
import sys

import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

from intsim import Model
from intsim.errors import InputWarning, ValidationError
from intsim.examples import branchy, random_codes, tiny_cnn
from intsim.runtime import bound as bound_module
from intsim.runtime.bound import BoundRun
from intsim.runtime.model import dequantize


@pytest.mark.parametrize("profile", ["paper", "tflite", "onnxruntime"])
@pytest.mark.parametrize("build", [tiny_cnn, branchy])
def test_repeated_calls_equal_the_naive_kernels_and_keep_earlier_outputs(profile, build):
    graph = build(profile)
    fast, naive = Model(graph), Model(graph, "naive")
    kept = []
    for batch, seed in ((2, 0), (2, 1), (1, 2), (2, 3), (1, 4), (2, 5)):
        x = random_codes(graph.tensors["x"], batch, seed)
        outs = fast.run_int(x)
        expected = naive.run_int(x)
        outs, expected = (o if isinstance(o, tuple) else (o,) for o in (outs, expected))
        for out, want in zip(outs, expected):
            np.testing.assert_array_equal(out, want, strict=True)
            kept.append((out, out.copy()))
    # From the second call with a signature on, a bound run served it where some step has fixed calls
    # (tiny_cnn's convs, mean and fully-connected layer; branchy's adds), and no output it returned was
    # overwritten by a later call.
    plan = fast._run_plan()
    assert len(plan.bound) == 2
    called = {getattr(f, "__name__", "") for bound in plan.bound.values() for f, _ in bound[0].calls}
    assert called >= ({"mean_core", "conv2d_gemm_serial"} if build is tiny_cnn else {"add_core"})
    for out, copy in kept:
        np.testing.assert_array_equal(out, copy, strict=True)
    # A bound run built for each signature, whatever its steps (views, copies, fixed calls), repeats the
    # naive kernels' results on new inputs.
    for seed, (signature, layouts) in enumerate(plan.layouts.items()):
        bound = BoundRun(plan, *layouts)
        for repeat in range(2):
            x = random_codes(graph.tensors["x"], signature[0][0][0], 10 + 2 * seed + repeat)
            outs = bound.run([x], lambda arrays: [a.copy() for a in arrays])
            expected = naive.run_int(x)
            for out, want in zip(outs, expected if isinstance(expected, tuple) else (expected,)):
                np.testing.assert_array_equal(out, want, strict=True)


def test_float_runs_through_the_bound_run_equal_a_fresh_model():
    graph = tiny_cnn("paper")
    model = Model(graph)
    info = graph.tensors["x"]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = (info.scale * rng.integers(-140, 140, (2,) + info.shape[1:])).astype(np.float32)
        np.testing.assert_array_equal(model.run(x), Model(graph).run(x), strict=True)


@pytest.mark.parametrize("profile", ["paper", "tflite", "onnxruntime"])
def test_run_quantizing_into_the_bound_run_equals_the_checked_path(profile):
    # Model.run quantizes a float32 or float64 array straight into the run's input array; its outputs are
    # those of quantize_inputs -> run_int -> dequantize, call after call, on both backends.
    graph = tiny_cnn(profile)
    info = graph.tensors["x"]
    for backend in ("fast", "naive"):
        model = Model(graph, backend)
        for seed, dtype in enumerate([np.float32, np.float32, np.float64, np.float64, np.float32]):
            rng = np.random.default_rng(seed)
            x = (info.scale * rng.uniform(-140, 140, (2,) + info.shape[1:])).astype(dtype)
            codes = model.quantize_inputs([x])
            expected = dequantize(model.run_int(*codes), graph.tensors[graph.outputs[0]])
            np.testing.assert_array_equal(model.run(x), expected, strict=True)
        assert any(feed is not None for feed in model._float_launches.values())


def test_run_of_unusual_float_inputs_warns_or_raises_as_the_checked_path():
    graph = tiny_cnn("paper")
    info = graph.tensors["x"]
    model = Model(graph)
    x = (info.scale * np.random.default_rng(0).uniform(-100, 100, (1,) + info.shape[1:])).astype(np.float32)
    for _ in range(2):  # the second call runs a bound run
        model.run(x)
    far = x * 1000
    with pytest.warns(InputWarning, match="far outside the range"):
        expected = dequantize(model.run_int(*model.quantize_inputs([far])), graph.tensors[graph.outputs[0]])
    with pytest.warns(InputWarning, match="far outside the range"):
        np.testing.assert_array_equal(model.run(far), expected, strict=True)
    for bad in (np.nan, np.inf):
        broken = x.copy()
        broken[0, 1, 2, 0] = bad
        with pytest.raises(ValidationError, match="finite"):
            model.run(broken)
    np.testing.assert_array_equal(model.run(x), Model(graph).run(x), strict=True)


@pytest.mark.parametrize("build", [tiny_cnn, branchy])
def test_compiled_bound_runs_equal_the_naive_kernels(build, monkeypatch):
    # After COMPILE_AFTER runs a bound run makes its stretches of numba calls one compiled function each
    # (the arrays built from their addresses, the kernels called through their native entry points): the
    # outputs stay those of the naive kernels, run after run, beside the Python steps between stretches.
    monkeypatch.setattr(bound_module, "COMPILE_AFTER", 2)
    graph = build("paper")
    fast, naive = Model(graph), Model(graph, "naive")
    for seed in range(5):
        x = random_codes(graph.tensors["x"], 2, seed)
        outs, expected = fast.run_int(x), naive.run_int(x)
        outs, expected = (o if isinstance(o, tuple) else (o,) for o in (outs, expected))
        for out, want in zip(outs, expected):
            np.testing.assert_array_equal(out, want, strict=True)
    (bound,) = next(iter(fast._run_plan().bound.values()))
    assert bound.runs == 4 and len(bound.calls) < len(bound._dispatched)
    assert not any(isinstance(function, Dispatcher) for function, _ in bound.calls)


def test_a_bound_run_whose_calls_cannot_be_compiled_warns_once_and_keeps_its_results(monkeypatch):
    # compile_calls leans on numba internals: where they fail, the run keeps its calls one by one.
    def broken(stretch):
        raise AttributeError("no such internal")

    monkeypatch.setattr(bound_module, "COMPILE_AFTER", 2)
    monkeypatch.setattr(bound_module, "compile_calls", broken)
    monkeypatch.setattr(bound_module, "_COMPILE_FAILED", [])
    graph = branchy("paper")
    fast, naive = Model(graph), Model(graph, "naive")
    x = random_codes(graph.tensors["x"], 2, 0)
    for _ in range(2):  # the plan's first run, then the bound run's first
        fast.run_int(x)
    with pytest.warns(RuntimeWarning, match="could not be compiled.*AttributeError: no such internal"):
        out = fast.run_int(x)
    (bound,) = next(iter(fast._run_plan().bound.values()))
    assert len(bound.calls) == len(bound._dispatched)
    outs, expected = (o if isinstance(o, tuple) else (o,) for o in (out, naive.run_int(x)))
    for out, want in zip(outs, expected):
        np.testing.assert_array_equal(out, want, strict=True)


@pytest.mark.parametrize("profile", ["paper", "tflite"])
def test_user_path_nchw_edges_equal_the_naive_kernels(profile):
    # A float NCHW conv model as a user converts it: its integer graph transposes the input to NHWC
    # and the output back (one-byte codes, 20 and 36 channels over 17 x 18 pixels: whole 16 x 16
    # register blocks and the rows and columns after them), and its bound run repeats those
    # transposes into fixed arrays.  Every call equals the naive kernels' run of the same graph.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import intsim

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (36, 20, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 36).astype(np.float32), "b")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "edges",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20, 17, 18])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 36, 17, 18])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    calibration = rng.uniform(-1, 1, (8, 20, 17, 18)).astype(np.float32)
    fast = intsim.convert(model, calibration, profile, progress=False)
    naive = fast.with_backend("naive")
    assert [n.op for n in fast.graph.nodes] == ["transpose", "conv2d", "transpose"]
    for seed in range(3):  # the first call runs the plan, the later ones the bound run
        x = np.random.default_rng(seed).uniform(-1.2, 1.2, (2, 20, 17, 18)).astype(np.float32)
        np.testing.assert_array_equal(fast.run(x), naive.run(x), strict=True)


_TWO_THREADS = """
import numba
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim.kernels import depthwise, fully_connected, gemm_chunk, threads
from intsim.runtime import bound as bound_module

rng = np.random.default_rng(3)
init = lambda name, *shape: numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)
nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16),
         helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 15, 14])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 150])],
                          [init("w1", 16, 3, 3, 3), init("b1", 16), init("w2", 16, 1, 3, 3), init("b2", 16),
                           init("w3", 150, 16), init("b3", 150)])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
calibration = rng.uniform(-1, 1, (8, 3, 15, 14)).astype(np.float32)
gemm_chunk.CHUNK_ROWS = 24  # the conv's 2 x 15 x 14 rows in several chunks
threaded = {gemm_chunk.conv2d_gemm_threaded, *fully_connected._IN_PLACE_THREADED,
            *(cores[1] for cores in depthwise.CORES.values())}


def cores(model, count):
    plan = model._run_plan()
    (bound,) = [pool[0] for (_, n), pool in plan.bound.items() if n == count]
    return [f for f, _ in bound._dispatched if f in threaded], bound


bound_module.COMPILE_AFTER = 4
converted = intsim.convert(model, calibration, "paper", progress=False)
naive = converted.with_backend("naive")
for split in (0, threads.MIN_MACS_PER_THREAD):  # every layer split among the threads; then the shipped threshold
    threads.MIN_MACS_PER_THREAD = split
    fast = converted.with_backend("fast")  # a plan of its own
    for seed, count in enumerate((1, 2, 2, 1, 2, 1, 2)):
        # the plan's first run, then a bound run per thread count, compiled after its fourth run
        threads.set_threads(count)
        x = np.random.default_rng(seed).uniform(-1.2, 1.2, (2, 3, 15, 14)).astype(np.float32)
        np.testing.assert_array_equal(fast.run(x), naive.run(x), strict=True)
        codes = fast.quantize_inputs([x])
        np.testing.assert_array_equal(fast.run_int(*codes), naive.run_int(*codes), strict=True)
    serial, one = cores(fast, 1)
    split_cores, two = cores(fast, 2)
    assert not serial and min(one.runs, two.runs) > bound_module.COMPILE_AFTER
    assert len(one.calls) < len(one._dispatched) and len(two.calls) < len(two._dispatched)  # compiled
    # conv, depthwise and fully-connected: threaded where every layer splits; none of these small
    # layers splits under the shipped threshold
    assert len(split_cores) == (3 if split == 0 else 0), split_cores
    assert numba.get_num_threads() == 2
print("same")
"""


def test_bound_and_compiled_runs_on_two_threads_equal_one_thread_and_the_naive_kernels():
    # A fresh process: the test session pins NUMBA_NUM_THREADS to 1.  A conv, a depthwise and a
    # fully-connected layer (150 outputs: three chunks) bound to their threaded cores on two threads
    # give the naive codes through the plan, the bound run and the compiled bound run, with the thread
    # count changing between calls (a bound run per count).
    env = dict(os.environ, NUMBA_NUM_THREADS="2", INTSIM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _TWO_THREADS], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same"


def test_python_threads_calling_one_model_each_take_their_own_bound_run():
    # Each caller pops a bound run from the plan's pool (making one where none is spare) and puts it
    # back: concurrent callers never share one's arrays, so every output is that of its own input.
    import threading

    graph = tiny_cnn("paper")
    fast, naive = Model(graph), Model(graph, "naive")
    inputs = [random_codes(graph.tensors["x"], 2, seed) for seed in range(4)]
    expected = [naive.run_int(x) for x in inputs]
    fast.run_int(inputs[0])  # the plan's first run records the layouts
    failures = []

    def caller(index):
        for _ in range(150):
            x, want = inputs[index], expected[index]
            if not np.array_equal(fast.run_int(x), want):
                failures.append(index)

    callers = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    assert not failures
    (pool,) = fast._run_plan().bound.values()
    assert 1 <= len(pool) <= 4 and sum(bound.runs for bound in pool) == 4 * 150
