"""The metadata listeners against real namespaces (no VMs; namespaces stand in for guests):
a guest reads its own document over HTTP, an address with no instance gets 404, a restarted
daemon (a new MetadataServer) serves again, a qdhcp- namespace re-created by a converge gets a
new listener, and the listener of a removed network closes before its namespace goes."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from typing import Any

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.cmd_network import PortUpdate
from hvd.net.apply import HostNetwork
from hvd.net.desired import host_state
from hvd.net.metadata import MetadataServer, metadata_endpoints
from hvd.net.model import HostNetworkState, dhcp_namespace, tap_name
from hvd.net.plan import desired_layout
from tests.unit.test_catalog_network import T0, Catalog

from .conftest import Lab

pytestmark = pytest.mark.netns

HOST = "h1"  # the catalog helper binds DHCP ports to h1
NET = "md61"


class _Reader:
    """`Catalog.read` over an in-memory catalog state."""

    def __init__(self, cat: Catalog) -> None:
        self.conn = cat.state.conn

    async def read(self, fn: Any, *args: Any) -> Any:
        return fn(self.conn, *args)


def _catalog() -> Catalog:
    cat = Catalog()
    cat.network(NET, "10.213.61.0/24")
    cat.port("pa", NET, "10.213.61.10")
    cat.port("px", NET, "10.213.61.11")  # a port with no instance
    for pid in ("pa", "px"):
        cat(PortUpdate(id=pid, device_id="inst-a" if pid == "pa" else "", device_owner="compute:nova", host=HOST))
    cat.state.conn.execute(
        "INSERT INTO instances (id, seq, name, project_id, user_id, host, flavor_id, flavor, image_id, user_data,"
        " metadata, config_drive, vm_state, power_state, created_at, updated_at) VALUES"
        " ('inst-a',1,'alpha','p1','u1',?,'f1','{}','img','hello',\'{}\',1,'active',1,?,?)", (HOST, T0, T0))
    return cat


# busybox-static's wget crashes in glibc's NSS on this host; Python, with proxies ignored, does not
FETCH = """
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open("http://169.254.169.254" + sys.argv[1], timeout=5) as resp:
        print(resp.status, resp.read().decode(), end="")
except urllib.error.HTTPError as exc:
    print(exc.code, end="")
"""


async def _fetch(lab: Lab, ns: str, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET `path` from inside `ns` (status 0: no answer); in a thread, as
    the server answers from this test's event loop."""
    got = await asyncio.to_thread(lab.exec, ns, sys.executable, "-c", FETCH, path)
    status, _, body = got.stdout.partition(" ")
    return (int(status), body) if got.returncode == 0 and status else (0, "")


async def test_listeners_follow_the_namespace_and_a_restart(lab: Lab) -> None:
    cat = _catalog()
    host = lab.netns("host")
    state = replace(host_state(cat.state.conn, HOST, {}), netns_prefix=lab.prefix,
                    dhcp_dir=str(lab.workdir / "dhcp"), metadata=True)
    ports = {p.id: p for p in state.ports}
    dhcp_ip = next(p.fixed_ips[0].ip for p in state.ports if p.device_owner == "network:dhcp")
    guests = {pid: lab.guest(host, tap_name(pid), ports[pid].mac, f"g{pid}") for pid in ("pa", "px")}
    net = HostNetwork(host, dhcp_dir=state.dhcp_dir, netns_prefix=lab.prefix)
    await net.converge(state)
    for ns in guests.values():
        assert lab.dhcp_client(ns).returncode == 0
        lab.exec(ns, "ip", "route", "add", "169.254.169.254/32", "via", dhcp_ip, check=True)

    reader = _Reader(cat)
    endpoints = metadata_endpoints(state, desired_layout(state))
    server = MetadataServer(reader, "nova")  # type: ignore[arg-type]
    await server.sync_after_apply(endpoints)
    code, body = await _fetch(lab, guests["pa"], "/openstack/latest/meta_data.json")
    assert code == 200 and json.loads(body)["uuid"] == "inst-a"
    assert await _fetch(lab, guests["pa"], "/latest/user-data") == (200, "hello")
    assert (await _fetch(lab, guests["pa"], "/openstack/latest/nothing"))[0] == 404
    assert (await _fetch(lab, guests["px"], "/openstack/latest/meta_data.json"))[0] == 404, "no instance there"

    # a restarted daemon opens its listeners again (the old process's died with it)
    await server.close()
    assert (await _fetch(lab, guests["pa"], "/latest/meta-data/instance-id"))[0] == 0
    server = MetadataServer(reader, "nova")  # type: ignore[arg-type]
    await server.sync_after_apply(endpoints)
    assert await _fetch(lab, guests["pa"], "/latest/meta-data/instance-id") == (200, "i-00000001")

    # the namespace vanishes and a converge re-creates it: the listener follows into the new one
    netns = dhcp_namespace(NET, lab.prefix)
    lab.exec(host, "ip", "netns", "del", netns, check=True)
    await server.sync_before_apply(endpoints)
    await net.converge(state)
    await server.sync_after_apply(endpoints)
    assert await _fetch(lab, guests["pa"], "/latest/meta-data/instance-id") == (200, "i-00000001")

    # the network goes: its listener closes first (it would keep the deleted namespace alive)
    empty = HostNetworkState(host=HOST, netns_prefix=lab.prefix, dhcp_dir=state.dhcp_dir, metadata=True)
    await server.sync_before_apply({})
    assert server.serving == {}
    await net.converge(empty)
    dhcp_tap = tap_name(next(p.id for p in state.ports if p.device_owner == "network:dhcp"))
    assert dhcp_tap not in lab.exec(host, "ip", "-o", "link").stdout, "the DHCP veth went with its namespace"
    assert netns not in lab.exec(host, "ip", "netns", "list").stdout
