"""Decode HTML form bodies: ``application/x-www-form-urlencoded`` and ``multipart/form-data``.

The Android app and the Go client send multipart, the old Python provider
url-encoded (docs/protocol.rst section 4), so the emulator takes both. Multipart
is parsed with the :mod:`email` package, since :mod:`cgi` is gone in
Python 3.13, under its ``compat32`` policy: the modern policies build a
typed header object for every header, which made a submit cost tens of
milliseconds.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from urllib.parse import parse_qsl

__all__ = ["FormError", "parse_form"]

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


class FormError(ValueError):
    """A body that is not a form the emulator can read; the message says why."""


def _media_type(content_type: str) -> str:
    """``"multipart/form-data; boundary=x"`` -> ``"multipart/form-data"``."""
    return content_type.split(";", 1)[0].strip().lower()


def parse_form(content_type: str | None, body: bytes) -> dict[str, str]:
    """Return the fields of a form body; a repeated field keeps its last value.

    An empty body is an empty form whatever its type. Raises
    :class:`FormError` for another media type or a malformed body.
    """
    if not body:
        return {}
    media_type = _media_type(content_type or "")
    if media_type == URLENCODED:
        return _parse_urlencoded(body)
    if media_type == MULTIPART:
        return _parse_multipart(content_type or "", body)
    raise FormError(f"expected {MULTIPART} or {URLENCODED}, got {media_type or 'no Content-Type'}")


def _parse_urlencoded(body: bytes) -> dict[str, str]:
    """Fields of an url-encoded body, percent-escapes decoded as UTF-8."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FormError("an url-encoded body must be ASCII") from None
    try:
        return dict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except (ValueError, UnicodeDecodeError):
        raise FormError("malformed url-encoded body") from None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    """Fields of a multipart body; file parts are read as UTF-8 text too."""
    # The email parser wants a whole message: give it the Content-Type as
    # its only header, so that it finds the boundary there.
    message = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", errors="replace") + b"\r\n\r\n" + body
    )
    parts = message.get_payload() if message.is_multipart() else None
    if not isinstance(parts, list):
        raise FormError("malformed multipart body")
    if message.defects:
        raise FormError("malformed multipart body: " + type(message.defects[0]).__name__)
    fields: dict[str, str] = {}
    for part in parts:
        if not isinstance(part, Message):
            raise FormError("malformed multipart body")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise FormError("a multipart part has no form-data name")
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        charset = part.get_content_charset() or "utf-8"
        try:
            fields[name] = raw.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise FormError(f"field {name!r} is not valid {charset}") from None
    return fields
