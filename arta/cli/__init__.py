"""The ``arta`` command line: ``args`` parses, ``commands`` runs, ``batch`` and ``progress`` serve ``arta batch``."""

from arta.cli.commands import main

__all__ = ["main"]
