"""Hardware validation for teams bringing up an integer accelerator: golden vectors
(:mod:`~intsim.hwval.golden`), a layer-by-layer diff against a device's dump
(:mod:`~intsim.hwval.diff`), accumulator-width sweeps (:mod:`~intsim.hwval.sweep`) and weight /
activation bit-width sweeps of a float model (:mod:`~intsim.hwval.bitwidth`)."""

from intsim.hwval.bitwidth import BitWidthReport, bitwidth_sweep
from intsim.hwval.diff import DiffReport, diff
from intsim.hwval.golden import Golden, export_golden, load_golden, write_golden
from intsim.hwval.sweep import SweepReport, sweep

__all__ = ["BitWidthReport", "DiffReport", "Golden", "SweepReport", "bitwidth_sweep", "diff", "export_golden",
           "load_golden", "sweep", "write_golden"]
