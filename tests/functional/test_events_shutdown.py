"""Daemon shutdown with /v1/events streams open (fake driver, a real `hvd daemon` process)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.conftest import Api, DaemonProcess


async def test_an_open_event_stream_does_not_hold_the_daemon_stop(daemon: DaemonProcess) -> None:
    """SIGTERM with an event stream open: the daemon ends the stream and exits promptly, not after
    aiohttp's 60 s shutdown timeout (the bound here is generous; the regression held it 60 s)."""
    async with aiohttp.ClientSession() as session:
        api = Api(session, daemon.url)
        await api.login("admin", daemon.admin_password, "admin")
        async with session.get(daemon.url + "/v1/events", headers={"Authorization": f"Bearer {api.token}"}) as resp:
            assert resp.status == 200
            daemon.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(resp.content.read(), 20)  # the daemon ended the stream
            code = await asyncio.get_running_loop().run_in_executor(None, daemon.proc.wait, 20)
    assert code == 0, daemon.log()
