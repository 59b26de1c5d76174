"""Quantization-aware training (white paper §4) of ONNX float models, exported to the integer datapath.

Needs PyTorch (``pip install intsim[qat]``); ``import intsim`` never imports it, and neither does
importing this package: torch is loaded when a name below is first used.

* :func:`finetune`: ONNX model + (unlabeled) data -> trained integer :class:`intsim.Model`.
* :func:`prepare`, :func:`train`, :func:`export`: the three stages, for a caller that wants the
  fake-quant module (:class:`FakeQuantModel`) in between, e.g. to compare it with the integer model
  (:func:`predict`, :func:`output_codes`, :func:`layer_agreement`).  The ``intsim qat`` command lives in :mod:`intsim.cli`.
"""

_FINETUNE = ("finetune", "prepare", "train", "export", "predict", "output_codes", "layer_agreement")


def __getattr__(name):
    if name in _FINETUNE or name == "FakeQuantModel":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise ImportError("intsim.qat needs PyTorch: pip install 'intsim[qat]'") from exc
        from intsim.qat import training as stages
        from intsim.qat.module import FakeQuantModel

        return FakeQuantModel if name == "FakeQuantModel" else getattr(stages, name)
    raise AttributeError(f"module 'intsim.qat' has no attribute {name!r}")


__all__ = [*_FINETUNE, "FakeQuantModel"]
