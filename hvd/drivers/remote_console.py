"""Interactive consoles a driver offers: an attached serial port, and a screen as PNG.

A ``SerialSession`` is one user attached to a guest's serial port (``virsh console``): bytes the
guest writes come out of ``read``, keystrokes go in with ``write``. The port keeps being logged
to ``console.log`` while a session is attached. Only one session per guest at a time (libvirt's
rule too): a second attach is a Conflict.

``ppm_to_png`` turns the PPM frame that older QEMUs hand libvirt's screenshot into a PNG, in
pure Python (zlib): no imaging library for one format conversion.
"""

from __future__ import annotations

import abc
import struct
import zlib

SERIAL = "serial"
VNC = "vnc"

# A screenshot larger than this is refused rather than held in memory (16k x 16k x 3 is 768 MiB;
# real displays are far below).
MAX_SCREENSHOT_BYTES = 64 << 20


class SerialSession(abc.ABC):
    """One attached serial console. Use from the event loop only; methods never block it."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next bytes the guest wrote; ``b""`` once the session has ended (the guest stopped,
        the hypervisor dropped it, or ``close`` was called). Output the reader is too slow for is
        dropped here (it stays in console.log), so a fast guest cannot grow the daemon's memory."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send ``data`` to the guest's serial port (as typed). A no-op once the session ended."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Detach; pending ``read`` calls return ``b""``. Idempotent."""


class ImageError(ValueError):
    """Bytes that are not the image format they claim to be."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG (8-bit RGB, no filtering) of ``rgb``: ``height`` rows of ``width`` * 3 bytes."""
    stride = width * 3
    if width <= 0 or height <= 0 or len(rgb) != stride * height:
        raise ImageError(f"{len(rgb)} bytes are not a {width}x{height} RGB image")
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
            + _png_chunk(b"IEND", b""))


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR" or len(png) < 24:
        raise ImageError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _ppm_tokens(data: bytes, count: int) -> tuple[list[int], int]:
    """The first ``count`` whitespace-separated header numbers (``#`` comments skipped) and the
    offset just past the single whitespace byte that ends the header."""
    values: list[int] = []
    pos = 2  # after the magic
    while len(values) < count:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            end = data.find(b"\n", pos)
            if end < 0:
                raise ImageError("PPM header ends inside a comment")
            pos = end + 1
            continue
        start = pos
        while pos < len(data) and data[pos:pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ImageError("PPM header is not numbers")
        values.append(int(data[start:pos]))
    if not data[pos:pos + 1].isspace():
        raise ImageError("PPM header is not followed by whitespace")
    return values, pos + 1


def ppm_to_png(data: bytes) -> bytes:
    """A binary PPM (P6, maxval 255 or less; QEMU's screendump format) as a PNG."""
    if data[:2] != b"P6":
        raise ImageError("not a binary PPM (P6)")
    (width, height, maxval), offset = _ppm_tokens(data, 3)
    if not 0 < maxval < 256:
        raise ImageError(f"PPM maxval {maxval} is not supported (8-bit only)")
    pixels = data[offset:offset + width * height * 3]
    if maxval != 255:  # scale to 8 bits, as PNG has no maxval
        pixels = bytes(v * 255 // maxval for v in pixels)
    return png_rgb(width, height, pixels)
