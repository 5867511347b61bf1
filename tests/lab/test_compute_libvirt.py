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


async def mark(api: Api, sid: str) -> int:
    """The console's length now: what the guest prints from here on lies after it (the log is
    kept across QEMU restarts)."""
    return len(await console(api, sid))


def domain_id(uuid: str) -> int:
    """libvirt's id of the running domain: a new one at every start of its QEMU process."""
    conn = libvirt.open("qemu:///system")
    try:
        return int(conn.lookupByUUIDString(uuid).ID())
    finally:
        conn.close()


async def assert_rebooted(api: Api, sid: str, kind: str, booted_at: int) -> int:
    """Reboot `sid` (whose current boot printed from console position `booted_at` on) and prove it
    from inside the guest: a new boot after the old output, the heartbeat counter starting again
    at 1, a new QEMU process (domain id); soft reboot lets the guest shut itself down first (its
    poweroff marker), hard does not. Returns the console position the new boot starts at."""
    # past heartbeat 1 of this boot, so a "heartbeat 1" after the reboot can only be a new boot
    await wait_console(api, sid, r"HVD-GUEST heartbeat 2\b", after=booted_at)
    old_id, start = domain_id(sid), await mark(api, sid)
    status, body = await action(api, sid, "reboot", {"type": kind})
    assert status == 202 and body["status"] == "ACTIVE", body
    await wait_console(api, sid, r"HVD-GUEST boot variant=", after=start)
    await wait_console(api, sid, r"HVD-GUEST heartbeat 1\b", after=start)
    assert domain_id(sid) != old_id
    said = (await console(api, sid))[start:]
    assert ("HVD-GUEST poweroff" in said) == (kind == "soft"), said[-2000:]
    return start


def guest_size(line: str) -> tuple[str, int]:
    """("big", cpus) for a `mem_kb=.. cpus=..` line of a 192 MiB guest, ("small", cpus) for 128 MiB."""
    mem_kb = int(re.findall(r"mem_kb=(\d+)", line)[0])
    return ("big" if mem_kb > 140_000 else "small", int(re.findall(r"cpus=(\d+)", line)[0]))


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
    at = await mark(api, sid)
    status, body = await action(api, sid, "stop")
    assert body["status"] == "SHUTOFF" and body["power_state"] == 4
    assert "HVD-GUEST poweroff" in (await console(api, sid))[at:]
    assert domain_state(sid) == libvirt.VIR_DOMAIN_SHUTOFF

    # start regenerates the XML and boots again; the console keeps the first boot's output
    at = await mark(api, sid)
    status, body = await action(api, sid, "start")
    assert body["status"] == "ACTIVE"
    await wait_console(api, sid, r"HVD-GUEST ready", after=at)
    assert f"instance-id={sid}" in (await console(api, sid))[:at]

    # soft reboot: a clean shutdown and a fresh boot (heartbeats count from 1 again)
    at = await assert_rebooted(api, sid, "soft", booted_at=at)
    await wait_console(api, sid, r"HVD-GUEST ready", after=at)

    # pause: heartbeats stop; unpause: they go on
    await wait_console(api, sid, r"heartbeat 2\b", after=at)
    status, body = await action(api, sid, "pause")
    assert body["status"] == "PAUSED" and domain_state(sid) == libvirt.VIR_DOMAIN_PAUSED
    text = (await console(api, sid))[at:]
    assert heartbeats(text), text[-3000:]
    frozen = heartbeats(text)[-1]
    await asyncio.sleep(2.5)
    assert heartbeats((await console(api, sid))[at:])[-1] == frozen
    await action(api, sid, "unpause")
    await wait_console(api, sid, rf"heartbeat {frozen + 2}\b", timeout=20, after=at)

    # suspend saves the state to disk; resume continues the same boot: QEMU restarts but the
    # guest's heartbeat counter goes on where it was, with no boot in between
    before = heartbeats((await console(api, sid))[at:])[-1]
    saved_at = await mark(api, sid)
    status, body = await action(api, sid, "suspend")
    assert body["status"] == "SUSPENDED", body
    status, body = await action(api, sid, "resume")
    assert body["status"] == "ACTIVE", body
    await wait_console(api, sid, rf"heartbeat {before + 2}\b", timeout=20, after=at)
    assert "HVD-GUEST boot" not in (await console(api, sid))[saved_at:]

    # rescue: the rescue disk is vda and the original disk is vdb
    at = await mark(api, sid)
    status, body = await action(api, sid, "rescue")
    assert body["status"] == "RESCUE", body
    disks = await wait_console(api, sid, r"HVD-GUEST disks=[a-z ]+", after=at)
    assert disks.split("=")[1].split()[:2] == ["vda", "vdb"]
    at = await mark(api, sid)
    status, body = await action(api, sid, "unrescue")
    assert body["status"] == "ACTIVE"
    await wait_console(api, sid, r"HVD-GUEST ready", after=at)

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

    # rebuild boots the other image (new disks and a new console log: the guest writes its mark afresh)
    status, body = await action(api, sid, "rebuild", {"image": "guest-alt"})
    assert body["status"] == "ACTIVE" and body["image"]["id"] == lab["alt"]["id"], body
    await wait_console(api, sid, r"HVD-GUEST boot variant=alt")
    await wait_console(api, sid, r"HVD-MARK written")

    # resize shows the new RAM and vCPUs inside the guest; confirm keeps them. The resized guest
    # starts in a new instance directory (the old one waits as <id>_resize): a new console log.
    resize_dir = Path(lab["base"]) / "instances" / f"{sid}_resize"
    status, body = await action(api, sid, "resize", {"flavor": "small"})
    assert body.get("status") == "VERIFY_RESIZE", body
    assert resize_dir.is_dir()
    assert guest_size(await wait_console(api, sid, r"HVD-GUEST mem_kb=\d+ cpus=\d+")) == ("big", 2)
    status, body = await action(api, sid, "confirm-resize")
    assert body["status"] == "ACTIVE" and body["flavor"]["name"] == "small"
    assert not resize_dir.exists()

    # resize back down, then revert: the guest boots again with the flavor it had (2 vCPUs)
    await wait_console(api, sid, r"HVD-GUEST ready")
    status, body = await action(api, sid, "resize", {"flavor": "tiny"})
    assert body.get("status") == "VERIFY_RESIZE", body
    assert guest_size(await wait_console(api, sid, r"HVD-GUEST mem_kb=\d+ cpus=\d+")) == ("small", 1)
    await wait_console(api, sid, r"HVD-GUEST ready")
    at = len((resize_dir / "console.log").read_bytes())  # revert goes back to that directory and log
    old_id = domain_id(sid)
    status, body = await action(api, sid, "revert-resize")
    assert body["status"] == "ACTIVE" and body["flavor"]["name"] == "small", body
    assert domain_id(sid) != old_id
    assert guest_size(await wait_console(api, sid, r"HVD-GUEST mem_kb=\d+ cpus=\d+", after=at)) == ("big", 2)
    assert not resize_dir.exists()

    # shelve frees the host; unshelve boots the shelved image with its data
    await wait_console(api, sid, r"HVD-GUEST ready", after=at)
    status, body = await action(api, sid, "shelve")
    assert body["status"] == "SHELVED_OFFLOADED" and body["host"] is None, body
    assert domain_state(sid) is None and not instance_dir.exists()
    _, host = await api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 0
    status, body = await action(api, sid, "unshelve")
    assert body["status"] == "ACTIVE", body
    await wait_console(api, sid, r"HVD-GUEST ready")
    await wait_console(api, sid, r"HVD-MARK found kept")  # the new console: the instance dir is new

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
    at = await assert_rebooted(api, sid, "hard", booted_at=0)
    await wait_console(api, sid, r"HVD-GUEST ready", after=at)
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


# user data: report NICs that appear or vanish after boot and ask DHCP for each new one
NIC_WATCH = """#!/bin/sh
seen=" $(cd /sys/class/net && echo eth*) "
while :; do
  now=" "
  for n in /sys/class/net/eth*; do
    [ -e "$n" ] || continue
    i=${n##*/}
    now="$now$i "
    case "$seen" in *" $i "*) continue ;; esac
    echo "HVD-NIC added $i mac=$(cat "$n/address")"
    ip link set "$i" up
    udhcpc -i "$i" -s /etc/udhcpc.script -f -q -n -t 6 -T 1 -A 1 >/dev/null 2>&1 || echo "HVD-NIC nolease $i" &
  done
  for i in $seen; do
    case "$now" in *" $i "*) ;; *) echo "HVD-NIC removed $i" ;; esac
  done
  seen=$now
  sleep 0.5
done
"""


@pytest.fixture
async def netlab(lab_guard: str) -> AsyncIterator[dict[str, Any]]:
    """The API with the linux network backend: DHCP servers in namespaces named with a lab prefix
    (the root namespace has the guard route for the lab range and no lab address)."""
    import os
    import tempfile

    from hvd.config import load_config
    from tests.lab.conftest import Lab

    prefix = f"hvdt-{os.getpid() % 100000}-nic{os.urandom(2).hex()}-"
    workdir = Path(tempfile.mkdtemp(prefix="hvdt-"))
    workdir.chmod(0o755)  # dnsmasq reads its hosts file after dropping privileges
    netns = Lab(prefix, workdir)
    base = make_searchable_dir(prefix="hvdtest-nic-")
    extra = f"""[network]
backend = "linux"
netns_prefix = "{prefix}"
dhcp_dir = "{workdir / 'dhcp'}"
claim_all_devices = false
"""
    config = load_config(write_config(base, free_port(), driver="libvirt", extra=extra))
    network_ids: list[str] = []
    try:
        async with serve_in_process(config) as (_, url), aiohttp.ClientSession() as session:
            api = Api(session, url)
            await api.login("admin", "admin-secret", "admin")
            await upload_image(api, guest_image_path("main"), name="guest", visibility="public")
            await make_flavor(api, name="tiny", vcpus=1, ram_mb=128, disk_gb=1)
            try:
                yield {"api": api, "network_ids": network_ids}
            finally:
                _, servers = await api.call("GET", "/v1/servers?all_projects=true")
                for s in servers.get("servers", []):
                    await api.call("DELETE", f"/v1/servers/{s['id']}?wait=true")
                for nid in network_ids:
                    await api.call("DELETE", f"/v1/networks/{nid}")
    finally:
        import subprocess

        for nid in network_ids:  # bridges left by a failed teardown
            subprocess.run(["ip", "link", "del", f"brq{nid[:11]}"], check=False, capture_output=True)
        netns.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.netns
async def test_interface_hotplug_seen_by_the_guest(netlab: dict[str, Any]) -> None:
    """Attach through the API: the running guest sees a new NIC with the port's MAC and gets a DHCP
    lease on it from the port's network; detach: the NIC vanishes from the guest."""
    api: Api = netlab["api"]
    for name, cidr in (("first", "10.213.52.0/24"), ("second", "10.213.53.0/24")):
        status, net = await api.call("POST", "/v1/networks", {"name": name})
        assert status == 201, net
        netlab["network_ids"].append(net["id"])
        status, sub = await api.call("POST", "/v1/subnets", {"network": name, "cidr": cidr})
        assert status == 201, sub
    status, server = await api.call("POST", "/v1/servers?wait=true", {
        "name": "nics", "flavor": "tiny", "image": "guest", "networks": [{"network": "first"}],
        "user_data": NIC_WATCH})
    assert status == 202 and server["status"] == "ACTIVE", server
    sid = server["id"]
    await wait_console(api, sid, r"HVD-GUEST lease eth0 10\.213\.52\.\d+/", timeout=90)
    await wait_console(api, sid, r"HVD-GUEST heartbeat 1\b")  # the watcher runs by now

    at = await mark(api, sid)
    status, port = await api.call("POST", f"/v1/servers/{sid}/interfaces", {"network": "second"})
    assert status == 201, port
    ip = port["fixed_ips"][0]["ip_address"]
    added = await wait_console(api, sid, r"HVD-NIC added eth\d+ mac=\S+", after=at)
    nic = added.split()[2]
    assert added.endswith(f"mac={port['mac_address']}"), added
    await wait_console(api, sid, rf"HVD-GUEST lease {nic} {re.escape(ip)}/24", after=at, timeout=60)

    at = await mark(api, sid)
    status, _ = await api.call("DELETE", f"/v1/servers/{sid}/interfaces/{port['id']}")
    assert status == 204
    await wait_console(api, sid, rf"HVD-NIC removed {nic}\b", after=at)
    _, listed = await api.call("GET", f"/v1/servers/{sid}/interfaces")
    assert len(listed["interfaces"]) == 1 and listed["interfaces"][0]["id"] != port["id"]
