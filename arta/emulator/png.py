"""A minimal PNG encoder: 8-bit RGB, written with ``zlib`` and ``struct`` only.

The emulator must answer real, viewable PNG files without any imaging
library, so this writes the three chunks a decoder needs (IHDR, IDAT, IEND)
and nothing else.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

__all__ = ["PNG_SIGNATURE", "encode_rgb", "read_size"]

#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_COLOR_TYPE_RGB = 2
_BIT_DEPTH = 8
_FILTER_NONE = b"\x00"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """Frame ``data`` as a PNG chunk: length, type, data, CRC of type + data."""
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_rgb(width: int, height: int, rows: Sequence[bytes | bytearray], level: int = 6) -> bytes:
    """Return the PNG file for ``height`` rows of ``width`` packed RGB pixels.

    Each row is ``3 * width`` bytes. Rows are stored unfiltered: the emulator's
    pictures are made of long runs of one colour, which deflate already
    compresses well, so a filter would only cost time.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if len(rows) != height:
        raise ValueError(f"expected {height} rows, got {len(rows)}")
    stride = 3 * width
    for row in rows:
        if len(row) != stride:
            raise ValueError(f"every row must be {stride} bytes, got {len(row)}")
    raw = _FILTER_NONE + _FILTER_NONE.join(bytes(row) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOR_TYPE_RGB, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, level)),
            _chunk(b"IEND", b""),
        )
    )


def read_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from a PNG file's IHDR chunk.

    Raises :class:`ValueError` when ``data`` does not start like a PNG file.
    """
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
