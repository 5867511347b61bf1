"""Every single-host lifecycle operation on a REAL guest: libvirt qemu:///system (TCG), the test
guest image, the hvd API over real HTTP. Each step is checked from the guest's side (serial
console markers) where the guest can tell."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest

from tests.conftest import Api, free_port, serve_in_process, write_config
from tests.functional.compute_helpers import action, make_flavor, upload_image
from tests.guest.helpers import guest_image_path, make_searchable_dir

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

# the user-data script proves data survives snapshot/shelve: it keeps a mark in the boot fs
MARK_SCRIPT = """#!/bin/sh
mkdir -p /mnt/b
if mount -t vfat /dev/vda /mnt/b 2>/dev/null; then
  if [ -f /mnt/b/hvdmark ]; then echo "HVD-MARK found $(cat /mnt/b/hvdmark)"; else
    echo kept > /mnt/b/hvdmark; sync; echo "HVD-MARK written"; fi
  umount /mnt/b
else
  echo "HVD-MARK nomount"
fi
"""


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    base = make_searchable_dir(prefix="hvdtest-lab-")
    cfg = write_config(
        base,
        free_port(),
        driver="libvirt",
        extra="reboot_timeout_s = 20\nshutdown_timeout_s = 20\nsync_power_state_interval_s = 2",
    )
    config = load_config(cfg)
    try:
        async with serve_in_process(config) as (services, url), aiohttp.ClientSession() as session:
            api = Api(session, url)
            await api.login("admin", "admin-secret", "admin")
            main = await upload_image(api, guest_image_path("main"), name="guest", visibility="public")
            alt = await upload_image(api, guest_image_path("alt"), name="guest-alt", visibility="public")
            await make_flavor(api, name="tiny", vcpus=1, ram_mb=128, disk_gb=1)
            await make_flavor(api, name="small", vcpus=2, ram_mb=192, disk_gb=1)
            try:
                yield {"api": api, "main": main, "alt": alt, "base": base, "services": services}
            finally:
                _, servers = await api.call("GET", "/v1/servers?all_projects=true")
                for s in servers.get("servers", []):
                    await api.call("DELETE", f"/v1/servers/{s['id']}?wait=true")
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def console(api: Api, sid: str) -> str:
    status, body = await api.call("GET", f"/v1/servers/{sid}/console-log")
    assert status == 200, body
    return str(body["output"])


async def wait_console(api: Api, sid: str, pattern: str, timeout: float = 60.0, after: int = 0) -> str:
    """Wait until the console (from character `after` on) matches `pattern`; return the match."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await console(api, sid)
        found = re.search(pattern, text[after:])
        if found:
            return found.group(0)
        if loop.time() > deadline:
            raise AssertionError(f"console of {sid} never matched {pattern!r}:\n{text[-2000:]}")
        await asyncio.sleep(0.25)


def heartbeats(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"HVD-GUEST heartbeat (\d+)", text)]


def domain_state(uuid: str) -> int | None:
    conn = libvirt.open("qemu:///system")
    try:
        return int(conn.lookupByUUIDString(uuid).state()[0])
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def test_full_lifecycle_on_a_real_guest(lab: dict[str, Any]) -> None:
    api: Api = lab["api"]
    status, server = await api.call(
        "POST", "/v1/servers?wait=true", {"name": "life", "flavor": "tiny", "image": "guest", "user_data": MARK_SCRIPT}
    )
    assert status == 202 and server["status"] == "ACTIVE", server
    sid = server["id"]
    instance_dir = Path(lab["base"]) / "instances" / sid
    assert (instance_dir / "libvirt.xml").is_file() and (instance_dir / "disk").is_file()
    assert domain_state(sid) == libvirt.VIR_DOMAIN_RUNNING
    await wait_console(api, sid, r"HVD-GUEST ready")
    text = await console(api, sid)
    assert f"instance-id={sid}" in text and "hostname=life" in text  # config drive read by the guest
    await wait_console(api, sid, r"HVD-MARK written")

    # stop: the guest sees the ACPI button and powers off cleanly
    status, body = await action(api, sid, "stop")
    assert body["status"] == "SHUTOFF" and body["power_state"] == 4
    assert "HVD-GUEST poweroff" in await console(api, sid)
    assert domain_state(sid) == libvirt.VIR_DOMAIN_SHUTOFF

    # start regenerates the XML and boots again
    status, body = await action(api, sid, "start")
    assert body["status"] == "ACTIVE"
    await wait_console(api, sid, r"HVD-GUEST ready")

    # soft reboot: a clean shutdown and a fresh boot (heartbeats count from 1 again)
    await wait_console(api, sid, r"heartbeat 3\b")
    status, body = await action(api, sid, "reboot", {"type": "soft"})
    assert body["status"] == "ACTIVE", body
    await wait_console(api, sid, r"HVD-GUEST ready")
    assert min(heartbeats(await console(api, sid)) or [1]) == 1

    # pause: heartbeats stop; unpause: they go on
    await wait_console(api, sid, r"heartbeat 2\b")
    status, body = await action(api, sid, "pause")
    assert body["status"] == "PAUSED" and domain_state(sid) == libvirt.VIR_DOMAIN_PAUSED
    text = await console(api, sid)
    assert heartbeats(text), text[-3000:]
    frozen = max(heartbeats(text))
    await asyncio.sleep(2.5)
    assert max(heartbeats(await console(api, sid))) == frozen
    await action(api, sid, "unpause")
    await wait_console(api, sid, rf"heartbeat {frozen + 2}\b", timeout=20)

    # suspend saves the state to disk; resume continues the same boot: QEMU restarts (the
    # console file starts afresh) but the guest's heartbeat counter goes on where it was
    before = max(heartbeats(await console(api, sid)))
    status, body = await action(api, sid, "suspend")
    assert body["status"] == "SUSPENDED", body
    status, body = await action(api, sid, "resume")
    assert body["status"] == "ACTIVE", body
    await wait_console(api, sid, rf"heartbeat {before + 2}\b", timeout=20)
    assert "HVD-GUEST boot" not in await console(api, sid)

    # rescue: the rescue disk is vda and the original disk is vdb
    status, body = await action(api, sid, "rescue")
    assert body["status"] == "RESCUE", body
    disks = await wait_console(api, sid, r"HVD-GUEST disks=[a-z ]+")
    assert disks.split("=")[1].split()[:2] == ["vda", "vdb"]
    status, body = await action(api, sid, "unrescue")
    assert body["status"] == "ACTIVE"
    await wait_console(api, sid, r"HVD-GUEST ready")

    # snapshot → an image that boots and keeps the data written before it
    status, snap = await action(api, sid, "snapshot", {"name": "life-snap"})
    assert status == 202, snap
    _, image = await api.call("GET", f"/v1/images/{snap['image_id']}")
    assert image["status"] == "active" and image["properties"]["image_type"] == "snapshot"
    status, from_snap = await api.call(
        "POST",
        "/v1/servers?wait=true",
        {"name": "from-snap", "flavor": "tiny", "image": snap["image_id"], "user_data": MARK_SCRIPT},
    )
    assert from_snap["status"] == "ACTIVE", from_snap
    await wait_console(api, from_snap["id"], r"HVD-MARK found kept")
    await api.call("DELETE", f"/v1/servers/{from_snap['id']}?wait=true")

    # rebuild boots the other image
    status, body = await action(api, sid, "rebuild", {"image": "guest-alt"})
    assert body["status"] == "ACTIVE" and body["image"]["id"] == lab["alt"]["id"], body
    await wait_console(api, sid, r"HVD-GUEST boot variant=alt")

    # resize shows the new RAM and vCPUs inside the guest; revert restores them
    status, body = await action(api, sid, "resize", {"flavor": "small"})
    assert body.get("status") == "VERIFY_RESIZE", body
    assert (Path(lab["base"]) / "instances" / f"{sid}_resize").is_dir()
    line = await wait_console(api, sid, r"HVD-GUEST mem_kb=\d+ cpus=\d+")
    assert line.endswith("cpus=2") and int(re.findall(r"mem_kb=(\d+)", line)[0]) > 140_000
    status, body = await action(api, sid, "confirm-resize")
    assert body["status"] == "ACTIVE" and body["flavor"]["name"] == "small"
    assert not (Path(lab["base"]) / "instances" / f"{sid}_resize").exists()

    # shelve frees the host; unshelve boots the shelved image with its data
    await wait_console(api, sid, r"HVD-GUEST ready")
    status, body = await action(api, sid, "shelve")
    assert body["status"] == "SHELVED_OFFLOADED" and body["host"] is None, body
    assert domain_state(sid) is None and not instance_dir.exists()
    _, host = await api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 0
    status, body = await action(api, sid, "unshelve")
    assert body["status"] == "ACTIVE", body
    await wait_console(api, sid, r"HVD-GUEST ready")

    # delete removes domain, files and claims
    status, _ = await api.call("DELETE", f"/v1/servers/{sid}?wait=true")
    assert status == 204
    assert domain_state(sid) is None and not instance_dir.exists()
    _, host = await api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 0 and host["instances"] == 0


async def test_hard_reboot_and_guest_initiated_poweroff(lab: dict[str, Any]) -> None:
    api: Api = lab["api"]
    _, server = await api.call("POST", "/v1/servers?wait=true", {"name": "hr", "flavor": "tiny", "image": "guest"})
    sid = server["id"]
    await wait_console(api, sid, r"HVD-GUEST ready")
    _, body = await action(api, sid, "reboot", {"type": "hard"})
    assert body["status"] == "ACTIVE"
    await wait_console(api, sid, r"HVD-GUEST ready")
    # the guest powers itself off: the power sync records it as stopped
    conn = libvirt.open("qemu:///system")
    try:
        conn.lookupByUUIDString(sid).shutdown()
    finally:
        conn.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        _, body = await api.call("GET", f"/v1/servers/{sid}")
        if body["status"] == "SHUTOFF":
            break
        assert loop.time() < deadline, body
        await asyncio.sleep(0.3)
    assert body["power_state"] == 4


async def test_concurrent_creates_of_an_uncached_image_fetch_once(lab: dict[str, Any]) -> None:
    api: Api = lab["api"]
    cache = lab["services"].extra["compute"].manager.cache
    before = cache.fetches
    status, body = await api.call(
        "POST",
        "/v1/servers",
        {"name": "many", "flavor": "tiny", "image": "guest-alt", "min_count": 10, "config_drive": False},
    )
    assert status == 202, body
    ids = [s["id"] for s in body["servers"]]
    assert len(ids) == 10
    for sid in ids:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:
            _, s = await api.call("GET", f"/v1/servers/{sid}")
            if s["task_state"] is None:
                break
            assert loop.time() < deadline
            await asyncio.sleep(0.2)
        assert s["status"] == "ACTIVE", s
    assert cache.fetches - before == 1
    for sid in ids:
        status, _ = await api.call("DELETE", f"/v1/servers/{sid}?wait=true")
        assert status == 204
        assert domain_state(sid) is None
