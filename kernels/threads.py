"""How many threads the fused conv / fully-connected kernels share chunks of work among
(``INTSIM_THREADS``, :func:`set_threads`); results never depend on it."""

from __future__ import annotations

import threading

import numba

from intsim.config import threads_setting
from intsim.errors import ValidationError


def threads_from_environment() -> int:
    value = threads_setting()
    if not value.isdigit() or not 1 <= int(value) <= numba.config.NUMBA_NUM_THREADS:
        raise ValidationError(f"environment variable INTSIM_THREADS must be an integer in "
                              f"[1, {numba.config.NUMBA_NUM_THREADS}] (NUMBA_NUM_THREADS), found {value!r}")
    return int(value)


_threads = threads_from_environment()


def set_threads(threads: int) -> int:
    """Threads the fused conv / fully-connected kernels share chunks of output pixels among; returns the old value.

    One by default (results never depend on it: every output is computed by
    one thread in the same order).  At most ``numba.config.NUMBA_NUM_THREADS``;
    anything else raises :class:`~intsim.errors.ValidationError`.
    """
    global _threads
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ValidationError(f"set_threads: threads must be an integer in [1, {limit}] (NUMBA_NUM_THREADS), "
                              f"found {threads!r}")
    previous, _threads = _threads, threads
    return previous


def thread_count() -> int:
    """The thread count :func:`set_threads` (or ``INTSIM_THREADS``) set."""
    return _threads


_applied = threading.local()


def apply_threads(work_items) -> int:
    # No more threads than items of work (waking a thread that has nothing to
    # do costs a scheduler time slice on a busy machine).  numba's thread
    # count is per calling thread and costs microseconds to set, so it is set
    # only when it changes.  Returns the thread count.
    threads = max(1, min(_threads, work_items))
    if getattr(_applied, "threads", None) != threads:
        numba.set_num_threads(threads)
        _applied.threads = threads
    return threads


def run_calls(calls):
    """Run ``[(function, arguments)]`` in order; the last one's result."""
    result = None
    for function, arguments in calls:
        result = function(*arguments)
    return result
