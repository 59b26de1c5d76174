"""Float graph to integer graph: range setting and calibration (:mod:`~intsim.converter.calibration`),
integer parameters built from real scales (:mod:`~intsim.converter.params`) and the lowering onto a
profile (:mod:`~intsim.converter.lowering`)."""

from intsim.converter.lowering import convert

__all__ = ["convert"]
