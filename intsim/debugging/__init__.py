"""The white paper's PTQ debugging workflow (§3.7): :func:`debug` and its :class:`DebugReport`.

The workflow (onnx, the converter) loads on first use, so that the CLI can read :mod:`.command` cheaply.
"""

__all__ = ["DebugReport", "Measurement", "debug"]


def __getattr__(name):
    if name == "debug":
        from intsim.debugging.workflow import debug

        return debug
    if name in ("DebugReport", "Measurement"):
        from intsim.debugging import report

        return getattr(report, name)
    raise AttributeError(f"module 'intsim.debugging' has no attribute {name!r}")
