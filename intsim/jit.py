"""The one numba configuration every compiled function in intsim uses.

``jit``: compiled once and cached on disk (``cache=True``: the first process compiles, later ones
load).  ``jit_inline``: inlined into its callers at the numba IR level (the callers' caches hold
it; edit one and clear ``__pycache__``).  ``jit_parallel``: like ``jit``, with ``prange`` loops
run on numba's threads (``intsim.kernels.threads`` sets how many).
"""

from __future__ import annotations

from numba import njit

jit = njit(cache=True)
jit_inline = njit(inline="always")
jit_parallel = njit(cache=True, parallel=True)

__all__ = ["jit", "jit_inline", "jit_parallel"]
