"""Float graph to integer graph: range setting and calibration (:mod:`~intsim.converter.calibration`),
integer parameters built from real scales (:mod:`~intsim.converter.params`) and the lowering onto a
profile (:mod:`~intsim.converter.lowering`).

``convert`` is loaded on first use: the lowering imports onnx (about 1.5 s), which ``import intsim``
and the command line's first message should not wait for."""

__all__ = ["convert"]


def __getattr__(name):
    if name == "convert":
        from intsim.converter.lowering import convert

        return convert
    raise AttributeError(f"module 'intsim.converter' has no attribute {name!r}")
