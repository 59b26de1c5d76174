"""Every setting intsim reads from the environment, in one place.

==========================  ==========================================================================
``INTSIM_ISA``              instruction set the fast kernels compile for (``portable``, ``avx2``,
                            ``avx512bw``, ``avx512vnni``); default: the best the host CPU reports
``INTSIM_THREADS``          threads the fused conv / fully-connected kernels share (default 1, at most
                            ``NUMBA_NUM_THREADS``); results never depend on it
``INTSIM_PROGRESS``         ``1`` draws progress bars on stderr even when it is not a terminal, ``0``
                            never draws them
``INTSIM_FLOAT_EXECUTOR``   what runs the float graph while converting and comparing: ``onnxruntime``
                            (default) or ``numpy`` (:mod:`intsim.floatgraph.execute`, the reference)
``INTSIM_DATA``             folder holding the Fashion-MNIST IDX files (default
                            ``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``);
                            the CLI's ``--data-dir`` overrides it
==========================  ==========================================================================

The jit options every numba kernel shares live in :mod:`intsim.kernels._jit`.
"""

from __future__ import annotations

import os
import sys


def isa_setting() -> str | None:
    """``INTSIM_ISA``, or ``None`` when unset (the kernels then take the host's best)."""
    return os.environ.get("INTSIM_ISA")


def threads_setting() -> str:
    """``INTSIM_THREADS`` as written (``"1"`` when unset); :mod:`intsim.kernels.gemm` checks it."""
    return os.environ.get("INTSIM_THREADS", "1")


FLOAT_EXECUTORS = ("onnxruntime", "numpy")


def float_executor_setting() -> str:
    """``INTSIM_FLOAT_EXECUTOR`` (``"onnxruntime"`` when unset or empty); :class:`intsim.floatgraph.ort_session.
    FloatSession` checks it."""
    return os.environ.get("INTSIM_FLOAT_EXECUTOR") or "onnxruntime"


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def data_dir_setting() -> str:
    """``INTSIM_DATA``, or Debian's Fashion-MNIST folder when unset or empty."""
    return os.environ.get("INTSIM_DATA") or FASHION_MNIST_ROOT


def progress_enabled(progress: bool = True) -> bool:
    """Whether to draw a progress bar: ``progress`` and (``INTSIM_PROGRESS=1``, or stderr a terminal
    and ``INTSIM_PROGRESS`` not ``0``)."""
    setting = os.environ.get("INTSIM_PROGRESS")
    if not progress or setting == "0":
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return setting == "1" or bool(isatty and isatty())
