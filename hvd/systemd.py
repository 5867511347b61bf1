"""sd_notify without libsystemd: READY=1, STOPPING=1 and watchdog pings over NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send `state` to systemd; False when not run under a notify-type unit."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the WATCHDOG_USEC systemd asked for (pinging at half the limit tolerates one late ping)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog_loop(interval: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Ping systemd's watchdog every `interval` while `alive()`: once a loop of the daemon has died,
    the pings stop, so systemd restarts a daemon that is stuck instead of trusting a live event loop."""
    silent = False
    while True:
        if alive():
            notify("WATCHDOG=1")
            silent = False
        elif not silent:
            log.error("a daemon loop is dead: no more watchdog pings")
            silent = True
        await asyncio.sleep(interval)
