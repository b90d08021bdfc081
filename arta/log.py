"""Where arta's log lines go: the command line's ``-v``, and ``ARTA_LOG`` for library users.

Each module logs where its events happen (``logging.getLogger(__name__)``:
the story of a job at INFO, details at DEBUG) and sets up nothing. Handlers
are set here only: by the command line, and once on ``import arta`` when
``ARTA_LOG`` asks for it (as ``OPENAI_LOG`` does for openai-python). On
import rather than with the first client, so that the lines of the default
client behind :func:`arta.generate`, of a token store used alone, and of a
``multiprocessing`` child (which imports arta again) are covered alike.
"""

from __future__ import annotations

import logging
import sys

from arta.config import log_verbosity
from arta.errors import ConfigurationError
from arta.redact import install_log_redaction

__all__ = ["configure_logging", "log_from_environment"]

#: ``-v``: one line per event of a job, and every warning.
STORY_FORMAT = "arta: %(levelname)s: %(message)s"
#: ``-vv``: with the time and the logger's name.
DETAIL_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def configure_logging(verbosity: int, *, replace: bool) -> None:
    """Log to stderr: 0 warnings; 1 the story of each job; 2 details and HTTP requests; 3 file locks.

    ``replace`` takes over the root logger's handlers (the command line owns
    its process); otherwise one is added only if the program has set none
    (``logging.basicConfig``). Levels are set on the named loggers only,
    never on the root, and every root handler redacts secrets.
    """
    logging.basicConfig(format=DETAIL_FORMAT if verbosity >= 2 else STORY_FORMAT,
                        stream=sys.stderr, force=replace)
    # NOTSET: as the root logger says (WARNING, or what the program chose).
    levels = {
        "arta": (logging.NOTSET, logging.INFO, logging.DEBUG)[min(verbosity, 2)],
        # The HTTP requests: urllib3's lines at DEBUG, httpx's at INFO.
        "urllib3": logging.DEBUG if verbosity >= 2 else logging.NOTSET,
        "httpx": logging.INFO if verbosity >= 2 else logging.NOTSET,
        # A line per lock taken and released, per connection event: only when asked for.
        "httpcore": logging.DEBUG if verbosity >= 3 else logging.NOTSET,
        "filelock": logging.DEBUG if verbosity >= 3 else logging.NOTSET,
    }
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    install_log_redaction()  # urllib3's request lines carry the sign-up URL and its key


def log_from_environment() -> None:
    """Log as ``ARTA_LOG`` asks (``info`` or ``debug``); nothing when it is unset.

    A bad value is left to the first client to report (``Settings.resolve``
    raises a :class:`~arta.errors.ConfigurationError`): ``import arta`` must not fail.
    """
    try:
        verbosity = log_verbosity()
    except ConfigurationError:
        return
    if verbosity:
        configure_logging(verbosity, replace=False)
