"""The fake driver's consoles: a serial "terminal" and a VNC server that only greets.

Honest about what they are: the fake serial port echoes what is typed (as a tty does) and
understands one command, ``echo WORDS``, which prints WORDS verbatim (no shell, no expansion);
every byte it outputs is appended to console.log, as a logged pty does. The fake VNC display
completes the RFB handshake (versions 3.3, 3.7 and 3.8, security type None) and announces a
black 640x480 screen, then ignores what the client sends: it never draws.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

from hvd.drivers.remote_console import SerialSession, png_rgb

WIDTH, HEIGHT = 640, 480
_PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


class FakeSerialSession(SerialSession):
    """A fake guest terminal; ``log`` receives every byte it outputs, ``on_close`` runs once."""

    def __init__(self, log: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        self._log = log
        self._on_close: Callable[[], None] | None = on_close
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._line = bytearray()

    def _out(self, data: bytes) -> None:
        if self._on_close is None:
            return
        self._log(data)
        self._queue.put_nowait(data)

    async def read(self) -> bytes:
        data = await self._queue.get()
        if not data:
            self._queue.put_nowait(b"")  # every later read ends too
        return data

    async def write(self, data: bytes) -> None:
        for byte in data:
            if byte in (0x0D, 0x0A):
                line, self._line = bytes(self._line), bytearray()
                self._out(b"\r\n")
                if line.startswith(b"echo "):
                    self._out(line[5:] + b"\r\n")
            else:
                self._line.append(byte)
                self._out(bytes([byte]))

    def end(self) -> None:
        """The guest stopped (or the session is closed): readers get ``b""``. Idempotent."""
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            self._queue.put_nowait(b"")
            on_close()

    async def close(self) -> None:
        self.end()


class FakeVncServer:
    """One fake display on 127.0.0.1 (an ephemeral port) for one domain."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def address(self) -> tuple[str, int]:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return "127.0.0.1", port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            writer.write(b"RFB 003.008\n")
            version = await reader.readexactly(12)
            minor = int(version[8:11]) if version[:8] == b"RFB 003." and version[8:11].isdigit() else 3
            if minor >= 7:
                writer.write(b"\x01\x01")  # one security type: None
                await reader.readexactly(1)
                if minor >= 8:
                    writer.write(struct.pack(">I", 0))  # SecurityResult OK
            else:
                writer.write(struct.pack(">I", 1))  # 3.3: the server decides: None
            await reader.readexactly(1)  # ClientInit (shared flag)
            name = self.name.encode()
            writer.write(struct.pack(">HH", WIDTH, HEIGHT) + _PIXEL_FORMAT + struct.pack(">I", len(name)) + name)
            await writer.drain()
            while await reader.read(4096):  # client messages: ignored
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


def black_screen_png() -> bytes:
    """The fake display's screenshot: black, WIDTH x HEIGHT."""
    return png_rgb(WIDTH, HEIGHT, bytes(WIDTH * HEIGHT * 3))
