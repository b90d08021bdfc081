"""The module functions: :func:`generate` on the process's default :class:`~arta.client.Client`.

As ``requests.get`` is a call on a ``Session``: the default client is made
lazily on first use, once per process (a forked child makes its own: a
parent's pooled connections and threads must not be shared), and is
replaceable with :func:`set_default_client`, e.g. by a test fixture that
points every call at an emulator. ``arta.aio`` uses it too.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from arta.client import Client, ConnectionOptions, split_options
from arta.errors import ConfigurationError
from arta.generation import OnChange
from arta.params import GenerationOptions, shows_generation_options
from arta.polling import PollPlanner
from arta.result import Result

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GenerateOptions", "default_client", "generate", "set_default_client"]

F = TypeVar("F", bound=Callable[..., Any])

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
        raise ConfigurationError(f"the default client must be an arta.Client, not {client!r}")
    with _lock:
        previous = _default if _default_pid == os.getpid() else None
        _default, _default_pid = client, os.getpid()
        return previous


class GenerateOptions(GenerationOptions, ConnectionOptions, total=False):
    """:func:`generate`'s keywords: a generation's, and a client's for a client of its own."""


def _shows_client_options(function: F) -> F:
    """Add the :class:`Client` keywords ``function`` takes too to its signature, for ``help()``."""
    signature = inspect.signature(function)
    client = inspect.signature(Client.__init__).parameters
    extra = [client[name].replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for name in ConnectionOptions.__annotations__]
    parameters = [*signature.parameters.values(), *extra]
    function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return function


@_shows_client_options
@shows_generation_options
def generate(prompt: str, *, timeout: float | None = None, on_change: OnChange | None = None,
             poll_policy: PollPlanner | None = None,
             **options: Unpack[GenerateOptions]) -> Result:
    """Generate images for ``prompt`` and return the :class:`Result` once the job is DONE.

    ``style`` is a display name or an alias (see ``arta styles``); ``n`` is
    1 to 4 images; ``seed`` makes a job repeatable (random when None).
    ``timeout`` bounds the wait in seconds; ``poll_policy`` says how often
    to ask (see :class:`PollPolicy`). Any other keyword is a
    :class:`Client` option (``endpoint=``, ``home=``, ``transport=``, ...):
    with them, a client is made for this call alone.

    Raises an :class:`InvalidInputError` (also a ``ValueError``) before any
    request for bad input, :class:`GenerationFailed` if the service failed
    the job, :class:`GenerationTimeout` past ``timeout``; every error raised
    after the submit carries the job's ``record_id``.
    """
    params, client_options = split_options(options)
    client = Client(**client_options) if client_options else default_client()
    try:
        return client.generate(prompt, timeout=timeout, on_change=on_change,
                               poll_policy=poll_policy, **params)
    finally:
        if client_options:
            client.close()
