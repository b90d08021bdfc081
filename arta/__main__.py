"""``python -m arta``: the ``arta`` command, for when the script is not on PATH."""

import sys

from arta.cli import main

sys.exit(main())
