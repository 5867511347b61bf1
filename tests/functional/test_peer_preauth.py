"""Peer routes refuse an anonymous request before reading its body: a request whose signature
headers are stale (or missing) and that announces 16 MiB gets its 401 at once, without the server
waiting for (and buffering) the body."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hvd.cluster.http_transport import PROPOSE_PATH
from hvd.cluster.keys import peer_key
from hvd.cluster.peer_auth import sign_headers
from hvd.config import load_config
from tests.conftest import free_port, serve_in_process, write_config

KEY = "test-cluster-key-0123456789"


async def _status_without_body(port: int, headers: dict[str, str]) -> int:
    """Send only the headers of a 16 MiB POST; the status line the server answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in {
            **headers, "Host": "127.0.0.1", "Content-Length": str(16 * 1024 * 1024 - 1),
            "Content-Type": "application/octet-stream"}.items())
        writer.write(f"POST {PROPOSE_PATH} HTTP/1.1\r\n{head}\r\n".encode() + b"x" * 1024)
        await writer.drain()
        async with asyncio.timeout(10):  # before: the server waited for the 16 MiB that never came
            line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize("when", ["stale", "unsigned"])
async def test_an_anonymous_big_peer_body_is_refused_before_it_is_read(tmp_path: Path, when: str) -> None:
    port = free_port()
    config = load_config(write_config(tmp_path / "hvd", port, extra=f'[cluster]\ncluster_key = "{KEY}"\n'))
    async with serve_in_process(config):
        headers = sign_headers(peer_key(KEY.encode()), "intruder", "POST", PROPOSE_PATH, b"", now=time.time() - 3600)
        assert await _status_without_body(port, dict(headers) if when == "stale" else {}) == 401
