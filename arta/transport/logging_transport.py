"""A transport wrapper that logs each exchange: method, redacted URL, status, latency.

Headers are never logged (``Authorization`` carries the token) and neither
are bodies (a refresh body carries the refresh token). In URLs, the values
of ``key`` and of anything named or shaped like a secret are replaced.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from arta.transport.base import Request, Response, Transport

__all__ = ["REDACTED", "LoggingTransport", "redact_url"]

#: What a secret is replaced with.
REDACTED = "REDACTED"

# A query parameter whose name says it is a secret: key, api_key, token,
# id_token, secret, password, signature/sig (signed URLs), auth, credential...
_SECRET_NAME = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session|code",
                          re.IGNORECASE)
_SECRET_VALUES = (
    # A JWT (an ID token): three base64url parts, the first a JSON header.
    re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*"),
    # A Google API key, a Firebase refresh token.
    re.compile(r"AIza[\w-]{20,}|AMf-[\w-]{20,}"),
    # A long opaque string mixing cases and digits, as generated secrets do.
    re.compile(r"(?=[\w.~+/=-]*[a-z])(?=[\w.~+/=-]*[A-Z])(?=[\w.~+/=-]*\d)[\w.~+/=-]{32,}"),
)


def _secret_value(value: str) -> bool:
    return any(pattern.fullmatch(value) for pattern in _SECRET_VALUES)


def redact_url(url: str) -> str:
    """``url`` with secrets replaced by ``REDACTED``; query keys, order and encoding kept.

    Redacted: the values of query parameters named like secrets (``key``,
    ``*token*``, ``*secret*``, ``sig*``, ...), any query value or path
    segment shaped like a token (a JWT, an API key, a long random string),
    and a password in the URL.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    path = "/".join(REDACTED if _secret_value(unquote_plus(segment)) else segment
                    for segment in parts.path.split("/"))
    fields = []
    for field in parts.query.split("&") if parts.query else []:
        name, equals, value = field.partition("=")
        if equals and (_SECRET_NAME.search(unquote_plus(name)) or _secret_value(unquote_plus(value))):
            value = REDACTED
        fields.append(f"{name}{equals}{value}")
    return urlunsplit((parts.scheme, netloc, path, "&".join(fields), parts.fragment))


class LoggingTransport:
    """Wraps another transport and logs one line per request.

    ``POST https://securetoken.googleapis.com/v1/token?key=REDACTED -> 200 in 41.2 ms``

    A failure is logged with its exception type (``-> NoResponseError
    after 30004.1 ms``) and raised unchanged. The latency of a streamed
    response is the time to its headers. ``logger`` defaults to the
    ``arta.transport`` logger; ``level`` to DEBUG. Nothing is formatted
    when the level is disabled.
    """

    def __init__(self, inner: Transport, logger: logging.Logger | None = None,
                 level: int = logging.DEBUG) -> None:
        self.inner = inner
        self.logger = logger or logging.getLogger("arta.transport")
        self.level = level

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` through the inner transport and log the outcome."""
        if not self.logger.isEnabledFor(self.level):
            return self.inner.handle_request(request)
        started = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
        except Exception as error:
            self.logger.log(self.level, "%s %s -> %s after %.1f ms", request.method,
                            redact_url(request.url), type(error).__name__,
                            (time.perf_counter() - started) * 1000)
            raise
        self.logger.log(self.level, "%s %s -> %d in %.1f ms%s", request.method,
                        redact_url(request.url), response.status,
                        (time.perf_counter() - started) * 1000,
                        " (streamed)" if request.stream else "")
        return response

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()

    def __repr__(self) -> str:
        return f"LoggingTransport({self.inner!r})"
