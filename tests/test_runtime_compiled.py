"""compile_calls: a stretch of numba calls as one compiled function, the arrays built from their addresses."""

import numpy as np
import pytest
from numba import njit

from intsim.runtime.compiled import compile_calls


@njit
def _scaled_add(x, pair, flag, out):
    # Reads a strided view, a tuple of an int32 and a float, a bool; writes out; returns a tuple of scalars.
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * pair[0] + (pair[1] if flag else 0.0)
    return out.shape[0], pair[1]


@njit
def _cumulate(out, total):
    # Reads what the call before it wrote.
    for i in range(out.size):
        total[0] += out.flat[i]


@njit
def _refuse(x):
    if x[0] < 0:
        raise ValueError("negative")
    return x[0]


def test_compiled_calls_write_what_the_calls_write():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    x = base[:, ::2]  # strided: the array is built with its own strides
    calls = lambda out, total: [(_scaled_add, (x, (np.int32(3), 0.5), True, out)), (_cumulate, (out, total)),
                                (_scaled_add, (x, (np.int32(-1), 2.0), False, out))]
    expected_out, expected_total = np.zeros((4, 3)), np.zeros(1)
    for function, arguments in calls(expected_out, expected_total):
        function(*arguments)
    out, total = np.zeros((4, 3)), np.zeros(1)
    run = compile_calls(calls(out, total))
    for repeat in range(2):  # repeatable: the same arrays, updated in place
        run()
        np.testing.assert_array_equal(out, expected_out, strict=True)
        np.testing.assert_array_equal(total, expected_total * (repeat + 1), strict=True)
    np.testing.assert_array_equal(out, -x, strict=True)
    np.testing.assert_array_equal(total, 2 * (3 * x + 0.5).sum(keepdims=True).reshape(1), strict=True)


def test_a_kernel_error_surfaces_and_what_cannot_be_compiled_is_refused():
    x = np.array([-1], np.int64)
    run = compile_calls([(_refuse, (np.array([1], np.int64),)), (_refuse, (x,))])
    with pytest.raises(ValueError, match="negative"):
        run()
    x[0] = 2
    run()
    assert compile_calls([(_refuse, (x,)), (lambda: None, ())]) is None  # not a numba function
    assert compile_calls([(_refuse, ([1],))]) is None  # a list argument
