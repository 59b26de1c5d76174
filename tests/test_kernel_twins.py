"""Every fast kernel module has a naive twin of the same relative name under kernels/naive/, and the two
export the same kernels with the same parameters."""

import importlib
import inspect
import pkgutil

import pytest

from intsim import kernels
from intsim.kernels import naive

TWIN_MODULES = sorted(m.name for m in pkgutil.iter_modules(naive.__path__))


def _kernels_of(module) -> dict:
    """The public functions a module defines itself (not those it imports)."""
    return {name: fn for name, fn in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == module.__name__}


def test_packages_export_the_same_kernels():
    assert kernels.__all__ == naive.__all__


def test_every_naive_module_mirrors_a_fast_module():
    assert TWIN_MODULES == ["boundary", "elementwise", "float_island", "gemm", "gru", "lstm", "mac", "mlas_sgemm",
                            "onnxruntime_ops", "sequence", "tflite_ops", "vision"]


@pytest.mark.parametrize("name", TWIN_MODULES)
def test_twin_modules_define_the_same_exported_kernels(name):
    fast = importlib.import_module(f"intsim.kernels.{name}")
    slow = importlib.import_module(f"intsim.kernels.naive.{name}")
    exported = set(kernels.__all__)
    fast_kernels = {k: v for k, v in vars(fast).items()
                    if k in exported and callable(v) and getattr(v, "__module__", None) == fast.__name__}
    slow_kernels = {k: v for k, v in _kernels_of(slow).items() if k in exported}
    assert sorted(fast_kernels) == sorted(slow_kernels), name
    for kernel, fn in slow_kernels.items():
        assert list(inspect.signature(fast_kernels[kernel]).parameters) == list(inspect.signature(fn).parameters), kernel
