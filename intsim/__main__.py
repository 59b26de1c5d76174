"""``python -m intsim``: the same command line as the ``intsim`` script."""

import sys

from intsim.cli import main

sys.exit(main())
