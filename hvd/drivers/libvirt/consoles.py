"""Serial console sessions, the VNC display's address and screenshots of libvirt domains.

A serial session is a non-blocking virStream from virDomainOpenConsole (what ``virsh console``
does): libvirt's event thread (``host.ensure_event_thread``) calls back when the stream is
readable and the data is handed to the loop with ``call_soon_threadsafe``; writes go through the
host's worker threads. The domain's serial port is a pty with a ``<log>`` (see xml.py), so QEMU
keeps writing console.log whether or not a session is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from hvd.drivers.libvirt import guest
from hvd.drivers.libvirt.host import LibvirtHost, translate
from hvd.drivers.remote_console import MAX_SCREENSHOT_BYTES, ImageError, SerialSession, ppm_to_png
from hvd.errors import Conflict, DriverError, InvalidState

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MAX_PENDING_BYTES = 4 << 20  # guest output queued for a slow reader before it is dropped
_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_EAGAIN = -2  # what the Python binding's recv/send return on a non-blocking stream with nothing to do
_LOCAL_OF_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class LibvirtSerialSession(SerialSession):
    """One virDomainOpenConsole stream; create with ``open_serial``."""

    def __init__(self, host: LibvirtHost, uuid: str, loop: asyncio.AbstractEventLoop) -> None:
        self._host = host
        self._uuid = uuid
        self._loop = loop
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending = 0  # bytes queued, counted in the loop thread only
        self._stream: Any = None
        self._ended = False
        self._write_lock = asyncio.Lock()

    # --- libvirt event thread ---------------------------------------------------------------------

    def _on_stream_event(self, stream: Any, _events: int, _opaque: Any) -> None:
        while True:
            try:
                data = stream.recv(READ_CHUNK)
            except libvirt.libvirtError as exc:
                log.info("console stream of %s failed: %s", self._uuid, exc)
                data = b""
            if data == _EAGAIN:
                return
            if not data:  # end of stream: the guest stopped, or libvirt dropped the session
                with contextlib.suppress(libvirt.libvirtError):
                    stream.eventRemoveCallback()
                self._post(b"")
                return
            self._post(bytes(data))

    def _post(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._deliver, data)

    # --- loop thread --------------------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if data and self._pending + len(data) > MAX_PENDING_BYTES:
            return  # the reader is too slow: drop (console.log still has it)
        self._pending += len(data)
        self._queue.put_nowait(data)

    async def _open(self) -> None:
        def run(conn: Any) -> Any:
            dom = guest.lookup(conn, self._uuid)
            if not dom.isActive():
                raise InvalidState(f"instance {self._uuid} is not running: its console cannot be attached")
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                dom.openConsole(None, stream, 0)
                stream.eventAddCallback(_EVENTS, self._on_stream_event, None)
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
            return stream

        try:
            self._stream = await self._host.call(run)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and "session" in str(exc):
                raise Conflict(f"instance {self._uuid} already has a console session attached; detach it"
                               " first") from exc
            if "not using a PTY" in str(exc):  # defined before serial ports were ptys (hvd < 0.2)
                raise Conflict(f"instance {self._uuid} was started with a file-only serial port; stop and start"
                               " it (or hard reboot) to get an interactive one") from exc
            raise translate(exc, f"console of {self._uuid}") from exc

    async def read(self) -> bytes:
        if self._ended and self._queue.empty():
            return b""
        data = await self._queue.get()
        self._pending -= len(data)
        if not data:
            self._ended = True
        return data

    async def write(self, data: bytes) -> None:
        stream = self._stream
        async with self._write_lock:  # keystrokes arrive in order
            while data and not self._ended:
                try:
                    sent = await self._host.call(_send, stream, data)
                except libvirt.libvirtError as exc:
                    raise DriverError(f"console of {self._uuid}: {exc}") from exc
                if sent == _EAGAIN:  # libvirt's buffer is full: the guest reads slower than we type
                    await asyncio.sleep(0.01)
                    continue
                data = data[sent:]

    async def close(self) -> None:
        if self._stream is None:
            return
        stream, self._stream = self._stream, None
        self._ended = True
        self._queue.put_nowait(b"")

        def run(_conn: Any) -> None:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()

        with contextlib.suppress(libvirt.libvirtError, DriverError):
            await asyncio.shield(self._host.call(run))


def _send(_conn: Any, stream: Any, data: bytes) -> Any:
    return stream.send(data)


async def open_serial(host: LibvirtHost, uuid: str) -> LibvirtSerialSession:
    """Attach to ``uuid``'s serial console (see ``ComputeDriver.open_serial_console``)."""
    session = LibvirtSerialSession(host, uuid, asyncio.get_running_loop())
    await session._open()
    return session


def vnc_address(conn: Any, uuid: str) -> tuple[str, int]:
    """(address, port) of the running domain's VNC display, from its live XML; a wildcard listen
    address is reached on loopback."""
    dom = guest.lookup(conn, uuid)
    if not dom.isActive():
        raise InvalidState(f"instance {uuid} is not running: it has no display")
    graphics = ET.fromstring(dom.XMLDesc(0)).find("devices/graphics[@type='vnc']")
    port = int(graphics.get("port", "-1")) if graphics is not None else -1
    if graphics is None or port <= 0:
        raise Conflict(f"instance {uuid} has no VNC display (it was started while VNC was off on its host;"
                       " stop and start it to add one)")
    listen = graphics.get("listen", "")
    return _LOCAL_OF_WILDCARD.get(listen, listen), port


def screenshot(conn: Any, uuid: str) -> bytes:
    """The running domain's screen as a PNG (libvirt gives PNG or PPM, depending on QEMU)."""
    dom = guest.lookup(conn, uuid)
    if not dom.isActive():
        raise InvalidState(f"instance {uuid} is not running: it has no screen")
    if ET.fromstring(dom.XMLDesc(0)).find("devices/video") is None:
        raise Conflict(f"instance {uuid} has no display (it was started while VNC was off on its host)")
    stream = conn.newStream(0)
    try:
        mime = dom.screenshot(stream, 0, 0)
        data = bytearray()
        while chunk := stream.recv(READ_CHUNK * 4):
            data += chunk
            if len(data) > MAX_SCREENSHOT_BYTES:
                raise DriverError(f"screenshot of {uuid} is larger than {MAX_SCREENSHOT_BYTES} bytes")
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    if mime == "image/png":
        return bytes(data)
    try:
        return ppm_to_png(bytes(data))
    except ImageError as exc:
        raise DriverError(f"screenshot of {uuid} ({mime}) could not be read: {exc}") from exc
