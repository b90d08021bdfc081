"""Reading an answer's body within bounds: its size after decompression, and its time.

A server may send a gzip bomb, an endless body or one byte a second; every
transport reads a body that is not streamed through :func:`read_body`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Mapping

from arta.errors import MalformedResponse, NoResponseError
from arta.transport.base import Request, describe

__all__ = ["ACCEPT_ENCODING", "BODY_TIME_FACTOR", "DEFAULT_MAX_BODY_BYTES", "read_body"]

#: Largest body read for a request that is not streamed (the protocol's JSON
#: answers are a few kilobytes), counted after decompression: a gzip bomb or
#: an endless body ends in :class:`~arta.errors.MalformedResponse` here,
#: not in a ``MemoryError``. Transports take ``max_body_bytes`` to change it.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: A body that is not streamed must arrive whole within this many read
#: timeouts: the read timeout bounds the silence between two bytes, this
#: bounds a server dripping one byte at a time.
BODY_TIME_FACTOR = 4

#: The encodings :func:`read_body` can undo (with a bound on the output).
ACCEPT_ENCODING = "gzip, deflate"


def _decoder(encoding: str) -> zlib._Decompress | None:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, as sent
    raise MalformedResponse(f"the answer is encoded as {encoding!r}, which was not asked for")


def read_body(raw: Iterator[bytes], headers: Mapping[str, str], request: Request, *,
              limit: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """Read a whole body from ``raw`` (bytes as they arrive, still encoded), within bounds.

    - A ``Content-Length`` over ``limit`` is refused before a byte is read.
    - ``gzip``/``deflate`` are undone here, never producing more than
      ``limit + 1`` bytes at a time: a 4 MB gzip bomb costs a megabyte.
    - The body must be whole within :data:`BODY_TIME_FACTOR` read timeouts,
      and by the request's deadline (checked as chunks arrive; the
      watchdog of a transport's own connections cuts a silent socket too).

    Over the limit: :class:`~arta.errors.MalformedResponse` (not retried).
    Too slow: :class:`~arta.errors.NoResponseError`.
    """
    declared = headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise MalformedResponse(
            f"{describe(request)} announced a {int(declared)}-byte answer, over the "
            f"{limit}-byte limit")
    decoder = _decoder(headers.get("Content-Encoding", ""))
    budget = BODY_TIME_FACTOR * request.read_timeout
    # Checked between chunks: a backstop for stacks without the watchdog
    # (a session or client of the caller's), which cuts a slow read itself.
    deadline = time.monotonic() + budget
    if request.deadline is not None and request.deadline < deadline:
        deadline = request.deadline
    parts: list[bytes] = []
    size = 0

    def add(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise MalformedResponse(
                f"{describe(request)}: the answer is larger than the {limit}-byte limit")
        parts.append(data)

    for chunk in raw:
        if decoder is None:
            add(chunk)
        else:
            data = chunk
            while data:
                try:
                    add(decoder.decompress(data, limit - size + 1))
                except zlib.error as error:
                    raise MalformedResponse(
                        f"{describe(request)}: the compressed answer is corrupt") from error
                data = decoder.unconsumed_tail
        if time.monotonic() > deadline:
            if deadline == request.deadline:
                raise NoResponseError(f"no whole answer before the deadline: {describe(request)}")
            raise NoResponseError(
                f"the answer did not arrive whole within {budget:g}s "
                f"({BODY_TIME_FACTOR} x the read timeout): {describe(request)}")
    if decoder is not None:
        add(decoder.flush())
    return b"".join(parts)
