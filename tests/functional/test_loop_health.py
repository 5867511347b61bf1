"""A daemon whose Raft loop or power-sync loop fails says so: /healthz answers 503 naming the loop,
a loop that died for good ends `serve()` with exit code 1 (systemd restarts it), and the power
sync survives any error and recovers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hvd.cluster.raft.storage import SqliteStorage
from hvd.compute.reconcile import Reconciler
from hvd.config import load_config
from hvd.daemon import serve
from hvd.health import State
from tests.conftest import free_port, serve_in_process, write_config


async def _healthz(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url + "/healthz") as resp:
        return resp.status, await resp.json()


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_a_dead_raft_loop_fails_healthz_and_serve_exits_1(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    config = load_config(write_config(tmp_path / "hvd", port))
    url = f"http://127.0.0.1:{port}"
    daemon = asyncio.create_task(serve(config))
    try:
        async with aiohttp.ClientSession() as session:
            async def up() -> bool:
                try:
                    return (await _healthz(session, url))[0] == 200
                except aiohttp.ClientError:
                    return False

            await _until(up)

            def broken(*args: object) -> None:
                raise RuntimeError("injected bug in persist")

            monkeypatch.setattr(SqliteStorage, "persist", broken)
            async with session.post(url + "/v1/auth/tokens", json={
                    "username": "admin", "password": "admin-secret", "project": "admin"}) as resp:
                assert resp.status == 503  # the login's token could not be written
            status, body = await _healthz(session, url)
            assert status == 503 and body["status"] == "dead"
            assert body["loops"]["raft"]["state"] == "dead"
            assert "injected bug in persist" in body["loops"]["raft"]["reason"]
            assert body["error"]["code"] == 503 and "raft dead" in body["error"]["message"]
            async with asyncio.timeout(20):
                assert await daemon == 1
    finally:
        if not daemon.done():
            daemon.cancel()


async def test_the_power_sync_survives_any_error_and_reports_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    failing = {"on": False}
    real = Reconciler.sync_power_states

    async def flaky(self: Reconciler) -> None:
        if failing["on"]:
            raise ValueError("injected power sync failure")
        await real(self)

    monkeypatch.setattr(Reconciler, "sync_power_states", flaky)
    config = load_config(write_config(tmp_path / "hvd", free_port(), extra="sync_power_state_interval_s = 0.05"))
    async with serve_in_process(config) as (services, url), aiohttp.ClientSession() as session:
        failing["on"] = True

        async def degraded() -> bool:
            status, body = await _healthz(session, url)
            return status == 503 and body["loops"]["power_sync"]["state"] == "degraded"

        await _until(degraded)
        assert "injected power sync failure" in services.health.check()["power_sync"].reason
        failing["on"] = False

        async def healthy() -> bool:
            return (await _healthz(session, url))[0] == 200

        await _until(healthy)
        assert services.health.check()["power_sync"].state is State.OK


async def test_a_broken_hypervisor_event_stream_is_followed_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from hvd.drivers.fake import FakeDriver

    calls = {"n": 0}
    real = FakeDriver.events

    def events(self: FakeDriver) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            async def broken() -> Any:
                raise ConnectionError("libvirt connection lost")
                yield  # an async generator
            return broken()
        return real(self)

    monkeypatch.setattr(FakeDriver, "events", events)
    config = load_config(write_config(tmp_path / "hvd", free_port(), extra="sync_power_state_interval_s = 0.05"))
    async with serve_in_process(config):
        async with asyncio.timeout(10):  # before: the stream stayed dead until a restart
            while calls["n"] < 2:
                await asyncio.sleep(0.05)
