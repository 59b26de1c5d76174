"""Typed errors raised by intsim.

The three tiers follow the TOSA reference model: a graph or input that is
invalid is the caller's error (``ValidationError``, ``ModelFormatError``,
``UnsupportedOpError``); a valid graph whose result the modelled hardware
cannot represent is reported under the profile's policy
(``AccumulatorOverflowError`` for ``overflow = "error"``); an internal bug is an
``assert``.  Every message names what was expected, what was found and where.
Under ``overflow = "wrap"`` or ``"saturate"`` an overflow is reported as an
``OverflowWarning``, since the result is then the policy's, not the real sum.
"""

from __future__ import annotations


class IntsimError(Exception):
    """Base class of every error intsim raises on purpose."""


class ValidationError(IntsimError, ValueError):
    """A shape, dtype or parameter is outside what the op or profile allows."""


class ModelFormatError(IntsimError):
    """An ``.intsim`` file (or other model file) is corrupt, truncated, of an
    unknown schema version, or internally inconsistent."""


class UnsupportedOpError(IntsimError):
    """An operator (or an attribute of one) that intsim does not implement."""


class AccumulatorOverflowError(IntsimError, ArithmeticError):
    """An accumulator left its ``accumulator_bits`` range under the profile's
    ``overflow = "error"`` policy."""


class InputWarning(UserWarning):
    """Float input that looks wrong: an integer dtype (images as 0..255 codes), or values far
    outside the range the model was calibrated for."""


class OverflowWarning(UserWarning):
    """Accumulators left their ``accumulator_bits`` range under the profile's ``overflow = "wrap"`` or
    ``"saturate"`` policy: the result is what that hardware computes, not the exact sum.  The message names
    each node and how many of its outputs overflowed."""
