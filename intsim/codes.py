"""The small vocabulary of integer codes, written once: dtype ranges, code ranges of a bit width,
storage dtypes, and the overflow policies with the integer codes the kernels take for them.

Every stage (converter, importers, graph checks, runtime, kernels) reads these names from here.
"""

from __future__ import annotations

import functools

import numpy as np

# A profile's ``overflow`` field and the integer code each policy has inside the kernels.
OVERFLOW_POLICIES = ("saturate", "wrap", "error")
OVERFLOW_SATURATE, OVERFLOW_WRAP, OVERFLOW_ERROR = 0, 1, 2
OVERFLOW_CODES = {"saturate": OVERFLOW_SATURATE, "wrap": OVERFLOW_WRAP, "error": OVERFLOW_ERROR}


def dtype_range(dtype) -> tuple[int, int]:
    """``(min, max)`` of an integer dtype (a name or a numpy dtype)."""
    return _dtype_range(np.dtype(dtype))


@functools.lru_cache(maxsize=None)
def _dtype_range(dtype: np.dtype) -> tuple[int, int]:
    # np.iinfo costs microseconds, and Model.run asks per call: a dozen dtypes at most, kept.
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(lo, hi)`` of a ``bits``-bit code: ``[-2^(b-1), 2^(b-1) - 1]`` signed, ``[0, 2^b - 1]`` unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def storage_dtype(bits: int, signed: bool) -> np.dtype:
    """The numpy dtype that holds a ``bits``-bit code: 8 bits or fewer in (u)int8, up to 16 in (u)int16."""
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    return np.dtype(np.int16 if signed else np.uint16)
