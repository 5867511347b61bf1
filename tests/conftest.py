"""Fixtures shared by the whole suite: temporary configs, in-process API, daemon subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(base: Path, port: int, driver: str = "fake", extra: str = "") -> Path:
    """An all-in-one config rooted at `base` (data, instances) listening on loopback `port`."""
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # libvirt-qemu must traverse to instance disks
    cfg = base / "hvd.toml"
    cfg.write_text(
        f"""
[host]
name = "hvd-test"
data_dir = "{base / 'data'}"
instances_path = "{base / 'instances'}"
[api]
listen = "127.0.0.1"
port = {port}
[identity]
admin_password = "admin-secret"
[libvirt]
virt_type = "qemu"
[compute]
driver = "{driver}"
instance_name_prefix = "instance-t{port}-"
{extra}
"""
    )
    return cfg


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: PID 1 may reap it late here)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class DaemonProcess:
    """An `hvd daemon` subprocess started by a test."""

    config: Path
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    admin_password: str = "admin-secret"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def start_daemon(base: Path, driver: str = "fake", extra: str = "", env: dict[str, str] | None = None,
                 port: int | None = None, timeout: float = 30.0) -> DaemonProcess:
    port = port or free_port()
    cfg = write_config(base, port, driver, extra)
    log_path = base / "daemon.log"
    fh = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "hvd", "daemon", "-c", str(cfg)],
        stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})},
    )
    d = DaemonProcess(cfg, f"http://127.0.0.1:{port}", log_path, proc)
    try:
        wait_listening(port, proc, timeout)
    except RuntimeError as exc:
        d.stop(signal.SIGKILL)
        raise RuntimeError(f"daemon {exc}:\n{d.log()}") from exc
    return d


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until something accepts on 127.0.0.1:`port`; RuntimeError if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"did not listen on {port} within {timeout}s")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path / "hvd")
    yield d
    d.stop()


class Api:
    """A small HTTP client for tests: JSON in, (status, JSON) out."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.token: str | None = None

    async def login(self, username: str, password: str, project: str) -> dict[str, Any]:
        status, body = await self.call("POST", "/v1/auth/tokens",
                                       {"username": username, "password": password, "project": project})
        assert status == 201, body
        self.token = body["token"]
        return body

    async def call(self, method: str, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        async with self.session.request(method, self.url + path, json=json, headers=headers, **kw) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    def as_other(self) -> Api:
        return Api(self.session, self.url)


@contextlib.asynccontextmanager
async def serve_in_process(config: Any) -> AsyncIterator[tuple[Any, str]]:
    """The daemon's services for `config`, with the API on real loopback HTTP, in this process:
    yields (services, base URL)."""
    from hvd.api.app import build_app
    from hvd.daemon import running_services

    async with running_services(config) as services:
        server = TestServer(build_app(services), host="127.0.0.1", port=config.api.port)
        await server.start_server()
        try:
            yield services, f"http://127.0.0.1:{config.api.port}"
        finally:
            await server.close()


@pytest.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    """The API in-process (real HTTP on loopback, real SQLite), fake compute driver."""
    from hvd.config import load_config

    async with serve_in_process(load_config(write_config(tmp_path / "hvd", free_port()))) as served:
        yield served


@pytest.fixture
async def admin_api(api_server: tuple[Any, str]) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        api = Api(session, api_server[1])
        await api.login("admin", "admin-secret", "admin")
        yield api
