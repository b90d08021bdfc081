"""``python -m arta.cli``: the ``arta`` command."""

import sys

from arta.cli.commands import main

sys.exit(main())
