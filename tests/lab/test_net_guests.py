"""Real guests on hvd networks: two test guests (libvirt, TCG) created through the API get DHCP
leases from dnsmasq, ping each other, are cut apart and joined again by security-group changes
on the running guests, reach an "outside" namespace through the router's SNAT, and are reached
from it through a floating IP until it is disassociated.

The bridges live in the root namespace (libvirtd there creates the taps) but carry no address;
every lab address is inside namespaces (qdhcp-/qrouter- with the lab prefix, the outside one)
or guests, and the root namespace has an `unreachable` guard route for the lab range.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, free_port, serve_in_process, write_config
from tests.functional.compute_helpers import make_flavor, upload_image
from tests.guest.helpers import guest_image_path, make_searchable_dir

from .conftest import Lab

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

LAN, LAN_A, LAN_B = "10.213.40.0/24", "10.213.40.10", "10.213.40.11"
EXT, UPSTREAM = "10.213.41.0/24", "10.213.41.1"

PING_LOOP = """#!/bin/sh
n=0
while :; do
  n=$((n + 1))
  for t in {targets}; do
    if ping -c 1 -W 1 "$t" >/dev/null 2>&1; then r=ok; else r=fail; fi
    echo "HVD-PING $t $r $n"
  done
  sleep 0.5
done
"""


@pytest.fixture
async def env(lab: Lab) -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    outside = lab.netns("outside")
    ext_nic = f"hvdt{os.getpid() % 100000}x{lab.prefix.split('-')[2]}"[:15]
    subprocess.run(["ip", "link", "add", ext_nic, "type", "veth", "peer", "name", "eth0", "netns", outside],
                   check=True)
    lab.exec(outside, "ip", "addr", "add", f"{UPSTREAM}/24", "dev", "eth0", check=True)
    lab.exec(outside, "ip", "link", "set", "eth0", "up", check=True)
    base = make_searchable_dir(prefix="hvdtest-net-")
    extra = f"""sync_power_state_interval_s = 5
[network]
backend = "linux"
netns_prefix = "{lab.prefix}"
dhcp_dir = "{lab.workdir / 'dhcp'}"
claim_all_devices = false
flat_networks = ["ext"]
physical_interface_mappings = {{ ext = "{ext_nic}" }}
"""
    config = load_config(write_config(base, free_port(), driver="libvirt", extra=extra))
    network_ids: list[str] = []
    try:
        async with serve_in_process(config) as (services, url), aiohttp.ClientSession() as session:
            api = Api(session, url)
            await api.login("admin", "admin-secret", "admin")
            await upload_image(api, guest_image_path("main"), name="guest", visibility="public")
            await make_flavor(api, name="tiny", vcpus=1, ram_mb=128, disk_gb=1)
            try:
                yield {"api": api, "lab": lab, "outside": outside, "network_ids": network_ids,
                       "net": services.extra["network"]}
            finally:
                await _teardown(api)
    finally:
        subprocess.run(["ip", "link", "del", ext_nic], check=False, capture_output=True)
        for nid in network_ids:  # bridges left by a failed teardown
            subprocess.run(["ip", "link", "del", f"brq{nid[:11]}"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def _teardown(api: Api) -> None:
    _, servers = await api.call("GET", "/v1/servers?all_projects=true")
    for s in servers.get("servers", []):
        await api.call("DELETE", f"/v1/servers/{s['id']}?wait=true")
    _, fips = await api.call("GET", "/v1/floating-ips")
    for f in fips.get("floating_ips", []):
        await api.call("DELETE", f"/v1/floating-ips/{f['id']}")
    _, routers = await api.call("GET", "/v1/routers")
    for r in routers.get("routers", []):
        for iface in r["interfaces"]:
            await api.call("POST", f"/v1/routers/{r['id']}/remove-interface", {"port": iface["port_id"]})
        await api.call("DELETE", f"/v1/routers/{r['id']}")
    _, ports = await api.call("GET", "/v1/ports")
    for p in ports.get("ports", []):
        if not p["device_owner"].startswith("network:"):
            await api.call("DELETE", f"/v1/ports/{p['id']}")
    _, nets = await api.call("GET", "/v1/networks")
    for n in nets.get("networks", []):
        await api.call("DELETE", f"/v1/networks/{n['id']}")


async def ok(api: Api, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, out = await api.call(method, path, body)
    assert got == status, (method, path, got, out)
    return out


async def console(api: Api, sid: str) -> str:
    return str((await ok(api, "GET", f"/v1/servers/{sid}/console-log"))["output"])


async def wait_pings(api: Api, sid: str, target: str, want: str, after: int, timeout: float = 40.0) -> int:
    """Wait until the guest's last two pings of `target` printed after character `after` are `want`;
    returns the console length then (the next phase's `after`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await console(api, sid)
        results = re.findall(rf"HVD-PING {re.escape(target)} (ok|fail) \d+", text[after:])
        if len(results) >= 2 and results[-2:] == [want, want]:
            return len(text)
        if loop.time() > deadline:
            raise AssertionError(f"{sid}: pings of {target} never became {want}: {results[-6:]}\n{text[-1500:]}")
        await asyncio.sleep(0.5)


async def test_two_guests_dhcp_security_groups_snat_and_floating_ip(env: dict[str, Any]) -> None:
    api: Api = env["api"]
    lab: Lab = env["lab"]
    lan = await ok(api, "POST", "/v1/networks", {"name": "lan"}, 201)
    env["network_ids"].append(lan["id"])
    subnet = await ok(api, "POST", "/v1/subnets", {"network": "lan", "cidr": LAN}, 201)
    ext = await ok(api, "POST", "/v1/networks", {"name": "public", "network_type": "flat",
                                                  "physical_network": "ext", "external": True}, 201)
    env["network_ids"].append(ext["id"])
    await ok(api, "POST", "/v1/subnets", {"network": "public", "cidr": EXT, "enable_dhcp": False}, 201)
    router = await ok(api, "POST", "/v1/routers", {"name": "edge", "external_gateway": {"network": "public"}}, 201)
    await ok(api, "POST", f"/v1/routers/{router['id']}/add-interface", {"subnet": subnet["id"]})
    other = await ok(api, "POST", "/v1/security-groups", {"name": "other"}, 201)

    loop = asyncio.get_running_loop()
    started = loop.time()
    servers = {}
    for name, ip, peer in (("a", LAN_A, LAN_B), ("b", LAN_B, LAN_A)):
        servers[name] = await ok(api, "POST", "/v1/servers", {
            "name": f"net-{name}", "flavor": "tiny", "image": "guest",
            "networks": [{"network": lan["id"], "fixed_ip": ip}],
            "user_data": PING_LOOP.format(targets=f"{peer} {UPSTREAM}")}, 202)
    a, b = servers["a"]["id"], servers["b"]["id"]
    for sid, ip in ((a, LAN_A), (b, LAN_B)):
        deadline = loop.time() + 60
        while not re.search(rf"HVD-GUEST lease eth0 {re.escape(ip)}/", await console(api, sid)):
            assert loop.time() < deadline, await console(api, sid)
            await asyncio.sleep(0.5)
    booted = loop.time() - started
    text = await console(api, a)
    assert f"lease eth0 {LAN_A}/24 gw=10.213.40.1" in text, text[-2000:]

    # same (default) group: they reach each other; the router's SNAT reaches the outside
    mark_a = await wait_pings(api, a, LAN_B, "ok", 0)
    mark_b = await wait_pings(api, b, LAN_A, "ok", 0)
    await wait_pings(api, a, UPSTREAM, "ok", 0)
    shown = await ok(api, "GET", f"/v1/servers/{a}")
    assert [e["addr"] for e in shown["addresses"]["lan"]] == [LAN_A]

    # B moves to a group without ingress rules: ICMP from the other group is dropped both ways
    port_b = (await ok(api, "GET", f"/v1/ports?device_id={b}"))["ports"][0]
    await ok(api, "PATCH", f"/v1/ports/{port_b['id']}", {"security_groups": [other["id"]]})
    mark_a = await wait_pings(api, a, LAN_B, "fail", mark_a)
    mark_b = await wait_pings(api, b, LAN_A, "fail", mark_b)

    # allowing ICMP into the default group lets B reach A (not the other way) at once
    rule = await ok(api, "POST", "/v1/security-group-rules", {"security_group": "default", "direction": "ingress",
                                                               "protocol": "icmp"}, 201)
    mark_b = await wait_pings(api, b, LAN_A, "ok", mark_b)
    mark_a = await wait_pings(api, a, LAN_B, "fail", mark_a)

    # a floating IP lets the outside reach A; disassociating it stops that
    port_a = (await ok(api, "GET", f"/v1/ports?device_id={a}"))["ports"][0]
    fip = await ok(api, "POST", "/v1/floating-ips", {"floating_network": "public", "port": port_a["id"]}, 201)
    address = fip["floating_ip_address"]
    assert lab.ping(env["outside"], address), "outside -> floating IP -> guest A"
    assert any(e["type"] == "floating" and e["addr"] == address
               for e in (await ok(api, "GET", f"/v1/servers/{a}"))["addresses"]["lan"])
    await ok(api, "POST", f"/v1/floating-ips/{fip['id']}/disassociate", {})
    assert lab.blocked(env["outside"], address), "disassociated floating IP still answers"
    await wait_pings(api, a, UPSTREAM, "ok", mark_a)  # SNAT without the floating IP

    # removing the rule blocks B -> A again, on the running guests
    await ok(api, "DELETE", f"/v1/security-group-rules/{rule['id']}", status=204)
    await wait_pings(api, b, LAN_A, "fail", mark_b)
    total = loop.time() - started
    print(f"\nguests booted and leased in {booted:.1f} s; whole scenario {total:.1f} s")
