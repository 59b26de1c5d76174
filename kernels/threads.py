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


# A layer's chunks are shared among threads only where each thread gets at least this many
# multiply-accumulates: waking a thread and joining it costs microseconds when its core is free
# (far more on a loaded machine, where the layer waits for the last thread to be scheduled), while
# one znver5 core does about 2.5 * 10**5 of a 3x3 conv's per microsecond (a depthwise layer or a
# batch-1 fully-connected one, bound by memory, a tenth of that), so a layer splits when each thread
# has about 8 us of GEMM to do.  Tests lower it to split small layers.
MIN_MACS_PER_THREAD = 1 << 21


def split_threads(threads: int, chunks: int, macs: int) -> int:
    """How many of ``threads`` threads are worth sharing a layer's ``chunks`` chunks of work
    (``macs`` multiply-accumulates in all) among: no more than its chunks, none with less than
    :data:`MIN_MACS_PER_THREAD` to do; 1 means the serial core."""
    return max(1, min(threads, chunks, macs // max(1, MIN_MACS_PER_THREAD)))


def splits_among(threads: int, chunks: int, macs: int) -> bool:
    """Whether a layer's calls bound to run with numba's thread count ``threads`` take its threaded
    core: where it splits among all of them (:func:`split_threads`), more than one."""
    return threads > 1 and split_threads(threads, chunks, macs) == threads


def threads_to_use(chunks: int, macs: int) -> int:
    """:func:`split_threads` of the thread count set, for a layer run now: numba's thread count of the
    calling thread is set to it where it is above 1 (the serial core needs none)."""
    threads = split_threads(_threads, chunks, macs)
    if threads > 1:
        apply_threads(threads)
    return threads


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
