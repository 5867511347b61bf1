"""The libvirt connection: blocking calls in worker threads, events into the loop, reconnects.

Why not libvirtaio: libvirt invokes the registered event-loop hooks (add/update/remove handle
and timeout) from whichever thread makes an API call. With every call in an executor, as hvd
requires, libvirtaio's hooks then touch the asyncio loop from a worker thread (asyncio's debug
mode raises "Non-thread-safe operation invoked on an event loop other than the current one";
uvloop is not thread-safe there at all), and it can be registered only once per process, bound
to one loop. So hvd runs libvirt's own thread-safe default event loop in one daemon thread (as
Nova does with its native event thread) and hands each event to the asyncio loop with
``call_soon_threadsafe``: callbacks still run in the loop thread, and nothing blocks it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from hvd.errors import DriverError, HvdError, InvalidState, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

KEEPALIVE_INTERVAL_S = 5  # a dead libvirtd is noticed after interval * (count + 1) seconds
KEEPALIVE_COUNT = 3



def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised and logged instead."""


libvirt.registerErrorHandler(_quiet, None)

_event_thread: threading.Thread | None = None
_event_lock = threading.Lock()

# libvirt error codes that mean "the connection is gone", not "the call was wrong".
_DEAD_CONNECTION_CODES = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
    }
)

LifecycleCallback = Callable[[str, str, int, int], None]  # (uuid, name, event, detail), loop thread


def _run_default_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt-internal failure
            log.error("libvirt event loop iteration failed")


def ensure_event_thread() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once).

    Must happen before the first ``libvirt.open`` of the process for events and keepalive to work.
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _event_thread = threading.Thread(target=_run_default_event_loop, name="libvirt-events", daemon=True)
        _event_thread.start()


def translate(exc: libvirt.libvirtError, what: str) -> HvdError:
    """An hvd error for a libvirt error raised while doing ``what``."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(f"{what}: no such domain", libvirt_code=code)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return InvalidState(f"{what}: {message}", libvirt_code=code)
    return DriverError(f"{what}: {message}", libvirt_code=code)


def is_no_domain(exc: libvirt.libvirtError) -> bool:
    return bool(exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)


class LibvirtHost:
    """One libvirt connection used from a small pool of worker threads.

    ``call(fn, *args)`` runs ``fn(conn, *args)`` in a worker and returns its result; it
    (re)connects first when the connection is missing or was reported closed. libvirt
    connections are thread-safe, so a few workers let a slow call (a managed save) not hold up
    others (a power-state poll).
    """

    def __init__(self, uri: str, workers: int = 4) -> None:
        self.uri = uri
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="libvirt")
        self._conn: Any = None
        self._dead = False
        self._connect_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: list[LifecycleCallback] = []
        self._closed = False
        self.reconnects = 0

    def on_lifecycle(self, callback: LifecycleCallback) -> None:
        """Call ``callback(uuid, name, event, detail)`` in the loop thread for every domain event."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ensure_event_thread()
        await self._connection()

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_conn, conn)
        self._executor.shutdown(wait=False)

    @staticmethod
    def _close_conn(conn: Any) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(conn._hvd_event_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _open(self) -> Any:
        conn = libvirt.open(self.uri)
        conn.registerCloseCallback(self._on_close, None)
        conn._hvd_event_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        return conn

    async def _connection(self) -> Any:
        if self._conn is not None and not self._dead:
            return self._conn
        if self._closed:
            raise DriverError("libvirt connection is closed")
        async with self._connect_lock:
            if self._conn is not None and not self._dead:
                return self._conn
            loop = asyncio.get_running_loop()
            old, self._conn = self._conn, None
            if old is not None:
                self.reconnects += 1
                log.warning("libvirt connection to %s was lost; reconnecting", self.uri)
                loop.run_in_executor(self._executor, self._close_conn, old)
            try:
                self._conn = await loop.run_in_executor(self._executor, self._open)
            except libvirt.libvirtError as exc:
                raise DriverError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
            self._dead = False
            return self._conn

    async def call(self, fn: Callable[..., T], *args: Any, retry: bool = False) -> T:
        """Run ``fn(conn, *args)`` in a worker thread.

        ``retry`` True re-runs ``fn`` once on a fresh connection if the connection died during
        the call: only for calls that are safe to repeat (reads, idempotent changes).
        libvirt errors are left to ``fn``'s caller (use ``translate``), except connection loss.
        """
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                return await loop.run_in_executor(self._executor, fn, conn, *args)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _DEAD_CONNECTION_CODES or self._alive(conn):
                    raise
                self._dead = True
                if not retry or attempt == 2:
                    raise DriverError(f"libvirt connection lost: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    # --- callbacks: run in the libvirt event thread; hand over to the loop --------------------

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._dead = True
        log.warning("libvirt connection closed (reason %d)", reason)

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            uuid, name = dom.UUIDString(), dom.name()
        except libvirt.libvirtError:
            return
        for callback in self._callbacks:
            with contextlib.suppress(RuntimeError):  # loop closed between the check and here
                loop.call_soon_threadsafe(callback, uuid, name, event, detail)
