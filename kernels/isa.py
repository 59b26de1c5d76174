"""Which SIMD instruction family the fast multiply-accumulate kernels use.

The kernels of :mod:`intsim.kernels.gemm` exist in several *variants*: one
portable variant written in target-independent LLVM vector IR, which LLVM
lowers on any CPU, and variants that call x86 instructions directly.  A
variant that needs an instruction the host lacks is never selected, and its
code is never even generated on such a host (the micro-kernel emits the
portable IR in its place), so no path can raise SIGILL.

Selection: the best ISA the host supports, unless ``INTSIM_ISA`` names
another one at import, or :func:`set_isa` changes it (tests run every ISA the
host allows).  Packed weights remember the ISA they were packed for.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.binding as llvm
from numba.extending import register_jitable

from intsim.config import isa_setting
from intsim.errors import ValidationError


@dataclass(frozen=True)
class Isa:
    """One instruction family: its name, the host features it needs, and its kernel variants.

    ``pairs`` is the variant code for int16 pairs (``vpmaddwd``-shaped: two
    products summed exactly into an int32 lane); ``quads`` the code for
    uint8 x int8 quads (``vpdpbusd``-shaped: four exact products summed into
    an int32 lane, no int16 intermediate), or ``None`` where the family has
    no exact four-product instruction (AVX2 ``vpmaddubsw`` saturates pairs).
    """

    name: str
    features: frozenset
    pairs: int
    quads: int | None


# Variant codes, as the micro-kernel reads them (compile-time constants).
PORTABLE_PAIRS, PORTABLE_QUADS, AVX2_PAIRS, AVX512_PAIRS, VNNI_PAIRS, VNNI_QUADS = range(6)
# Register tile, rows x 16-channel blocks: 6 x 4 = 24 zmm accumulators (plus
# 4 weight vectors and a broadcast, of 32 zmm); 6 x 1 = 12 ymm pairs (of 16 ymm,
# so AVX2 has no taller tile: 7 x 1 would need 14 + 2 weight halves + 1).
TILE_ROWS = (4, 4, 6, 6, 6, 6)
TILE_BLOCKS = (2, 2, 1, 4, 4, 4)
# Reduction values per int32 lane of a packed operand.
GROUP = (2, 4, 2, 2, 2, 4)


# The most rows a tile takes: each row's activations are broadcast from their own address, and
# beyond 12 row pointers (with the loop's other live values) the 16 general registers overflow, so
# every broadcast would first reload its pointer from the stack.
MAX_TILE_ROWS = 12


@register_jitable
def tile_rows(variant: int, blocks: int) -> int:
    """Rows of ``variant``'s register tile over ``blocks`` 16-channel blocks (``1 <= blocks <= TILE_BLOCKS``).

    The full tile's accumulator count spread over fewer blocks, up to
    ``MAX_TILE_ROWS`` rows: a layer whose output channels leave ``blocks <
    TILE_BLOCKS[variant]`` blocks over (all of them when it has fewer than
    ``16 * TILE_BLOCKS`` channels) runs them as a taller tile, e.g. 12 x 1,
    12 x 2, 8 x 3 on AVX-512.  One block of 6 rows would keep only 6
    independent ``vpdpbusd`` chains in flight, fewer than its latency times
    its throughput, and would broadcast every activation for one multiply
    only.
    """
    return min(TILE_ROWS[variant] * TILE_BLOCKS[variant] // blocks, MAX_TILE_ROWS)


ISAS = {
    isa.name: isa
    for isa in (
        Isa("portable", frozenset(), PORTABLE_PAIRS, PORTABLE_QUADS),
        Isa("avx2", frozenset({"avx2"}), AVX2_PAIRS, None),
        Isa("avx512bw", frozenset({"avx512f", "avx512bw"}), AVX512_PAIRS, None),
        Isa("avx512vnni", frozenset({"avx512f", "avx512bw", "avx512vnni"}), VNNI_PAIRS, VNNI_QUADS),
    )
}
# Features each variant's instructions need (the portable ones need none).
VARIANT_FEATURES = tuple(
    next(isa.features for isa in ISAS.values() if code in (isa.pairs, isa.quads)) for code in range(len(GROUP))
)


def host_features() -> frozenset:
    """The CPU features LLVM reports for this host, e.g. ``{"avx2", "avx512bw", ...}``."""
    return frozenset(name for name, enabled in llvm.get_host_cpu_features().items() if enabled)


HOST_FEATURES = host_features()


def supported_isas() -> list[str]:
    """The ISA names this host can run, portable first, best last."""
    return [name for name, isa in ISAS.items() if isa.features <= HOST_FEATURES]


def _checked(name: str, where: str) -> Isa:
    if name not in ISAS:
        raise ValidationError(f"{where}: ISA must be one of {', '.join(ISAS)}, found {name!r}")
    if not ISAS[name].features <= HOST_FEATURES:
        missing = ", ".join(sorted(ISAS[name].features - HOST_FEATURES))
        raise ValidationError(f"{where}: ISA {name!r} needs CPU features {missing}, which this host lacks")
    return ISAS[name]


_current = _checked(isa_setting() or supported_isas()[-1], "environment variable INTSIM_ISA")


def current_isa() -> Isa:
    """The ISA that weights packed from now on will use."""
    return _current


def set_isa(name: str) -> str:
    """Select the ISA by name for weights packed from now on; returns the previous name.

    Raises :class:`~intsim.errors.ValidationError` for an unknown name or one
    whose instructions this host lacks.
    """
    global _current
    previous = _current.name
    _current = _checked(name, "set_isa")
    return previous
