"""Fixtures for the API tests: one in-process server per test module, running in its own thread.

The server thread owns an event loop with the real services (SQLite catalog, identity, fake
driver) behind a real loopback socket; tests talk to it with a blocking HTTP client, so the same
server also serves schemathesis and the CLI. `LiveServer.propose()` commits catalog commands
directly (e.g. an already-expired token) through the server's own coordinator.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tests.conftest import free_port, write_config

T = TypeVar("T")

ADMIN_PASSWORD = "admin-secret"
USER_PASSWORD = "user-secret-1"
# a fixed, valid OpenSSH public key for imports
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN3x1CuxJzguxj+DcmkGENE0fJc7PY547XflcLwdsccs test@hvd"
PUBLIC_KEY_FINGERPRINT = "SHA256:kc2uWLTtaRiVdVwUi11QqENy4pCrRoroFNHuB/Wfxio"


@dataclass
class Response:
    status: int
    body: Any
    headers: requests.structures.CaseInsensitiveDict[str]


@dataclass
class Client:
    """Blocking JSON client: `call(method, path, json)` -> Response (never raises on HTTP errors)."""

    url: str
    token: str | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, json: Any = None, *, headers: dict[str, str] | None = None,
             **kw: Any) -> Response:
        hdrs = dict(headers or {})
        if self.token is not None:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        resp = self.session.request(method, self.url + path, json=json, headers=hdrs, timeout=30, **kw)
        body: Any = resp.text
        if resp.headers.get("Content-Type", "").startswith("application/json"):
            body = resp.json()
        return Response(resp.status_code, body, resp.headers)

    def login(self, username: str, password: str, project: str) -> dict[str, Any]:
        creds = {"username": username, "password": password, "project": project}
        r = self.call("POST", "/v1/auth/tokens", creds)
        assert r.status == 201, r.body
        self.token = r.body["token"]
        return dict(r.body)

    def anonymous(self) -> Client:
        return Client(self.url)

    def get(self, path: str) -> Any:
        r = self.call("GET", path)
        assert r.status == 200, r.body
        return r.body


@dataclass
class LiveServer:
    url: str
    services: Any
    loop: asyncio.AbstractEventLoop
    base: Path

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def propose(self, cmd: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.run(self.services.catalog.propose(cmd))
        return result

    def client(self) -> Client:
        return Client(self.url)

    def admin(self) -> Client:
        c = Client(self.url)
        c.login("admin", ADMIN_PASSWORD, "admin")
        return c

    def user(self, admin: Client, project: str, role: str, name: str | None = None) -> Client:
        """A new user with `role` on `project` (created through the API), logged in there."""
        name = name or f"{role}-{uuid.uuid4().hex[:8]}"
        r = admin.call("POST", "/v1/users", {"name": name, "password": USER_PASSWORD, "project": project,
                                              "role": role})
        assert r.status == 201, r.body
        c = Client(self.url)
        c.login(name, USER_PASSWORD, project)
        return c


def _serve(config_path: Path, ready: queue.Queue[Any]) -> None:
    from aiohttp import web

    from hvd.api.app import build_app
    from hvd.config import load_config
    from hvd.daemon import running_services

    async def main() -> None:
        config = load_config(config_path)
        async with running_services(config) as services:
            runner = web.AppRunner(build_app(services), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", config.api.port).start()
            stop = asyncio.Event()
            ready.put((services, asyncio.get_running_loop(), stop))
            try:
                await stop.wait()
            finally:
                await runner.cleanup()

    try:
        asyncio.run(main())
    except BaseException as exc:
        ready.put(exc)


def start_live_server(base: Path, extra: str = "") -> tuple[LiveServer, threading.Thread, asyncio.Event]:
    port = free_port()
    cfg = write_config(base, port, extra=extra)
    ready: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(target=_serve, args=(cfg, ready), name="live-api", daemon=True)
    thread.start()
    got = ready.get(timeout=30)
    if isinstance(got, BaseException):
        raise got
    services, loop, stop = got
    return LiveServer(f"http://127.0.0.1:{port}", services, loop, base), thread, stop


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One in-process API server (fresh catalog) per test module."""
    server, thread, stop = start_live_server(tmp_path_factory.mktemp("live") / "hvd")
    yield server
    server.loop.call_soon_threadsafe(stop.set)
    thread.join(30)


@pytest.fixture(scope="module")
def admin(live: LiveServer) -> Client:
    """A client logged in as admin in project admin (one login per module)."""
    return live.admin()
