"""A transport that gives every request the client's timeouts: a peer of ``LoggingTransport``."""

from __future__ import annotations

from dataclasses import replace

from arta.transport.base import Request, Response, Timeout, Transport

__all__ = ["TimeoutTransport"]


class TimeoutTransport:
    """Wraps another transport and sends every request with ``timeout``.

    The client sets its ``request_timeout`` once here, so the token calls,
    the polls and the image downloads all get it without passing it along.
    """

    def __init__(self, inner: Transport, timeout: Timeout) -> None:
        self.inner = inner
        self.timeout = timeout

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` once through the inner transport, with this transport's timeout."""
        if request.timeout != self.timeout:  # the client's own requests come with it already
            request = replace(request, timeout=self.timeout)
        return self.inner.handle_request(request)

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()

    def __repr__(self) -> str:
        return f"TimeoutTransport({self.inner!r})"
