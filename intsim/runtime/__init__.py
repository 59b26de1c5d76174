"""The runtime: a :class:`Model` runs an integer graph on the fast kernels or their naive twins."""

from intsim.runtime import compile_notice  # noqa: F401 - registers the first-run compile notice
from intsim.runtime.model import Model, Trace, dequantize, quantize

__all__ = ["Model", "Trace", "dequantize", "quantize"]
