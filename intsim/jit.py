"""The one numba configuration every compiled function in intsim uses.

``jit``: compiled once and cached on disk (``cache=True``: the first process compiles, later ones
load).  ``jit_inline``: inlined into its callers at the numba IR level (the callers' caches hold
it; edit one and clear ``__pycache__``).  ``jit_parallel``: like ``jit``, with ``prange`` loops
run on numba's threads (``intsim.kernels.threads`` sets how many).  :func:`compiled_entry`: a
compiled overload to call without the dispatcher's typing of its arguments.
"""

from __future__ import annotations

from numba import njit
from numba.core.typing.typeof import Purpose, typeof

jit = njit(cache=True)
jit_inline = njit(inline="always")
jit_parallel = njit(cache=True, parallel=True)


def compiled_entry(function, arguments):
    """The compiled overload of numba ``function`` for the types of ``arguments`` (compiled, or loaded
    from numba's cache, now if need be).  Called with arguments of those types it runs the same
    machine code as ``function`` itself, without the dispatcher's typing of every argument on every
    call (about 0.1 us an argument): for a caller that makes one call many times."""
    return function.compile(tuple(typeof(value, Purpose.argument) for value in arguments))


__all__ = ["compiled_entry", "jit", "jit_inline", "jit_parallel"]
