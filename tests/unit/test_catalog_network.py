"""Network commands in CatalogState.apply: subnet options checked in one place for create and
update, addresses refused with a scope id and compared by value, requested addresses inside
the allocation pools."""

from __future__ import annotations

import json

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.cmd_network import (
    FixedIpRequest,
    HostRouteIn,
    NetworkCreate,
    PortCreate,
    SubnetCreate,
    SubnetUpdate,
)
from hvd.catalog.cmd_network_l3 import FloatingIpCreate
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.state import CatalogState, decode_result
from hvd.errors import BadRequest, Conflict, HvdError
from hvd.net.addr import canonical_ip, canonical_prefix, check_subnet_options

T0 = "2026-01-01T00:00:00.000000Z"
SG = "5b0f6a5e-2f1c-4c8e-9a43-0b8b7c2d1e01"


class Catalog:
    def __init__(self) -> None:
        self.state = CatalogState(connect(":memory:"))
        self.index = 0

    def raw(self, data: bytes) -> dict[str, object]:
        self.index += 1
        return decode_result(self.state.apply(self.index, data))

    def __call__(self, cmd: Command) -> dict[str, object]:
        return self.raw(encode(cmd))

    def network(self, nid: str, cidr: str, external: bool = False, **subnet: object) -> None:
        self(NetworkCreate(id=nid, project_id="p1", name=nid, network_type="local", external=external, created_at=T0))
        self(SubnetCreate(id=f"s-{nid}", network_id=nid, project_id="p1", name="", cidr=cidr, dhcp_port_id=f"d-{nid}",
                          dhcp_mac="fa:16:3e:00:00:01", host="h1", created_at=T0, **subnet))  # type: ignore[arg-type]

    def port(self, pid: str, nid: str, ip: str) -> dict[str, object]:
        mac = f"fa:16:3e:00:01:{sum(map(ord, pid)) % 256:02x}"
        return self(PortCreate(id=pid, network_id=nid, project_id="p1", mac=mac,
                               fixed_ips=[FixedIpRequest(ip_address=ip)], default_sg_id=SG, created_at=T0))


def test_addresses_are_canonical_and_scope_ids_refused() -> None:
    assert canonical_ip("2001:DB8:0::5") == "2001:db8::5"
    assert canonical_prefix("10.0.0.5/24") == "10.0.0.0/24"
    for bad in ("2001:db8::5%eth0", "2001:db8::5%x\n}", "fe80::1%1", " 10.0.0.1", ""):
        with pytest.raises(ValueError):
            canonical_ip(bad)
    with pytest.raises(ValueError, match="scope id"):
        canonical_prefix("fe80::%eth0/64")


def test_subnet_option_rules() -> None:
    check_subnet_options("10.0.0.0/24", ["10.0.0.53"], [("10.9.0.0/16", "10.0.0.254")])
    check_subnet_options("2001:db8::/64", ["2001:db8::53"], [])
    for dns, routes, message in (
        (["2001:db8::53"], [], "IPv6; subnet 10.0.0.0/24 is IPv4"),
        (["10.0.0.53", "10.0.0.53"], [], "twice"),
        ([f"10.0.0.{i}" for i in range(6)], [], "at most 5"),
        ([], [("2001:db8::/64", "10.0.0.1")], "not IPv4"),
        ([], [("10.9.0.0/16", "10.0.0.1"), ("10.9.0.0/16", "10.0.0.2")], "twice"),
        ([], [("10.9.0.1/16", "10.0.0.1")], "host bits"),
    ):
        with pytest.raises(ValueError, match=message):
            check_subnet_options("10.0.0.0/24", dns, routes)


def test_subnet_create_and_update_refuse_options_dnsmasq_cannot_serve() -> None:
    cat = Catalog()
    cat(NetworkCreate(id="n1", project_id="p1", name="n1", network_type="local", created_at=T0))
    with pytest.raises(BadRequest, match="DNS server 2001:db8::53 is IPv6"):
        cat(SubnetCreate(id="s1", network_id="n1", project_id="p1", name="", cidr="10.0.0.0/24",
                         dns_nameservers=["2001:db8::53"], dhcp_port_id="d1", dhcp_mac="fa:16:3e:00:00:01",
                         host="h1", created_at=T0))
    cat.network("n2", "10.0.0.0/24", dns_nameservers=["10.0.0.53"])
    with pytest.raises(BadRequest, match="IPv6"):
        cat(SubnetUpdate(id="s-n2", dns_nameservers=["2001:db8::53"]))
    with pytest.raises(BadRequest, match="not IPv4"):
        cat(SubnetUpdate(id="s-n2", host_routes=[HostRouteIn(destination="2001:db8::/64", nexthop="10.0.0.1")]))
    row = cat.state.conn.execute("SELECT dns_nameservers, host_routes FROM subnets WHERE id='s-n2'").fetchone()
    assert (json.loads(row[0]), json.loads(row[1])) == (["10.0.0.53"], [])
    # a command carrying a scoped or oversized list (a log entry from an old proposer) is a typed refusal
    raw = json.loads(encode(SubnetUpdate(id="s-n2", dns_nameservers=["10.0.0.9"])))
    for dns in (["2001:db8::5%x\n}"], [f"10.0.0.{i}" for i in range(6)]):
        with pytest.raises(HvdError) as err:
            cat.raw(json.dumps({**raw, "dns_nameservers": dns}).encode())
        assert err.value.status == 400
    cat(SubnetUpdate(id="s-n2", dns_nameservers=["10.0.0.9"]))


def test_ipam_compares_addresses_by_value_not_text() -> None:
    cat = Catalog()
    cat.network("n6", "2001:db8::/64")
    gateway = cat.state.conn.execute("SELECT gateway_ip FROM subnets").fetchone()[0]
    assert gateway == "2001:db8::1"
    cat.port("pa", "n6", "2001:DB8:0::5")
    stored = [r[0] for r in cat.state.conn.execute("SELECT ip FROM ip_allocations WHERE port_id='pa'")]
    assert stored == ["2001:db8::5"], "stored canonical"
    with pytest.raises(Conflict, match="already allocated"):
        cat.port("pb", "n6", "2001:db8::0:5")
    with pytest.raises(Conflict, match="gateway"):
        cat.port("pc", "n6", "2001:db8:0::1")
    # a row written before addresses were canonical still counts as taken
    cat.state.conn.execute("INSERT INTO ip_allocations VALUES ('s-n6', '2001:DB8::7%eth0', 'pa')")
    with pytest.raises(Conflict, match="already allocated"):
        cat.port("pd", "n6", "2001:db8::7")
    raw = json.loads(encode(PortCreate(id="pe", network_id="n6", project_id="p1", mac="fa:16:3e:00:02:01",
                                       fixed_ips=[FixedIpRequest(ip_address="2001:db8::9")], default_sg_id=SG,
                                       created_at=T0)))
    raw["fixed_ips"] = [{"subnet_id": None, "ip_address": "2001:db8::9%}\nx"}]
    with pytest.raises(HvdError, match="scope id") as err:
        cat.raw(json.dumps(raw).encode())
    assert err.value.status == 400


def test_requested_fixed_and_floating_addresses_must_lie_in_the_pools() -> None:
    cat = Catalog()
    cat.network("n1", "10.0.0.0/24", allocation_pools=[("10.0.0.10", "10.0.0.20")])
    with pytest.raises(BadRequest, match=r"outside the allocation pools of subnet s-n1 \(10.0.0.10-10.0.0.20\)"):
        cat.port("p1", "n1", "10.0.0.50")
    cat.port("p2", "n1", "10.0.0.15")
    cat.network("ext", "192.0.2.0/24", external=True, allocation_pools=[("192.0.2.100", "192.0.2.110")])

    def fip(fid: str, address: str) -> dict[str, object]:
        mac = f"fa:16:3e:00:03:{sum(map(ord, fid)) % 256:02x}"
        return cat(FloatingIpCreate(id=fid, project_id="p1", network_id="ext", floating_ip=address,
                                    fip_port_id=f"fp-{fid}", mac=mac, created_at=T0))

    with pytest.raises(BadRequest, match="outside the allocation pools"):
        fip("f1", "192.0.2.5")
    with pytest.raises(Conflict, match="gateway"):
        fip("f2", "192.0.2.1")
    assert fip("f3", "192.0.2.105")["floating_ip"] == "192.0.2.105"
