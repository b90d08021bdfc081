"""The process's default :class:`~arta.client.Client`: what ``arta.generate`` and ``arta.aio`` use.

Made lazily on first use, once per process (a forked child makes its own: a
parent's pooled connections and threads must not be shared), and
replaceable with :func:`set_default_client`, e.g. by a test fixture that
points every call at an emulator.
"""

from __future__ import annotations

import os
import threading

from arta.client import Client

__all__ = ["default_client", "set_default_client"]

_default: Client | None = None
_default_pid = 0
_lock = threading.Lock()


def default_client() -> Client:
    """The client behind :func:`arta.generate`: made on first use, once per process.

    A forked child makes its own (a parent's pooled connections must not be
    shared), and finds the parent's token in the shared token file.
    """
    global _default, _default_pid
    with _lock:
        if _default is None or _default_pid != os.getpid():
            _default, _default_pid = Client(), os.getpid()
        return _default


def set_default_client(client: Client | None) -> Client | None:
    """Make ``client`` the default of this process; return the one it replaces (or None).

    ``None`` forgets the default, so that the next use makes a fresh one
    from the environment. The replaced client is not closed: it is returned
    to its caller, who may restore or close it.
    """
    global _default, _default_pid
    if client is not None and not isinstance(client, Client):
        from arta.errors import ConfigurationError

        raise ConfigurationError(f"the default client must be an arta.Client, not {client!r}")
    with _lock:
        previous = _default if _default_pid == os.getpid() else None
        _default, _default_pid = client, os.getpid()
        return previous
