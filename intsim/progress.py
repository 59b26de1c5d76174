"""A one-line progress display on stderr: ``calibrating [#####.....] 320/1000``.

Used as a context manager, a :class:`Progress` also shows the elapsed seconds and redraws itself every
``HEARTBEAT_S`` seconds from a background thread, so the line keeps moving while one step takes long,
e.g. the first batch that makes numba compile the kernels. ``total=None`` shows a stage without a count.

Bars opened inside one another (the compile notice's per-kernel lines inside ``comparing ...``) share the
terminal: the innermost draws, on a line of its own (below its ``heading`` line, if given), and the outer
ones wait until it closes.
"""

from __future__ import annotations

import math
import sys
import threading
import time

from intsim.config import progress_enabled

# Redrawn at most every INTERVAL_S seconds on update, and at least every HEARTBEAT_S seconds inside a
# ``with`` block; the clock is a module name so tests can replace it.
INTERVAL_S = 0.1
HEARTBEAT_S = 1.0
WIDTH = 30
monotonic = time.monotonic

# The terminal line all bars draw on: the open ``with`` bars, innermost last, and how much of the current
# line is drawn (0: the cursor is at the start of a line).
_LINE = threading.Lock()
_open: list["Progress"] = []
_drawn = 0


def _write(text: str) -> None:
    """Write on the shared line (caller holds ``_LINE``); ``text`` ending in a newline ends the line."""
    global _drawn
    sys.stderr.write(text)
    sys.stderr.flush()
    _drawn = 0 if text.endswith("\n") else len(text.rsplit("\r", 1)[-1])



class Progress:
    """A bar over ``total`` steps (or a stage, ``total=None``), drawn only when
    :func:`intsim.config.progress_enabled` says so; as a context manager, ``heading`` (if any) is written
    as a line of its own above the bar."""

    def __init__(self, total: int | None, enabled: bool, label: str = "calibrating", heading: str | None = None):
        self.total, self.enabled, self.label, self.heading = total, enabled, label, heading
        self.done = 0
        self._last_draw = -math.inf
        self._start = monotonic()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._timed = False
        self._ended = False  # the bar's line was ended (final draw): the heartbeat draws no more

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = monotonic()
        if (self.total is None or done < self.total) and now - self._last_draw < INTERVAL_S:
            return
        self._draw(now, final=done == self.total)

    def _draw(self, now: float, final: bool = False) -> None:
        with _LINE:
            if self in _open and _open[-1] is not self or self._ended and not final:
                return  # an inner bar holds the line, or a heartbeat came after the final draw
            self._ended = self._ended or final
            self._last_draw = now
            elapsed = f" {now - self._start:.0f} s" if self._timed else ""
            if self.total is None:
                line = f"{self.label} ...{elapsed}"
            else:
                filled = WIDTH * self.done // max(self.total, 1)
                line = f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total}{elapsed}"
            _write(f"\r{line.ljust(_drawn)}{chr(10) if final else ''}")

    def _tick(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._draw(monotonic())

    def __enter__(self) -> "Progress":
        self._start, self._timed = monotonic(), True
        if self.enabled:
            with _LINE:
                if _drawn:
                    _write("\n")  # another bar's line stays as it is; this one draws below it
                if self.heading:
                    _write(self.heading + "\n")
                _open.append(self)
            self._draw(self._start)
            self._ticker = threading.Thread(target=self._tick, name=f"intsim progress: {self.label}", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            if self.total is None or self.done != self.total:
                self._draw(monotonic(), final=True)
        with _LINE:
            if self in _open:
                _open.remove(self)


__all__ = ["Progress", "progress_enabled"]
