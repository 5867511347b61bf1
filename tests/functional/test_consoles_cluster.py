"""Remote consoles in a cloud of three `hvd daemon` processes (fake driver): asked for through any
host, the console URL points at the host that runs the server, its token works only there, a
screenshot asked anywhere comes from the owner, and a logout on another host closes the console."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from hvd.drivers.remote_console import png_size
from tests.functional.test_cluster import IDS, Cluster
from tests.functional.test_cluster_compute import create, upload


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("console-cloud"))
    try:
        for node in IDS:
            c.start(node)
        c.wait_ready(IDS)
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


async def test_console_asked_anywhere_opens_on_the_owner(cloud: Cluster, tmp_path: Path) -> None:
    r = cloud.call("node1", "POST", "/v1/flavors", {"name": "c.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    assert r.status_code == 201, r.text
    image = upload(cloud, "node1", "conimg", tmp_path)
    sid = create(cloud, "node1", "far-console", image["id"], host="node2")["id"]

    r = cloud.call("node3", "POST", f"/v1/servers/{sid}/remote-console", {"protocol": "serial"})
    assert r.status_code == 200, r.text
    url = r.json()["remote_console"]["url"]
    owner = cloud.url("node2").replace("http://", "ws://")
    assert url.startswith(f"{owner}/v1/console/serial?token="), url
    query = url.split("?", 1)[1]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # tokens live on their host only
            await http.ws_connect(cloud.url("node3").replace("http://", "ws://") + "/v1/console/serial?" + query)
        assert refused.value.status == 401
        async with http.ws_connect(url) as ws:
            await ws.send_bytes(b"echo routed\r")
            seen = b""
            while b"\r\nrouted\r\n" not in seen:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                seen += msg.data

    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/remote-console", {"protocol": "vnc"})
    assert r.status_code == 200 and r.json()["remote_console"]["url"].startswith(f"{owner}/v1/console/vnc?"), r.text
    async with aiohttp.ClientSession() as http, http.get(
            cloud.url("node3") + f"/v1/servers/{sid}/screenshot",
            headers={"Authorization": f"Bearer {cloud.tokens['node3']}"}) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        assert png_size(await resp.read()) == (640, 480)

    # a logout on another host closes the console its token opened (identity is replicated: node2
    # sees the revocation in its catalog, within its periodic check)
    creds = {"username": "admin", "password": "admin-secret", "project": "admin"}
    r = requests.post(cloud.url("node1") + "/v1/auth/tokens", json=creds, timeout=30)
    assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    r = requests.post(cloud.url("node3") + f"/v1/servers/{sid}/remote-console", json={"protocol": "serial"},
                      headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    async with aiohttp.ClientSession() as http, http.ws_connect(r.json()["remote_console"]["url"]) as ws:
        assert requests.delete(cloud.url("node1") + "/v1/auth/token", headers=auth, timeout=30).status_code == 204
        async with asyncio.timeout(60):
            while (msg := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                pass
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4401,
                                                   "the token that opened this console is no longer valid"), msg
    assert cloud.call("node1", "DELETE", f"/v1/servers/{sid}?wait=true").status_code == 204
