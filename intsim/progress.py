"""A one-line progress bar on stderr: ``calibrating [#####.....] 320/1000``."""

from __future__ import annotations

import math
import sys
import time

from intsim.config import progress_enabled

# Redrawn at most every INTERVAL_S seconds; the clock is a module name so tests can replace it.
INTERVAL_S = 0.1
WIDTH = 30
monotonic = time.monotonic


class Progress:
    """A bar over ``total`` steps, drawn only when :func:`intsim.config.progress_enabled` says so."""

    def __init__(self, total: int, enabled: bool, label: str = "calibrating"):
        self.total, self.enabled, self.label = total, enabled, label
        self._last_draw = -math.inf

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = monotonic()
        if done < self.total and now - self._last_draw < INTERVAL_S:
            return
        self._last_draw = now
        filled = WIDTH * done // self.total
        end = "\n" if done == self.total else ""
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{self.total}{end}")
        sys.stderr.flush()


__all__ = ["Progress", "progress_enabled"]
