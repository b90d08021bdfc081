"""Transports: the one seam between ``arta`` and an HTTP stack.

A transport has one method, ``handle_request(request) -> response`` (the
shape httpx uses), and ``close()``. It sends exactly once: retries, auth and
polling all live above it, so any HTTP stack (a corporate session, an
HTTP/2 client, a test double) can be handed to :class:`arta.Client` and
everything else keeps working. See :class:`Transport` for the contract.

============================  ==================================================
:class:`RequestsTransport`    the default: one pooled ``requests.Session``
:class:`Urllib3Transport`     a bare urllib3 pool: the same options, the fewest frames
:class:`HttpxTransport`       httpx, HTTP/2 with ``h2`` (``pip install 'arta-client[httpx]'``)
:class:`InProcessTransport`   no sockets: calls the emulator's app directly
:class:`LoggingTransport`     wraps another; logs method, redacted URL, status, latency
============================  ==================================================

Failures are mapped to two exceptions whose difference matters: a
:class:`~arta.errors.ConnectError` means nothing was sent (safe to re-send
anything), a :class:`~arta.errors.NoResponseError` means the request may have
arrived (a submit must not be blindly re-sent).

A request's ``deadline`` (a :func:`time.monotonic` value) bounds the whole
exchange on every transport: one watchdog thread per process
(:mod:`arta.transport.watchdog`) shuts down the socket of a request still
waiting at its deadline.
"""

from arta.transport.base import (
    CHUNK_SIZE,
    DEFAULT_TIMEOUT,
    EncodedRequest,
    Request,
    Response,
    Timeout,
    Transport,
    describe,
)
from arta.transport.bodies import DEFAULT_MAX_BODY_BYTES, read_body
from arta.transport.httpx_transport import HttpxTransport
from arta.transport.inprocess import InProcessTransport
from arta.transport.logging_transport import LoggingTransport, redact_url
from arta.transport.requests_transport import DEFAULT_POOL_SIZE, RequestsTransport
from arta.transport.urllib3_transport import Urllib3Transport

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TIMEOUT",
    "EncodedRequest",
    "HttpxTransport",
    "InProcessTransport",
    "LoggingTransport",
    "Request",
    "RequestsTransport",
    "Response",
    "Timeout",
    "Transport",
    "Urllib3Transport",
    "describe",
    "read_body",
    "redact_url",
]
