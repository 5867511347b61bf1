"""The metadata service on real guests (libvirt, TCG): two test guests on one network get a
DHCP route to 169.254.169.254, fetch their OpenStack and EC2 documents over HTTP from the
listener in the network's qdhcp- namespace and print them on their consoles; guest A, without
that route, reaches it through its router (the listener on the router's leg) too.

Each guest reads its own data, the same as on its config drive; guest B, posing as guest A
(A's address on B's port, with a static neighbour entry so the packets really leave), gets
nothing: anti-spoofing drops them. Deleting the network closes its listener. Lab safety as in
test_net_guests: every lab address is inside the guests or the test's qdhcp- namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Api, free_port, serve_in_process, write_config
from tests.functional.compute_helpers import make_flavor, upload_image
from tests.guest.helpers import guest_image_path, make_searchable_dir

from .conftest import Lab
from .test_net_guests import _teardown, console, ok

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

LAN, GATEWAY, IP_A, IP_B = "10.213.50.0/24", "10.213.50.1", "10.213.50.10", "10.213.50.11"

PROBE = """#!/bin/sh
# hvd-metadata-probe {name}
md=http://169.254.169.254
get() {{ timeout 8 wget -q -O - "$md$1" 2>/dev/null; }}
n=0
until get /openstack/latest/meta_data.json >/tmp/md; do
  n=$((n + 1)); [ $n -ge 120 ] && break; sleep 1
done
echo "HVD-MD meta $(tr -d '\\n' </tmp/md)"
echo "HVD-MD drive $(tr -d '\\n' </mnt/config/openstack/latest/meta_data.json)"
get /openstack/latest/user_data >/tmp/ud
echo "HVD-MD user_data $(sha256sum </tmp/ud | cut -c1-64) $(sed -n 2p /tmp/ud)"
echo "HVD-MD ec2 $(get /latest/meta-data/instance-id) $(get /latest/meta-data/local-ipv4)"
{more}echo "HVD-MD done"
"""

# A drops its DHCP route to the metadata address: the default route leads to the router.
VIA_ROUTER = """ip route del 169.254.169.254/32
echo "HVD-MD router $(get /latest/meta-data/instance-id) $(ip route get 169.254.169.254 | head -n 1)"
"""

# B takes A's address; the neighbour entry for the DHCP port is pinned so the requests leave
# B with A's source address (rather than stopping at an ARP that anti-spoofing drops).
SPOOF = """mac=$(awk '$1 == "{dhcp}" {{print $4}}' /proc/net/arp)
arp -s {dhcp} "$mac"
ip addr flush dev eth0
ip addr add {victim}/24 dev eth0
ip route replace 169.254.169.254/32 via {dhcp} dev eth0
if get /openstack/latest/meta_data.json >/tmp/spoof; then
  echo "HVD-MD spoof got $(tr -d '\\n' </tmp/spoof)"
else
  echo "HVD-MD spoof nothing mac=$mac"
fi
ip addr flush dev eth0
ip addr add {own}/24 dev eth0
ip route replace 169.254.169.254/32 via {dhcp} dev eth0
echo "HVD-MD again $(get /latest/meta-data/instance-id)"
"""


@pytest.fixture
async def env(lab: Lab) -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    base = make_searchable_dir(prefix="hvdtest-md-")
    extra = f"""[network]
backend = "linux"
netns_prefix = "{lab.prefix}"
dhcp_dir = "{lab.workdir / 'dhcp'}"
claim_all_devices = false
"""
    config = load_config(write_config(base, free_port(), driver="libvirt", extra=extra))
    assert config.network.metadata_enabled, "the metadata service is on by default"
    async with serve_in_process(config) as (services, url):
        import aiohttp

        async with aiohttp.ClientSession() as session:
            api = Api(session, url)
            await api.login("admin", "admin-secret", "admin")
            await upload_image(api, guest_image_path("main"), name="guest", visibility="public")
            await make_flavor(api, name="tiny", vcpus=1, ram_mb=128, disk_gb=1)
            try:
                yield {"api": api, "lab": lab, "net": services.extra["network"]}
            finally:
                await _teardown(api)


async def _wait_line(api: Api, sid: str, pattern: str, timeout: float = 150.0) -> re.Match[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await console(api, sid)
        found = re.search(pattern, text)
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"{sid}: no {pattern!r} on the console:\n{text[-2500:]}")
        await asyncio.sleep(1.0)


async def test_guests_read_their_own_metadata_and_a_spoofer_reads_nothing(env: dict[str, Any]) -> None:
    api: Api = env["api"]
    lab: Lab = env["lab"]
    net = await ok(api, "POST", "/v1/networks", {"name": "md"}, 201)
    subnet = await ok(api, "POST", "/v1/subnets", {"network": "md", "cidr": LAN}, 201)
    ports = (await ok(api, "GET", f"/v1/ports?network_id={net['id']}"))["ports"]
    dhcp_ip = next(p["fixed_ips"][0]["ip_address"] for p in ports if p["device_owner"] == "network:dhcp")

    router = await ok(api, "POST", "/v1/routers", {"name": "edge"}, 201)
    await ok(api, "POST", f"/v1/routers/{router['id']}/add-interface", {"subnet": subnet["id"]})

    scripts = {"a": PROBE.format(name="a", more=VIA_ROUTER),
               "b": PROBE.format(name="b", more=SPOOF.format(dhcp=dhcp_ip, victim=IP_A, own=IP_B))}
    servers = {}
    for name, ip in (("a", IP_A), ("b", IP_B)):  # both boot at once
        servers[name] = (await ok(api, "POST", "/v1/servers", {
            "name": f"md-{name}", "flavor": "tiny", "image": "guest",
            "networks": [{"network": net["id"], "fixed_ip": ip}], "user_data": scripts[name]}, 202))["id"]
    a, b = servers["a"], servers["b"]

    await _wait_line(api, a, r"HVD-MD done")
    text_a = await console(api, a)
    assert f"HVD-GUEST route eth0 169.254.169.254/32 via {dhcp_ip}" in text_a, "the DHCP route (option 121)"
    meta_a = json.loads(re.search(r"HVD-MD meta (.*)", text_a).group(1))  # type: ignore[union-attr]
    drive_a = json.loads(re.search(r"HVD-MD drive (.*)", text_a).group(1))  # type: ignore[union-attr]
    assert meta_a["uuid"] == a and meta_a["name"] == "md-a", meta_a
    assert meta_a == drive_a, "the metadata service and the config drive agree"
    sha_a = hashlib.sha256(scripts["a"].encode()).hexdigest()
    assert f"HVD-MD user_data {sha_a} # hvd-metadata-probe a" in text_a
    ec2_a = re.search(rf"HVD-MD ec2 (i-[0-9a-f]{{8}}) {re.escape(IP_A)}\b", text_a)
    assert ec2_a is not None, text_a[-1500:]
    assert f"HVD-MD router {ec2_a.group(1)} 169.254.169.254 via {GATEWAY}" in text_a, "through the router"

    await _wait_line(api, b, r"HVD-MD done")
    text_b = await console(api, b)
    meta_b = json.loads(re.search(r"HVD-MD meta (.*)", text_b).group(1))  # type: ignore[union-attr]
    assert meta_b["uuid"] == b, "B reads B's data, never A's"
    sha_b = hashlib.sha256(scripts["b"].encode()).hexdigest()
    assert f"HVD-MD user_data {sha_b} # hvd-metadata-probe b" in text_b
    ec2_b = re.search(rf"HVD-MD ec2 (i-[0-9a-f]{{8}}) {re.escape(IP_B)}\b", text_b)
    assert ec2_b is not None, text_b[-1500:]
    spoof = re.search(r"HVD-MD spoof (\w+) mac=([0-9a-f:]*)", text_b)
    assert spoof is not None and spoof.group(1) == "nothing", text_b[-2000:]
    assert spoof.group(2), "the spoofing guest knew the DHCP port's MAC, so its requests left it"
    assert a not in text_b, "A's id never reaches B"
    assert f"HVD-MD again {ec2_b.group(1)}" in text_b, "B back on its own address reads its own data again"

    # deleting the network closes its listener (an open socket would keep the namespace alive)
    service = env["net"]
    assert {(ep.network_id, ep.device is None) for ep in service.metadata.serving.values()} == {
        (net["id"], True), (net["id"], False)}, "one listener in the qdhcp- namespace, one on the router leg"
    await _teardown(api)
    await service.sync()
    assert service.metadata.serving == {}
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    assert f"{lab.prefix}qdhcp-{net['id']}" not in listed
