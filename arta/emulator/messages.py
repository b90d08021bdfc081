"""The plain request and response values that :class:`~arta.emulator.app.EmulatorApp` speaks.

They carry no sockets, so the same app can sit behind the HTTP server
(:mod:`arta.emulator.server`) or be called in-process by a test transport.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Request", "Response", "detail_response", "json_response"]


@dataclass(frozen=True)
class Request:
    """One HTTP request: method, target (path and query), headers, body.

    ``target`` is what the request line carries, e.g.
    ``"/securetoken.googleapis.com/v1/token?key=K"``; an absolute URL is
    accepted too. Header names are matched case-insensitively.
    """

    method: str
    target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target's path, without query."""
        return urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, list[str]]:
        """The target's query parameters, blank values kept."""
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def query_param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass
class Response:
    """One HTTP response: status, headers, body bytes.

    ``headers`` always holds a ``Content-Length`` matching ``body`` when
    built by :func:`json_response` or the app.

    Two marks carry injected faults to whoever writes the answer (the HTTP
    server honours them; an in-process caller may):

    - ``drop``: write nothing and close the connection. ``status`` and
      ``body`` are then what would have been answered (a submit's job does
      exist), or ``0`` and empty when the request was not performed.
    - ``delay``: seconds to wait before writing the answer.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    drop: bool = False
    delay: float = 0.0

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> Response:
    """A response whose body is ``payload`` as UTF-8 JSON."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(
        status,
        {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            **(headers or {}),
        },
        body,
    )


def detail_response(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """A FastAPI-style ``{"detail": "..."}`` error, as the image service answers them."""
    return json_response(status, {"detail": detail}, headers)
