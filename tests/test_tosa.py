"""Conformance of the TOSA export: intsim's integers == the TOSA reference model's, exactly.

The reference model (PyPI ``tosa-tools``) pins numpy < 2.2, so it lives in its own
environment and runs through ``tools/tosa_run.py`` in a subprocess.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest

from intsim import Graph, Model, Node, TensorInfo, UnsupportedOpError, build_lut, get_profile
from intsim.examples import _rescale, random_codes, tiny_cnn
from intsim.exporters.tosa import export_tosa, lower_to_tosa
from intsim.graph import dtype_range
from intsim.ops import add_params

ROOT = Path(__file__).resolve().parents[1]
TOSA_PYTHON = ROOT / ".venv-tosa" / "bin" / "python"
PROFILE = get_profile("tosa")


def _t(name, shape, scale, zp):
    return TensorInfo(name, "int8", shape, scale, zp)


def _single(op, inputs, out, attrs=None, params=None):
    tensors = inputs + [out]
    node = Node(op, op, [t.name for t in inputs], [out.name], attrs or {}, params or {})
    return Graph(op, PROFILE, tensors, [node], [t.name for t in inputs], [out.name])


def _graphs():
    x = _t("x", (None, 4, 4, 6), 0.05, -3)
    a = _t("a", (None, 4, 4, 6), 1 / 128, 0)
    s = _t("s", (None, 4, 4, 6), 0.06, 5)
    add_p, left = add_params(x.scale, a.scale, s.scale, PROFILE, 8)
    sub_p, left_sub = add_params(x.scale, a.scale, s.scale, PROFILE, 8)
    same = lambda name, shape: _t(name, shape, x.scale, x.zero_point)  # noqa: E731
    c = _t("c", (None, 4, 4, 12), 0.07, 2)
    return {
        "tiny_cnn": tiny_cnn("tosa", softmax=False),
        "add": _single("add", [x, a], s, {"left_shift": left, "clamp": [s.zero_point, 127]}, add_p),
        "sub": _single("add", [x, a], s, {"left_shift": left_sub, "subtract": True}, sub_p),
        "lut": _single("lut", [x], a, {}, {"table": build_lut(np.tanh, x, a)}),
        "avg_pool": _single("avg_pool", [x], same("y", (None, 2, 2, 6)), {"kernel": [2, 2], "strides": [2, 2]}),
        "avg_pool_include_pad": _single("avg_pool", [x], same("y", (None, 4, 4, 6)),
                                        {"kernel": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": True}),
        "pad": _single("pad", [x], same("y", (None, 6, 5, 6)), {"pads_before": [0, 1, 0, 0],
                                                                "pads_after": [0, 1, 1, 0], "value": 7}),
        "transpose": _single("transpose", [x], same("y", (None, 6, 4, 4)), {"perm": [0, 3, 1, 2]}),
        "reshape": _single("reshape", [x], same("y", (None, 16, 6)), {"shape": [0, 16, 6]}),
        "rescale": _single("rescale", [x], s, {"clamp": [-100, 90]}, _rescale(PROFILE, x.scale / s.scale)),
        "concat": _single("concat", [x, a], c, {"axis": 3},
                          _rescale(PROFILE, np.array([x.scale / c.scale, a.scale / c.scale]), channels=2)),
        "max_pool_padded": _single("max_pool", [x], same("y", (None, 2, 2, 6)),
                                   {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 0, 0]}),
    }


GRAPHS = _graphs()


def _inputs(graph, batch=2):
    """Seeded random codes, then every input at its minimum, then at its maximum."""
    feeds = []
    for seed in range(3):
        feeds.append({n: random_codes(graph.tensors[n], batch, seed) for n in graph.inputs})
    for pick in (0, 1):
        feeds.append({n: np.full(random_codes(graph.tensors[n], batch).shape,
                                 dtype_range(graph.tensors[n].dtype)[pick], graph.tensors[n].np_dtype)
                      for n in graph.inputs})
    return feeds


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_tosa_reference_model_matches_intsim(name, tmp_path):
    if not TOSA_PYTHON.exists():
        pytest.skip(f"no tosa-tools environment at {TOSA_PYTHON}; create it with "
                    f"`python3 -m venv {TOSA_PYTHON.parents[1]} && {TOSA_PYTHON.parent}/pip install tosa-tools`")
    graph = GRAPHS[name]
    export_tosa(graph, tmp_path / "program", batch=2)
    model = Model(graph)
    for i, feed in enumerate(_inputs(graph)):
        np.savez(tmp_path / f"in{i}.npz", **feed)
        result = subprocess.run([str(TOSA_PYTHON), "-W", "ignore", str(ROOT / "tools" / "tosa_run.py"),
                                 str(tmp_path / "program"), str(tmp_path / f"in{i}.npz"), str(tmp_path / f"out{i}.npz")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        got = np.load(tmp_path / f"out{i}.npz")[graph.outputs[0]]
        want = model.run_int(*[feed[n] for n in graph.inputs])
        np.testing.assert_array_equal(got, want, strict=True)


def test_unsupported_op_is_named():
    graph = _single("mul", [_t("x", (None, 4), 0.1, 0), _t("y", (None, 4), 0.1, 0)], _t("z", (None, 4), 0.2, 0),
                    {}, _rescale(PROFILE, 0.05))
    with pytest.raises(UnsupportedOpError, match="mul 'mul'"):
        lower_to_tosa(graph)


def test_avg_pool_with_varying_divisor_is_refused():
    x = _t("x", (None, 4, 4, 6), 0.05, -3)
    graph = _single("avg_pool", [x], _t("y", (None, 4, 4, 6), 0.05, -3),
                    {"kernel": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": False})
    with pytest.raises(UnsupportedOpError, match="avg_pool 'avg_pool'"):
        lower_to_tosa(graph)
