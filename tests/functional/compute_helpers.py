"""Helpers for compute API tests: upload an image, make a flavor, create servers and wait."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import Api


def make_qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


async def upload_image(api: Api, path: Path, name: str = "img", disk_format: str = "qcow2",
                       **fields: Any) -> dict[str, Any]:
    status, image = await api.call("POST", "/v1/images", {"name": name, "disk_format": disk_format, **fields})
    assert status == 201, image
    status, body = await api.call("PUT", f"/v1/images/{image['id']}/file", data=path.read_bytes(),
                                  headers={"Content-Type": "application/octet-stream"})
    assert status == 204, body
    status, image = await api.call("GET", f"/v1/images/{image['id']}")
    assert image["status"] == "active", image
    return image


async def make_flavor(api: Api, name: str = "m1.tiny", vcpus: int = 1, ram_mb: int = 128, disk_gb: int = 1,
                      **fields: Any) -> dict[str, Any]:
    status, flavor = await api.call("POST", "/v1/flavors", {"name": name, "vcpus": vcpus, "ram_mb": ram_mb,
                                                             "disk_gb": disk_gb, **fields})
    assert status == 201, flavor
    return flavor


async def wait_server(api: Api, server_id: str, timeout: float = 60.0, until: str | None = None) -> dict[str, Any]:
    """Poll until the server has no task_state (and, if given, reaches status `until`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, server = await api.call("GET", f"/v1/servers/{server_id}")
        if status == 404:
            return {"status": "DELETED"}
        assert status == 200, server
        if server["task_state"] is None and (until is None or server["status"] == until):
            return server
        if loop.time() > deadline:
            raise AssertionError(f"server {server_id} still {server['status']}/{server['task_state']}")
        await asyncio.sleep(0.05)


async def action(api: Api, server_id: str, name: str, body: dict[str, Any] | None = None,
                 wait: bool = True) -> tuple[int, Any]:
    return await api.call("POST", f"/v1/servers/{server_id}/{name}" + ("?wait=true" if wait else ""), body or {})
