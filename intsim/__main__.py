"""``python -m intsim``: the same command line as the ``intsim`` script."""

from intsim.cli import console

console()
