"""Model inputs as the converter, :func:`intsim.compare` and :meth:`intsim.Model.run` take them: one array
for a single-input model, or a dict input name -> array (samples along axis 0 of each, as many in
each), or a sequence of such dicts (batches, joined along axis 0).  Float inputs take float arrays;
integer inputs (token ids, attention masks: ``FloatGraph.integer_inputs``) take integer arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from intsim.errors import ValidationError


def named_feeds(names: Sequence[str], integer: Sequence[str], data, where: str = "data") -> dict[str, np.ndarray]:
    """``{input name: array}`` from ``data`` (module docstring), checked: every input named once, the
    right kind of numbers, the same number of samples in each.  A single array (a ``np.memmap`` stays
    one) is the data of a single-input model."""
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise ValidationError(f"{where}: one array is the data of a single-input model; this model has inputs "
                                  f"{list(names)}: give a dict input name -> array")
        feeds = {names[0]: data}
    elif isinstance(data, Mapping):
        feeds = dict(data)
    elif isinstance(data, Sequence) and data and all(isinstance(d, Mapping) for d in data):
        parts = [named_feeds(names, integer, d, f"{where}[{i}]") for i, d in enumerate(data)]
        return {n: np.concatenate([p[n] for p in parts]) for n in names}
    else:
        raise ValidationError(f"{where}: expected an array, a dict input name -> array or a non-empty list of such "
                              f"dicts, found {type(data).__name__}")
    missing, extra = [n for n in names if n not in feeds], [n for n in feeds if n not in names]
    if missing or extra:
        raise ValidationError(f"{where}: the model's inputs are {list(names)}; missing {missing}, unknown {extra}")
    counts = set()
    for name in names:
        value = feeds[name] if isinstance(feeds[name], np.ndarray) else np.asarray(feeds[name])
        kinds = "iu" if name in integer else "f"
        if value.dtype.kind not in kinds or value.ndim == 0:
            wanted = "integer (token ids, masks)" if name in integer else "float"
            raise ValidationError(f"{where}: input {name!r} must be {wanted}, with samples along axis 0; found dtype "
                                  f"{value.dtype}, shape {value.shape}")
        feeds[name] = value
        counts.add(len(value))
    if len(counts) != 1:
        raise ValidationError(f"{where}: every input needs as many samples, found "
                              f"{ {n: len(feeds[n]) for n in names} }")
    return feeds


def ptq_data(graph, feeds: Mapping[str, np.ndarray] | None, settings: Mapping) -> np.ndarray | None:
    """The one float array the data-driven PTQ algorithms walk (:func:`intsim.ptq.apply_ptq`), or None.

    A model with several or integer inputs has none: AdaRound and empirical bias correction then raise
    a :class:`ValidationError` (CLE falls back to batch-norm statistics, as without data)."""
    if feeds is None:
        return None
    if len(feeds) == 1 and not graph.integer_inputs:
        return feeds[graph.inputs[0]]
    wanted = ["adaround"] if settings.get("adaround") is not None else []
    wanted += ["bias_correction='empirical'"] if settings.get("bias_correction") == "empirical" else []
    if wanted:
        raise ValidationError(f"{' and '.join(wanted)} walk one float input array; model {graph.name!r} has inputs "
                              f"{list(graph.inputs)} (integer: {list(graph.integer_inputs)})")
    return None


def sample_count(feeds: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def batch_of(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: np.asarray(value[start:stop]) for name, value in feeds.items()}


class FeedRows:
    """Named feeds sliced along their samples like one array: ``shape[0]`` and ``[start:stop]`` (a dict
    of the rows of every input), for the loops that walk one data array in batches."""

    def __init__(self, feeds: Mapping[str, np.ndarray]):
        self.feeds = dict(feeds)
        self.shape = (sample_count(self.feeds),)

    def __getitem__(self, rows: slice) -> dict[str, np.ndarray]:
        return batch_of(self.feeds, rows.start or 0, min(self.shape[0], rows.stop))
