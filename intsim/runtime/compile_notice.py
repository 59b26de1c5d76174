"""Saying what takes time on a fresh install: numba compiling intsim's kernels.

The kernels are compiled at their first call and cached on disk (``cache=True``,
:mod:`intsim.jit`); a process that finds them in the cache compiles nothing.
When one does compile, :class:`CompileNotice` (a numba event listener on
``numba:compile``, which numba fires only on a cache miss) writes on stderr,
where :func:`intsim.config.progress_enabled` allows it::

    compiling kernels for avx512vnni (first run only)...
      [1] kernels.mac.requantize_mode 3 s
      [2] kernels.elementwise.add_core ... 1 s

one line per kernel compiled at the top level (the functions it inlines or calls
compile inside it), each with the elapsed seconds, redrawn every second while
it compiles (:class:`intsim.progress.Progress`).  ``intsim selftest --warm``
compiles every kernel the built-in profiles use ahead of time.
"""

from __future__ import annotations

import threading

from numba.core import event

from intsim.config import progress_enabled
from intsim.kernels.isa import current_isa
from intsim.progress import Progress

PACKAGE = "intsim"


class CompileNotice(event.Listener):
    """Draws the compile notice for intsim's functions (module name under :data:`PACKAGE`)."""

    def __init__(self):
        self._local = threading.local()
        self.compiled = 0  # top-level intsim compilations seen by this process
        self.announced = False

    def _stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def on_start(self, ev) -> None:
        stack = self._stack()
        module = ev.data["dispatcher"].py_func.__module__ or ""
        ours = not stack and (module == PACKAGE or module.startswith(PACKAGE + "."))
        bar = None
        self.compiled += ours
        if ours and progress_enabled():
            heading = None if self.announced else f"compiling kernels for {current_isa().name} (first run only)\u2026"
            self.announced = True
            name = f"{module.removeprefix(PACKAGE + '.')}.{ev.data['dispatcher'].py_func.__name__}"
            bar = Progress(None, True, f"  [{self.compiled}] {name}", heading).__enter__()
        stack.append(bar)

    def on_end(self, ev) -> None:
        stack = self._stack()
        bar = stack.pop() if stack else None
        if bar is not None:
            bar.__exit__(None, None, None)


NOTICE = CompileNotice()
event.register("numba:compile", NOTICE)
