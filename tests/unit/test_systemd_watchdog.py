"""The watchdog pings only while the daemon's loops are alive, so systemd restarts a stuck daemon."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from hvd import systemd


async def _pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alive: bool) -> list[str]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        task = asyncio.create_task(systemd.watchdog_loop(0.01, lambda: alive))
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        seen = []
        with contextlib.suppress(BlockingIOError):
            while True:
                seen.append(sock.recv(64).decode())
        return seen


async def test_the_watchdog_pings_while_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "WATCHDOG=1" in await _pings(tmp_path, monkeypatch, alive=True)


async def test_the_watchdog_stays_silent_once_a_loop_died(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _pings(tmp_path, monkeypatch, alive=False) == []
