"""``--fix-input`` and ``--batch-axis``: the command line's :func:`intsim.prepare_recurrent` for the commands
that read a float ``.onnx`` model (silero's VAD: ``--fix-input sr=16000 --batch-axis state=1 --batch-axis
stateN=1``).  The prepared model is written to a temporary folder under the original file's name, and the
command reads it from there."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from intsim.errors import ValidationError

_MODEL_ARGUMENTS = ("model", "onnx")  # the attributes that hold a float .onnx path


def add_prepare_options(p) -> None:
    p.add_argument("--fix-input", action="append", metavar="NAME=VALUE[,VALUE...]",
                   help="fix a float .onnx input to a constant, e.g. sr=16000 (folds an If on it; repeatable)")
    p.add_argument("--batch-axis", action="append", metavar="NAME=AXIS",
                   help="an input or output whose samples are not on axis 0, e.g. state=1 (repeatable)")


def _pairs(texts, option: str, parse) -> dict:
    pairs = {}
    for text in texts or ():
        name, sep, value = text.partition("=")
        try:
            if not (name and sep):
                raise ValueError
            pairs[name] = parse(value)
        except ValueError:
            raise ValidationError(f"--{option} takes NAME=VALUE, found {text!r}") from None
    return pairs


def _number(text: str):
    return int(text) if text.strip().lstrip("+-").isdigit() else float(text)


def _values(text: str):
    values = [_number(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def apply_prepare_options(args) -> None:
    """Replace the command's float ``.onnx`` path by the prepared model's, where either option was given."""
    constants = _pairs(getattr(args, "fix_input", None), "fix-input", _values)
    batch_axes = _pairs(getattr(args, "batch_axis", None), "batch-axis", int)
    if not constants and not batch_axes:
        return
    from intsim.importers.onnx_prepare import prepare_recurrent

    for attribute in _MODEL_ARGUMENTS:
        path = getattr(args, attribute, None)
        if isinstance(path, str) and path.lower().endswith(".onnx"):
            prepared = prepare_recurrent(path, constants, batch_axes)
            folder = tempfile.mkdtemp(prefix="intsim-prepared-")
            atexit.register(shutil.rmtree, folder, True)
            target = Path(folder) / Path(path).name
            target.write_bytes(prepared.SerializeToString())
            setattr(args, attribute, str(target))
            return
    raise ValidationError("--fix-input and --batch-axis apply to a float .onnx model")
