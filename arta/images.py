"""One image's bytes, checked: in memory (:func:`read_image`), as a stream (:func:`open_image`),
and inline in Jupyter (:func:`image_html`).

The same checks as :meth:`arta.Result.save` makes on a file: the server
must say it is an image, the bytes must start with that format's signature
and end as that format ends, and there must be at most ``max_bytes`` of
them. Nothing here writes to disk.
"""

from __future__ import annotations

import base64
import html
import io
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from arta.errors import ArtaError, DownloadError, ProtocolError, ServiceError
from arta.retry import TRANSIENT_STATUSES, RetryPolicy, retry_after, transient
from arta.transport import Request, RequestsTransport, Response, Transport

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "DISPLAY_MAX_BYTES", "Image", "blocked_host", "extension_of",
           "image_html", "image_request", "open_image", "read_image"]

#: Largest image accepted from the service.
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024

#: Largest image shown inline in a notebook (a notebook keeps what it shows).
DISPLAY_MAX_BYTES = 8 * 1024 * 1024

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".webp": (b"RIFF",),  # then 4 bytes of size, then b"WEBP" (checked below)
}

_EC2_METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")


@dataclass(frozen=True)
class Image:
    """One image of a finished job, as the service listed it.

    Plain data; :meth:`read` and :meth:`open` fetch its bytes (through the
    ``transport`` given, else a short-lived one), and Jupyter shows it
    inline.
    """

    url: str
    name: str
    mime: str
    blurred: bool

    def read(self, transport: Transport | None = None, *,
             max_bytes: int | None = None) -> bytes:
        """The image's bytes, in memory: for users who do not want files.

        Checked as :meth:`arta.Result.save` checks a file (an image type,
        the format's signature, a whole body, at most ``max_bytes``,
        default 50 MiB); transient failures are retried.
        """
        return read_image(self, transport, max_bytes=max_bytes or DEFAULT_MAX_IMAGE_BYTES)

    def open(self, transport: Transport | None = None, *,
             max_bytes: int | None = None) -> BinaryIO:
        """The image as a binary stream (``with image.open() as f: ...``), checked as it is read."""
        return open_image(self, transport, max_bytes=max_bytes or DEFAULT_MAX_IMAGE_BYTES)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Jupyter's display: the picture inline, fetched once when shown."""
        return {"text/html": image_html(self), "text/plain": repr(self)}

    def _repr_html_(self) -> str:
        return image_html(self)

    def _repr_png_(self) -> bytes | None:
        """The PNG bytes to show (None for another type, or one too big to show)."""
        if extension_of(self.mime) != ".png":
            return None
        try:
            return self.read(max_bytes=DISPLAY_MAX_BYTES)
        except (ArtaError, OSError):
            return None


def blocked_host(url: str, endpoint: str | None) -> str | None:
    """Why ``url`` must not be fetched (not http(s), or a link-local/metadata address), or None.

    A server's URL on 169.254.0.0/16 or ``fd00:ec2::254`` would fetch this
    machine's cloud credentials; allowed only for an endpoint there too (a test rig).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "a malformed URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"not an http(s) URL (scheme {parts.scheme or 'none'!r})"
    if _metadata_address(host) and not (endpoint and _metadata_address(
            urlsplit(endpoint).hostname or "")):
        return f"a link-local or cloud-metadata address ({host})"
    return None


def _metadata_address(host: str) -> bool:
    """Whether ``host`` is, or is spelled as, a link-local or cloud-metadata address.

    The address is read as the system reads it (``getaddrinfo``, numeric
    only: no DNS query), so ``2852039166``, ``0xa9fea9fe`` or
    ``169.254.43518`` are 169.254.169.254 here as they are to the connection.
    """
    if host.lower().rstrip(".") in ("metadata.google.internal", "metadata"):
        return True
    try:
        found = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return False  # a name, not an address: it is fetched as the transport resolves it
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_link_local or address == _EC2_METADATA_V6:
            return True
    return False


def image_request(url: str) -> Request:
    """docs/protocol.rst section 6: fetch one image, streamed."""
    return Request("GET", url, headers={"Accept": "image/*"}, stream=True)


def extension_of(mime: str) -> str:
    """The file extension for a MIME type (``.png`` for one the service never sends)."""
    return EXTENSIONS.get(mime.split(";")[0].strip().lower(), ".png")


def whole(extension: str, head: bytes, tail: bytes, size: int) -> bool:
    """True if the image ends as its format says it must (not cut short)."""
    if extension == ".png":
        return tail.endswith(b"IEND\xaeB`\x82")
    if extension == ".jpg":
        return tail.endswith(b"\xff\xd9")
    return int.from_bytes(head[4:8], "little") + 8 == size  # WebP: RIFF size + header


def magic_ok(extension: str, head: bytes) -> bool:
    """True if ``head`` starts as an image of ``extension`` starts."""
    if not any(head.startswith(magic) for magic in _MAGIC[extension]):
        return False
    return extension != ".webp" or head[8:12] == b"WEBP"


def checked_response(response: Response, name: str) -> None:
    """Raise for an answer that is no image: a retryable error for a transient status."""
    if response.status != 200:
        if response.status in TRANSIENT_STATUSES:
            raise ServiceError(f"image {name}: HTTP {response.status}",
                               status=response.status, retry_after=retry_after(response.headers))
        raise DownloadError(f"image {name}: HTTP {response.status}")
    mime = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not mime.startswith("image/"):
        raise DownloadError(f"image {name}: the server sent {mime or 'no type'}, not an image")


class _CheckedBody(io.RawIOBase):
    """A response body read as a file, checked on the way: signature, size cap, whole end."""

    def __init__(self, response: Response, name: str, extension: str, max_bytes: int) -> None:
        self._response, self._name, self._extension = response, name, extension
        self._max_bytes = max_bytes
        self._transport: Transport | None = None
        self._chunks: Iterator[bytes] = response.iter_bytes()
        self._pending, self._head, self._tail, self._size = b"", b"", b"", 0
        while len(self._head) < 16 and self._pull():
            pass
        if not magic_ok(extension, self._head):
            self.close()
            raise DownloadError(f"image {name}: the bytes are not a "
                                f"{extension[1:].upper()} image")

    def _pull(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            if not whole(self._extension, self._head, self._tail, self._size):
                raise ProtocolError(f"image {self._name} ended early, after {self._size} bytes")
            return False
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise DownloadError(
                f"image {self._name} is larger than the {self._max_bytes}-byte limit")
        self._head = self._head if len(self._head) >= 16 else (self._head + chunk)[:16]
        self._tail = (self._tail + chunk)[-16:]
        self._pending += chunk
        return True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and self._pull():
            pass
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def also_close(self, transport: Transport) -> None:
        """Close ``transport`` too when this closes (one made for this image alone)."""
        self._transport = transport

    def close(self) -> None:
        self._response.close()
        if self._transport is not None:
            self._transport.close()
        super().close()


def open_image(image: Image, transport: Transport | None = None, *,
               max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> BinaryIO:
    """Stream ``image`` as a binary file; close it (or use ``with``) when done.

    The signature is checked before this returns; the size cap and the end
    as it is read (a cut-short image raises at the end, not silently). Made
    without a ``transport``, the stream closes its own when closed.
    """
    endpoint = getattr(getattr(transport, "settings", None), "endpoint", None)
    why = blocked_host(image.url, endpoint)
    if why is not None:  # as Result.save refuses it: no read, open or preview fetches it either
        raise DownloadError(f"image {image.name or image.url}: its URL is {why}; not fetched")
    own = transport is None
    used: Transport = transport if transport is not None else RequestsTransport(pool_size=1)
    try:
        response = used.handle_request(image_request(image.url))
        try:
            checked_response(response, image.name or image.url)
            body = _CheckedBody(response, image.name or "image", extension_of(image.mime),
                                max_bytes)
        except BaseException:
            response.close()
            raise
    except BaseException:
        if own:
            used.close()
        raise
    if own:
        body.also_close(used)
    stream = io.BufferedReader(body)
    return stream


def read_image(image: Image, transport: Transport | None = None, *,
               max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
               retry_policy: RetryPolicy | None = None) -> bytes:
    """The bytes of ``image``, checked as :func:`open_image` checks them; transient
    failures are retried."""

    def once() -> bytes:
        with open_image(image, transport, max_bytes=max_bytes) as stream:
            return stream.read()

    return (retry_policy or RetryPolicy()).call(once, retry_on=transient)


def image_html(image: Image, transport: Transport | None = None, *,
               caption: str = "", width: int = 256) -> str:
    """An ``<img>`` with the picture inline (a ``data:`` URL), for a notebook.

    Fetched now, capped at :data:`DISPLAY_MAX_BYTES`; an image that cannot
    be had is shown as an escaped line saying why, with its link.
    """
    url = html.escape(image.url, quote=True)
    label = html.escape(caption or image.name or image.url)
    try:
        data = read_image(image, transport, max_bytes=DISPLAY_MAX_BYTES,
                          retry_policy=RetryPolicy(attempts=2, first_delay=0.2))
    except (ArtaError, OSError) as error:
        return (f'<div><a href="{url}">{label}</a>: not shown '
                f"({html.escape(str(error))})</div>")
    mime = html.escape(image.mime.split(";")[0].strip() or "image/png", quote=True)
    source = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    blurred = " (blurred by the service)" if image.blurred else ""
    return (f'<figure style="display:inline-block;margin:4px">'
            f'<img src="{source}" alt="{label}" style="max-width:{width}px">'
            f"<figcaption>{label}{html.escape(blurred)}</figcaption></figure>")
