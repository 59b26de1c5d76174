"""``python -m intsim`` and the ``intsim`` script: :func:`intsim.cli.main` as the whole process."""

import gc
import sys

from intsim.cli import main


def console() -> None:
    """Run the command line, the modules loaded so far frozen first (``gc.freeze``).

    They stay to the end of the process: frozen, the cyclic collector no longer walks them in its full
    collections nor in the ones at exit (with ``import intsim`` collecting nothing while it loads, that is
    0.2-0.4 s of a 1.3 s ``intsim demo``).  Not done in :func:`intsim.cli.main`, which a caller's process
    may run many times: each freeze would keep that process's garbage until it exits."""
    gc.freeze()
    sys.exit(main())


if __name__ == "__main__":
    console()
