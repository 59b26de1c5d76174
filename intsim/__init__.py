"""intsim: run neural networks exactly as an integer-only accelerator would.

White paper references are to Nagel et al., "A White Paper on Neural Network
Quantization" (2021).
"""

__version__ = "0.1.0"

import gc as _gc  # noqa: E402

# The imports below create about 100,000 objects that live as long as the process (numba's dispatchers
# and type registries, the kernels, the op tables); the cyclic collector would walk them all several
# times while they load (0.1-0.2 s of CPU) and free nothing.  Collection resumes after them.
_collecting = _gc.isenabled()
_gc.disable()

try:
    from intsim.errors import (  # noqa: E402
        AccumulatorOverflowError,
        IntsimError,
        ModelFormatError,
        OverflowWarning,
        UnsupportedOpError,
        ValidationError,
    )
    from intsim.converter.params import build_exp_table, build_lut  # noqa: E402
    from intsim.graph import Graph, Node, TensorInfo  # noqa: E402
    from intsim.profiles import Profile, get_profile  # noqa: E402
    from intsim.runtime import Model, Trace  # noqa: E402
finally:
    if _collecting:
        _gc.enable()

# The facade's verbs (intsim.api) pull in the importers, the converter and the reports: loaded on first use.
_FACADE = ("compare", "convert", "debug", "evaluate", "export_golden", "export_qdq", "export_tosa", "load",
           "prepare_recurrent", "save", "search_mixed_precision")


def __getattr__(name):
    if name in _FACADE:
        from intsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'intsim' has no attribute {name!r}")


__all__ = [
    "build_exp_table",
    "compare",
    "convert",
    "debug",
    "evaluate",
    "export_golden",
    "export_qdq",
    "export_tosa",
    "build_lut",
    "AccumulatorOverflowError",
    "Graph",
    "IntsimError",
    "Model",
    "ModelFormatError",
    "OverflowWarning",
    "Node",
    "Profile",
    "TensorInfo",
    "Trace",
    "UnsupportedOpError",
    "ValidationError",
    "get_profile",
    "load",
    "prepare_recurrent",
    "save",
    "search_mixed_precision",
]
