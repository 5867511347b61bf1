"""Metadata service, pure parts: the documents (the config drive and the service say the same),
the OpenStack and EC2 paths, which instance a request comes from (by network and source
address), the DHCP route to 169.254.169.254 and which listeners to close or open."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import replace

import aiohttp
import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.cmd_compute import InstancePasswordClear, InstancePasswordSet
from hvd.catalog.cmd_network import PortUpdate
from hvd.catalog.commands import Command
from hvd.compute.metadata_content import InstanceFacts, answer, config_drive_files, facts_of
from hvd.errors import Conflict
from hvd.net import metadata
from hvd.net.dhcp import dhcp_paths, dnsmasq_argv
from hvd.net.metadata import (
    Endpoint,
    ListenerState,
    instance_facts,
    metadata_endpoints,
    missing_listeners,
    stale_listeners,
)
from hvd.net.model import (
    DEVICE_OWNER_DHCP,
    FixedIp,
    HostNetworkState,
    HostRoute,
    NetworkSpec,
    PortSpec,
    RouterInterface,
    RouterSpec,
    SubnetSpec,
)
from hvd.net.plan import desired_layout
from hvd.storage.config_drive import NetworkDataNic
from tests.unit.test_catalog_network import T0, Catalog

UUID = "6a0a4c3e-3d0c-4f0e-9f57-3c0f5b8f2a11"


def _facts(**over: object) -> InstanceFacts:
    inst = {"id": UUID, "seq": 42, "name": "Web 1", "project_id": "p1", "availability_zone": None,
            "image_id": "img-1", "flavor": {"name": "m1.tiny"}, "key_name": "mykey", "public_key": "ssh-ed25519 AAAA x",
            "metadata": {"role": "db"}, "user_data": "#!/bin/sh\necho hi\n", **over}
    nic = NetworkDataNic("11111111-2222-3333-4444-555555555555", "fa:16:3e:00:00:01", 1450, "net-a")
    return facts_of(inst, availability_zone="az-host", nics=[nic], fixed_ips=["10.0.0.5"],
                    floating_ips=["192.0.2.7"], security_groups=["default"])


def _get(facts: InstanceFacts, path: str) -> bytes:
    got = answer(facts, path)
    assert got is not None, path
    return got[0]


def test_config_drive_and_metadata_service_serve_the_same_bytes() -> None:
    facts = _facts()
    drive = config_drive_files(facts)
    for name in ("meta_data.json", "network_data.json", "vendor_data.json", "vendor_data2.json", "user_data"):
        assert _get(facts, f"/openstack/latest/{name}") == drive[f"openstack/latest/{name}"], name
        assert _get(facts, f"/openstack/2013-10-17/{name}") == drive[f"openstack/latest/{name}"], name
    meta = json.loads(drive["openstack/latest/meta_data.json"])
    assert (meta["uuid"], meta["hostname"], meta["availability_zone"]) == (UUID, "web-1", "az-host")
    assert meta["public_keys"] == {"mykey": "ssh-ed25519 AAAA x"} and meta["meta"] == {"role": "db"}
    assert json.loads(_get(facts, "/openstack/latest/network_data.json"))["links"][0]["mtu"] == 1450
    assert answer(facts, "/openstack/latest/meta_data.json") == (drive["openstack/latest/meta_data.json"],
                                                                   "application/json")
    # the instance's own zone wins over its host's
    assert json.loads(config_drive_files(_facts(availability_zone="az-1"))["openstack/latest/meta_data.json"])[
        "availability_zone"] == "az-1"


def test_openstack_listings_password_and_unknown_paths() -> None:
    facts = _facts()
    assert b"latest" in _get(facts, "/openstack").split(b"\n")
    listing = _get(facts, "/openstack/latest/").decode().split("\n")
    assert {"meta_data.json", "user_data", "network_data.json", "vendor_data2.json", "password"} <= set(listing)
    assert _get(facts, "/openstack/latest/password") == b""
    for path in ("/openstack/1999-01-01/meta_data.json", "/openstack/latest/nope", "/openstack/latest/../x",
                 "/openstack/latest/meta_data.json/more", "/2009-04-04/nope", "/nope"):
        assert answer(facts, path) is None, path
    no_user_data = _facts(user_data=None)
    assert answer(no_user_data, "/openstack/latest/user_data") is None
    assert answer(no_user_data, "/latest/user-data") is None


def test_ec2_paths() -> None:
    facts = _facts()
    assert _get(facts, "/latest/meta-data/instance-id") == b"i-0000002a"
    assert _get(facts, "/2009-04-04/meta-data/local-ipv4") == b"10.0.0.5"
    assert _get(facts, "/latest/meta-data/public-ipv4") == b"192.0.2.7"
    assert _get(facts, "/latest/meta-data/placement/availability-zone") == b"az-host"
    assert _get(facts, "/latest/meta-data/public-keys/") == b"0=mykey"
    assert _get(facts, "/latest/meta-data/public-keys/0/openssh-key") == b"ssh-ed25519 AAAA x"
    assert _get(facts, "/latest/meta-data/mac") == b"fa:16:3e:00:00:01"
    assert _get(facts, "/latest/user-data") == b"#!/bin/sh\necho hi\n"
    top = _get(facts, "/latest/meta-data/").decode().split("\n")
    assert {"instance-id", "placement/", "public-keys/", "local-ipv4", "hostname"} <= set(top)
    assert _get(facts, "/latest/") == b"meta-data/\nuser-data"
    assert b"2009-04-04" in _get(facts, "/")
    assert answer(facts, "/latest/meta-data/instance-id/x") is None
    assert answer(_facts(key_name=None), "/latest/meta-data/public-keys/") is None


def _catalog_with_two_guests() -> Catalog:
    cat = Catalog()
    cat.network("n1", "10.0.0.0/24")
    cat.network("n2", "10.0.1.0/24")
    for pid, nid, ip, inst in (("pa", "n1", "10.0.0.5", "inst-a"), ("pb", "n1", "10.0.0.6", "inst-b"),
                               ("pc", "n2", "10.0.1.5", None)):
        cat.port(pid, nid, ip)
        if inst is not None:
            cat(PortUpdate(id=pid, device_id=inst, device_owner="compute:nova", host="h1"))
    conn = cat.state.conn
    for seq, (iid, name) in enumerate((("inst-a", "alpha"), ("inst-b", "beta")), start=1):
        conn.execute(
            "INSERT INTO instances (id, seq, name, project_id, user_id, host, flavor_id, flavor, image_id, user_data,"
            " metadata, config_drive, vm_state, power_state, created_at, updated_at) VALUES"
            " (?,?,?,'p1','u1','h1','f1','{\"name\": \"tiny\"}','img',?,'{}',1,'active',1,?,?)",
            (iid, seq, name, f"data of {name}", T0, T0))
    return cat


def test_a_request_is_answered_for_the_instance_at_its_source_address_on_its_network() -> None:
    conn = _catalog_with_two_guests().state.conn
    a = instance_facts(conn, "n1", "10.0.0.5", "nova")
    b = instance_facts(conn, "n1", "10.0.0.6", "nova")
    assert a is not None and b is not None
    assert (a.uuid, a.user_data, a.fixed_ips, a.availability_zone) == ("inst-a", b"data of alpha", ("10.0.0.5",),
                                                                       "nova")
    assert b.uuid == "inst-b" and b.user_data == b"data of beta" and b.flavor_name == "tiny"
    assert a.security_groups == ("default",)
    assert instance_facts(conn, "n1", "10.0.0.99", "nova") is None, "an address nobody holds"
    assert instance_facts(conn, "n2", "10.0.0.5", "nova") is None, "A's address asked from another network"
    assert instance_facts(conn, "n2", "10.0.1.5", "nova") is None, "a port with no instance"
    assert instance_facts(conn, "n1", "10.0.0.2", "nova") is None, "the DHCP port is no instance"
    conn.execute("UPDATE instances SET deleted_at=? WHERE id='inst-b'", (T0,))
    assert instance_facts(conn, "n1", "10.0.0.6", "nova") is None, "a deleted instance"


def _dhcp_state(metadata: bool, gateway: str | None = "10.0.0.1") -> HostNetworkState:
    net = NetworkSpec(id="n1", type="local")
    v4 = SubnetSpec(id="s4", network_id="n1", cidr="10.0.0.0/24", gateway=gateway)
    v6 = SubnetSpec(id="s6", network_id="n1", cidr="2001:db8::/64")
    dhcp = PortSpec(id="dhcp-port", network_id="n1", mac="fa:16:3e:00:00:02", device_owner=DEVICE_OWNER_DHCP,
                    host="h1", fixed_ips=(FixedIp("s4", "10.0.0.2"), FixedIp("s6", "2001:db8::2")))
    return HostNetworkState(host="h1", networks=(net,), subnets=(v4, v6), ports=(dhcp,), metadata=metadata)


def test_dhcp_gives_a_classless_route_to_the_metadata_address_through_the_dhcp_port() -> None:
    layout = desired_layout(_dhcp_state(metadata=True))
    dhcp = layout.dhcp["n1"]
    assert dhcp.metadata
    assert ("--dhcp-option=tag:subnet-s4,option:classless-static-route,169.254.169.254/32,10.0.0.2,"
            "0.0.0.0/0,10.0.0.1") in dhcp.argv, "the default route rides along (RFC 3442 clients drop option 3)"
    assert not any("subnet-s6" in arg and "classless" in arg for arg in dhcp.argv)
    (veth,) = layout.namespaces[dhcp.netns].veths
    assert veth.addresses == {"10.0.0.2/24", "2001:db8::2/64", "169.254.169.254/32"}

    off = desired_layout(_dhcp_state(metadata=False))
    assert not off.dhcp["n1"].metadata and not any("classless" in arg for arg in off.dhcp["n1"].argv)
    assert "169.254.169.254/32" not in off.namespaces[off.dhcp["n1"].netns].veths[0].addresses

    no_gateway = desired_layout(_dhcp_state(metadata=True, gateway=None)).dhcp["n1"].argv
    assert "--dhcp-option=tag:subnet-s4,option:classless-static-route,169.254.169.254/32,10.0.0.2" in no_gateway
    plain = dnsmasq_argv("ns-x", [SubnetSpec(id="s4", network_id="n1", cidr="10.0.0.0/24")], dhcp_paths("/d", "n1"))
    assert not any("classless" in arg for arg in plain)


def test_listeners_close_before_their_namespace_goes_and_reopen_in_a_new_one() -> None:
    e1, e2, e3 = Endpoint("qdhcp-n1", "n1"), Endpoint("qdhcp-n2", "n2"), Endpoint("qdhcp-n3", "n3")
    have = {"network:n1": ListenerState(e1, 11), "network:n2": ListenerState(e2, 12)}
    inodes: dict[str, int | None] = {"qdhcp-n1": 11, "qdhcp-n2": 12, "qdhcp-n3": 13}
    wanted = {"network:n1": e1, "network:n2": e2, "network:n3": e3}
    assert stale_listeners(wanted, have, inodes) == []
    assert missing_listeners(wanted, have, inodes) == ["network:n3"]
    assert stale_listeners({"network:n1": e1}, have, inodes) == ["network:n2"], "network removed here"
    assert stale_listeners(wanted, have, {**inodes, "qdhcp-n1": 99}) == ["network:n1"], "namespace re-created"
    assert stale_listeners(wanted, have, {**inodes, "qdhcp-n2": None}) == ["network:n2"], "namespace gone"
    moved = {**wanted, "network:n1": Endpoint("qdhcp-n1", "n1", "ns-other")}
    assert stale_listeners(moved, have, inodes) == ["network:n1"], "same key, another device"
    assert missing_listeners(wanted, {}, {"qdhcp-n1": 11}) == ["network:n1"], "none before its namespace exists"


def test_endpoints_in_the_dhcp_namespace_and_on_each_ipv4_router_leg() -> None:
    base = _dhcp_state(metadata=True)
    router = RouterSpec("r1", interfaces=(RouterInterface("leg4", "s4", "10.0.0.1", "fa:16:3e:00:00:03"),
                                          RouterInterface("leg6", "s6", "2001:db8::1", "fa:16:3e:00:00:04")))
    state = replace(base, routers=(router,), netns_prefix="t-")
    layout = desired_layout(state)
    assert metadata_endpoints(state, layout) == {
        "network:n1": Endpoint("t-qdhcp-n1", "n1"),
        "router:r1:leg4": Endpoint("t-qrouter-r1", "n1", "qr-leg4"),
    }
    legs = {v.peer: v.addresses for v in layout.namespaces["t-qrouter-r1"].veths}
    assert legs == {"qr-leg4": {"10.0.0.1/24", "169.254.169.254/32"}, "qr-leg6": {"2001:db8::1/64"}}
    off = replace(state, metadata=False)
    assert metadata_endpoints(off, desired_layout(off)) == {}
    assert all("169.254.169.254/32" not in v.addresses for v in desired_layout(off).namespaces["t-qrouter-r1"].veths)


class _NoInstances:
    """A catalog where no address belongs to an instance (every request answers 404)."""

    async def read(self, *_args: object) -> None:
        return None


async def test_a_guest_cannot_hold_more_than_the_listeners_connection_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each held connection is a file descriptor of the daemon: past the limit a new one is closed
    at once (a guest flooding 169.254.169.254 cannot exhaust the daemon's descriptors), and a
    connection is accepted again once one of them ends."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    monkeypatch.setattr(metadata, "listen_in_netns", lambda *_args: (sock, 1))
    monkeypatch.setattr(metadata, "netns_inode", lambda _name: 1)
    monkeypatch.setattr(metadata, "MAX_CONNECTIONS_PER_LISTENER", 3)
    server = metadata.MetadataServer(_NoInstances(), "nova")  # type: ignore[arg-type]
    await server.sync_after_apply({"network:n1": Endpoint("qdhcp-n1", "n1")})
    port = sock.getsockname()[1]
    handlers = server.listeners["network:n1"].runner.server
    assert handlers is not None

    async def held_until(count: int) -> None:
        while len(handlers.connections) != count:
            await asyncio.sleep(0.01)

    held = []
    try:
        for count in (1, 2, 3):
            held.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.wait_for(held_until(count), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b"", "the fourth connection is closed at once"
        writer.close()
        held.pop()[1].close()
        await asyncio.wait_for(held_until(2), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 404"), "served again"
        writer.close()
    finally:
        for _, w in held:
            w.close()
        await server.close()


def test_host_routes_keep_the_default_route_with_or_without_the_metadata_route() -> None:
    """RFC 3442 clients given option 121 ignore option 3: the default route rides along whenever
    option 121 is sent (Neutron does the same), and once only when the subnet names one itself."""
    routed = SubnetSpec(id="s4", network_id="n1", cidr="10.0.0.0/24", gateway="10.0.0.1",
                        host_routes=(HostRoute("10.9.0.0/16", "10.0.0.254"),))
    for via in (None, {"s4": "10.0.0.2"}):
        argv = dnsmasq_argv("ns-x", [routed], dhcp_paths("/d", "n1"), metadata_via=via)
        (option,) = [a for a in argv if "classless" in a]
        assert option.endswith(",0.0.0.0/0,10.0.0.1"), option
    own_default = replace(routed, host_routes=(HostRoute("0.0.0.0/0", "10.0.0.254"),))
    argv = dnsmasq_argv("ns-x", [own_default], dhcp_paths("/d", "n1"), metadata_via={"s4": "10.0.0.2"})
    (option,) = [a for a in argv if "classless" in a]
    assert option.count("0.0.0.0/0") == 1 and "0.0.0.0/0,10.0.0.254" in option, option


class _GuestACatalog:
    """The test catalog behind the metadata server, every request seen as coming from guest A
    (10.0.0.5 on n1): the listener here is on loopback."""

    def __init__(self, cat: Catalog) -> None:
        self.cat = cat

    async def read(self, fn: Callable[..., object], network_id: str, _ip: str, *args: object) -> object:
        return fn(self.cat.state.conn, network_id, "10.0.0.5", *args)

    async def propose(self, cmd: Command) -> dict[str, object]:
        return self.cat(cmd)  # raises the typed error the command's apply recorded


async def test_a_guest_posts_its_password_once_and_reads_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nova's metadata password: the guest posts it (at most 256 bytes), GET returns it, a second
    post is refused (409) until the owner clears it; guest B's stays empty."""
    cat = _catalog_with_two_guests()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    monkeypatch.setattr(metadata, "listen_in_netns", lambda *_args: (sock, 1))
    monkeypatch.setattr(metadata, "netns_inode", lambda _name: 1)
    server = metadata.MetadataServer(_GuestACatalog(cat), "nova")  # type: ignore[arg-type]
    await server.sync_after_apply({"network:n1": Endpoint("qdhcp-n1", "n1")})
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/openstack/latest/password"
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method: str, data: bytes | None = None, path: str = url) -> tuple[int, bytes]:
                async with http.request(method, path, data=data) as resp:
                    return resp.status, await resp.read()

            assert await call("GET") == (200, b"")
            assert (await call("POST", b"x" * 257))[0] == 413, "over Nova's 256 bytes"
            assert (await call("POST", b"\xff\xfe"))[0] == 400, "not text"
            assert (await call("POST", b"x", url.replace("password", "meta_data.json")))[0] == 405
            assert (await call("POST", b"c2VjcmV0" * 32))[0] == 200, "256 bytes fit"
            assert await call("GET") == (200, b"c2VjcmV0" * 32)
            assert (await call("POST", b"other"))[0] == 409, "posted once"
            cat(InstancePasswordClear(id="inst-a", updated_at=T0))  # the owner cleared it (the API)
            assert await call("GET") == (200, b"")
            assert (await call("POST", b"new"))[0] == 200
            assert await call("GET") == (200, b"new")
        b = instance_facts(cat.state.conn, "n1", "10.0.0.6", "nova")
        assert b is not None and b.password == "", "another guest's password is its own"
        with pytest.raises(Conflict, match="already has a password"):  # two posts racing: the catalog decides
            cat(InstancePasswordSet(id="inst-a", password="race", updated_at=T0))
    finally:
        await server.close()
