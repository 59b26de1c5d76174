"""The white paper's PTQ debugging workflow (§3.7): :func:`debug` and its :class:`DebugReport`."""

from intsim.debugging.report import DebugReport, Measurement
from intsim.debugging.workflow import debug

__all__ = ["DebugReport", "Measurement", "debug"]
