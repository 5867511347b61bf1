"""Apply handlers: networks, subnets, ports with IPAM, security groups, routers, floating IPs.

Everything a replica needs is in the command or the database: ids and MACs come from the
proposer, segment ranges come from the proposer's config, and addresses are allocated here,
inside apply (first free pool address, in pool order), so every replica picks the same one.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hvd.bounds import Int64
from hvd.catalog import quota
from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import dumps, fetch_all, fetch_one, require
from hvd.errors import BadRequest, Conflict, NotFound
from hvd.net.addr import (
    MAX_DNS_NAMESERVERS,
    MAX_HOST_ROUTES,
    IpAddress,
    IpNetwork,
    check_subnet_options,
    parse_ip,
    parse_network,
)

UNSET: Literal["__unset__"] = "__unset__"
NETWORK_OWNER = "network:"
OWNER_DHCP = "network:dhcp"
OWNER_ROUTER_INTERFACE = "network:router_interface"
OWNER_ROUTER_GATEWAY = "network:router_gateway"
OWNER_FLOATINGIP = "network:floatingip"
VXLAN_MTU = 1450  # 1500 minus the 50 bytes of VXLAN encapsulation


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FixedIpRequest(_Frozen):
    subnet_id: str | None = Field(None, max_length=64)
    ip_address: IpAddress | None = None


class HostRouteIn(_Frozen):
    destination: IpNetwork
    nexthop: IpAddress


class NetworkCreate(Command):
    """`type` None = a tenant network: the first of `tenant_types` with a free segment."""

    type: Literal["network.create"] = "network.create"
    id: str
    project_id: str
    name: str
    network_type: Literal["local", "flat", "vlan", "vxlan"] | None = None
    physical_network: str | None = None
    segmentation_id: Int64 | None = None
    mtu: Int64 | None = None
    shared: bool = False
    external: bool = False
    tenant_types: list[str] = Field(default_factory=list)
    vlan_ranges: list[tuple[str, Int64, Int64]] = Field(default_factory=list)
    vni_ranges: list[tuple[Int64, Int64]] = Field(default_factory=list)
    created_at: str


class NetworkUpdate(Command):
    type: Literal["network.update"] = "network.update"
    id: str
    name: str | None = None
    shared: bool | None = None


class NetworkDelete(Command):
    type: Literal["network.delete"] = "network.delete"
    id: str


class SubnetCreate(Command):
    """A DHCP-enabled subnet gives the network a DHCP port (bound to `host`) if it has none."""

    type: Literal["subnet.create"] = "subnet.create"
    id: str
    network_id: str
    project_id: str
    name: str
    cidr: IpNetwork
    gateway_ip: IpAddress | None = None
    no_gateway: bool = False
    allocation_pools: list[tuple[IpAddress, IpAddress]] | None = Field(None, max_length=64)
    enable_dhcp: bool = True
    dns_nameservers: list[IpAddress] = Field(default_factory=list, max_length=MAX_DNS_NAMESERVERS)
    host_routes: list[HostRouteIn] = Field(default_factory=list, max_length=MAX_HOST_ROUTES)
    dhcp_port_id: str
    dhcp_mac: str
    host: str
    created_at: str


class SubnetUpdate(Command):
    type: Literal["subnet.update"] = "subnet.update"
    id: str
    name: str | None = None
    dns_nameservers: list[IpAddress] | None = Field(None, max_length=MAX_DNS_NAMESERVERS)
    host_routes: list[HostRouteIn] | None = Field(None, max_length=MAX_HOST_ROUTES)


class SubnetDelete(Command):
    type: Literal["subnet.delete"] = "subnet.delete"
    id: str


class PortCreate(Command):
    """`fixed_ips` None = one address from the network's first subnet with a free one;
    `security_groups` None = the project's default group (created here on first use)."""

    type: Literal["port.create"] = "port.create"
    id: str
    network_id: str
    project_id: str
    name: str = ""
    mac: str
    fixed_ips: list[FixedIpRequest] | None = None
    device_owner: str = ""
    device_id: str = ""
    host: str = ""
    security_groups: list[str] | None = None
    port_security_enabled: bool = True
    auto_delete: bool = False
    default_sg_id: str
    created_at: str


class PortUpdate(Command):
    type: Literal["port.update"] = "port.update"
    id: str
    name: str | None = None
    security_groups: list[str] | None = None
    port_security_enabled: bool | None = None
    device_owner: str | None = None
    device_id: str | None = None
    host: str | None = None
    auto_delete: bool | None = None
    expect_device_id: str | None = None  # compare-and-swap on the binding (attach races)


class PortDelete(Command):
    type: Literal["port.delete"] = "port.delete"
    id: str
    internal: bool = False  # hvd itself may delete router/DHCP ports


class SecurityGroupEnsureDefault(Command):
    type: Literal["security_group.ensure_default"] = "security_group.ensure_default"
    project_id: str
    id: str
    created_at: str


class HostSetVtep(Command):
    type: Literal["host.set_vtep"] = "host.set_vtep"
    host: str
    ip: IpAddress


# --- IPAM and segments -----------------------------------------------------------------------


def default_pools(cidr: str, gateway: str | None) -> list[tuple[str, str]]:
    """Every usable address but the network, broadcast (IPv4) and gateway addresses."""
    net = ipaddress.ip_network(cidr)
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    if net.num_addresses <= 2:
        first, last = int(net.network_address), int(net.broadcast_address)
    ranges = [(first, last)]
    if gateway is not None:
        gw = int(ipaddress.ip_address(gateway))
        ranges = [(lo, hi) for lo, hi in ((first, gw - 1), (gw + 1, last)) if lo <= hi] if first <= gw <= last \
            else ranges
    make = ipaddress.ip_address
    return [(str(make(lo)), str(make(hi))) for lo, hi in ranges]


def _subnet(conn: sqlite3.Connection, subnet_id: str) -> dict[str, Any]:
    row = require(conn, "subnets", "id", subnet_id, "Subnet")
    row["allocation_pools"] = [tuple(p) for p in _loads(row["allocation_pools"])]
    return row


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


def _stored(text: str | None) -> int | None:
    """A stored address as a number (rows written before addresses were canonical may carry a
    scope id or another spelling: compared by value, never by text)."""
    if text is None:
        return None
    return int(ipaddress.ip_address(text.split("%", 1)[0]))


def _allocated(conn: sqlite3.Connection, subnet_id: str) -> set[int]:
    return {n for (ip,) in conn.execute("SELECT ip FROM ip_allocations WHERE subnet_id=?", (subnet_id,))
            if (n := _stored(ip)) is not None}


def _first_free(conn: sqlite3.Connection, subnet: dict[str, Any]) -> str | None:
    taken = _allocated(conn, subnet["id"])
    gateway = _stored(subnet["gateway_ip"])
    for start, end in subnet["allocation_pools"]:
        lo, hi = _int(start), _int(end)
        for n in range(lo, hi + 1):
            if n not in taken and n != gateway:
                return str(ipaddress.ip_address(n))
    return None


def _in_pools(subnet: dict[str, Any], n: int) -> bool:
    return any(_int(start) <= n <= _int(end) for start, end in subnet["allocation_pools"])


def _check_ip(conn: sqlite3.Connection, subnet: dict[str, Any], ip: str, owner: str) -> str:
    """The canonical form of a requested address, if `owner` may have it on `subnet`: inside
    an allocation pool (only a router interface takes the gateway, outside them), free."""
    try:
        addr = parse_ip(ip)
    except ValueError as exc:
        raise BadRequest(f"'{ip}' is not a valid IP address: {exc}") from exc
    net = ipaddress.ip_network(subnet["cidr"])
    if addr not in net:
        raise BadRequest(f"IP address {ip} is not a valid IP for subnet {subnet['id']} ({subnet['cidr']})")
    if net.version == 4 and net.num_addresses > 2 and addr in (net.network_address, net.broadcast_address):
        raise BadRequest(f"IP address {ip} is the network or broadcast address of {subnet['cidr']}")
    is_gateway = int(addr) == _stored(subnet["gateway_ip"])
    if is_gateway and owner != OWNER_ROUTER_INTERFACE:
        raise Conflict(f"IP address {ip} is the gateway of subnet {subnet['id']}")
    if not is_gateway and not _in_pools(subnet, int(addr)):
        pools = ", ".join(f"{a}-{b}" for a, b in subnet["allocation_pools"]) or "none"
        raise BadRequest(f"IP address {ip} is outside the allocation pools of subnet {subnet['id']} ({pools})")
    if int(addr) in _allocated(conn, subnet["id"]):
        raise Conflict(f"IP address {ip} already allocated in subnet {subnet['id']}")
    return str(addr)


def _allocate(conn: sqlite3.Connection, port: dict[str, Any], requests: list[FixedIpRequest] | None) -> None:
    """Give `port` its addresses (raises before writing anything if one is refused)."""
    subnets = [_subnet(conn, r["id"]) for r in fetch_all(
        conn, "SELECT id FROM subnets WHERE network_id=? ORDER BY created_at, id", (port["network_id"],))]
    chosen: list[tuple[str, str]] = []
    if requests is None:
        for candidate in subnets:
            ip = _first_free(conn, candidate)
            if ip is not None:
                chosen.append((candidate["id"], ip))
                break
        else:
            if subnets:
                raise Conflict(f"No more IP addresses available on network {port['network_id']}")
    for req in requests or []:
        sub: dict[str, Any] | None = None
        if req.subnet_id is not None:
            sub = next((s for s in subnets if s["id"] == req.subnet_id), None)
            if sub is None:
                raise BadRequest(f"subnet {req.subnet_id} is not on network {port['network_id']}")
        elif req.ip_address is not None:
            sub = next((s for s in subnets if _contains(s["cidr"], req.ip_address)), None)
            if sub is None:
                raise BadRequest(f"IP address {req.ip_address} is in no subnet of network {port['network_id']}")
        else:
            raise BadRequest("a fixed IP needs a subnet_id or an ip_address")
        if req.ip_address is not None:
            ip = _check_ip(conn, sub, req.ip_address, port["device_owner"])
        else:
            found = _first_free(conn, sub)
            if found is None:
                raise Conflict(f"No more IP addresses available on subnet {sub['id']}")
            ip = found
        if (sub["id"], ip) in chosen:
            raise Conflict(f"IP address {ip} requested twice")
        chosen.append((sub["id"], ip))
    for subnet_id, ip in chosen:
        conn.execute("INSERT INTO ip_allocations VALUES (?,?,?)", (subnet_id, ip, port["id"]))


def _int(ip: str) -> int:
    n = _stored(ip)
    assert n is not None
    return n


def _contains(cidr: str, ip: str) -> bool:
    try:
        return parse_ip(ip) in parse_network(cidr, strict=False)
    except ValueError:
        return False


def _segment(conn: sqlite3.Connection, cmd: NetworkCreate) -> tuple[str, str | None, int | None]:
    """(type, physical network, segmentation id): checked if given, else allocated sequentially."""
    used = {(r[0], r[1] or "", r[2]) for r in conn.execute(
        "SELECT type, physical_network, segmentation_id FROM networks WHERE segmentation_id IS NOT NULL")}
    if cmd.network_type is not None:
        kind: str = cmd.network_type
        phys, seg = cmd.physical_network, cmd.segmentation_id
        if kind == "local" and (phys or seg is not None):
            raise BadRequest("a local network takes no physical_network or segmentation_id")
        if kind in ("flat", "vlan") and not phys:
            raise BadRequest(f"a {kind} network needs a physical_network")
        if kind == "flat":
            if seg is not None:
                raise BadRequest("a flat network takes no segmentation_id")
            if fetch_one(conn, "SELECT id FROM networks WHERE type='flat' AND physical_network=?", (phys,)):
                raise Conflict(f"physical network {phys} already carries a flat network")
            return kind, phys, None
        if kind == "vxlan":
            phys = None
        if kind in ("vlan", "vxlan"):
            if seg is None:
                seg = _free_segment(kind, phys, cmd, used)
                if seg is None:
                    raise Conflict(f"no free {kind} segment in the configured ranges")
            top = 4094 if kind == "vlan" else 2**24 - 1
            if not 1 <= seg <= top:
                raise Conflict(f"segmentation id {seg} is outside 1-{top} for {kind}")
            if (kind, phys or "", seg) in used:
                raise Conflict(f"{kind} segment {seg} is already in use")
        return kind, phys, seg
    for kind in cmd.tenant_types:
        if kind == "local":
            return "local", None, None
        if kind in ("vlan", "vxlan"):
            for label, _, _ in cmd.vlan_ranges if kind == "vlan" else [("", 0, 0)]:
                seg = _free_segment(kind, label or None, cmd, used)
                if seg is not None:
                    return kind, label or None, seg
    raise Conflict("no tenant network segment is free (tenant_network_types exhausted)")


def _free_segment(kind: str, phys: str | None, cmd: NetworkCreate, used: set[tuple[str, str, int]]) -> int | None:
    ranges = [(lo, hi) for label, lo, hi in cmd.vlan_ranges if label == phys] if kind == "vlan" else cmd.vni_ranges
    for lo, hi in ranges:
        for seg in range(lo, hi + 1):
            if (kind, phys or "", seg) not in used:
                return seg
    return None


def _in_use(conn: sqlite3.Connection, project_id: str, table: str, where: str = "") -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE project_id=? {where}", (project_id,)).fetchone()[0])


# --- networks and subnets --------------------------------------------------------------------


@handles(NetworkCreate)
def network_create(conn: sqlite3.Connection, cmd: NetworkCreate) -> Result:
    quota.check(conn, cmd.project_id, "networks", 1, _in_use(conn, cmd.project_id, "networks"))
    kind, phys, seg = _segment(conn, cmd)
    mtu = cmd.mtu or (VXLAN_MTU if kind == "vxlan" else 1500)
    conn.execute(
        "INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (cmd.id, cmd.project_id, cmd.name, kind, phys, seg, mtu, int(cmd.shared), int(cmd.external), "ACTIVE",
         cmd.created_at),
    )
    return {"id": cmd.id, "type": kind, "segmentation_id": seg}


@handles(NetworkUpdate)
def network_update(conn: sqlite3.Connection, cmd: NetworkUpdate) -> Result:
    require(conn, "networks", "id", cmd.id, "Network")
    if cmd.name is not None:
        conn.execute("UPDATE networks SET name=? WHERE id=?", (cmd.name, cmd.id))
    if cmd.shared is not None:
        conn.execute("UPDATE networks SET shared=? WHERE id=?", (int(cmd.shared), cmd.id))
    return {"id": cmd.id}


def _delete_port_rows(conn: sqlite3.Connection, port_id: str) -> None:
    conn.execute("UPDATE floating_ips SET port_id=NULL, fixed_ip=NULL, router_id=NULL WHERE port_id=?", (port_id,))
    conn.execute("DELETE FROM ip_allocations WHERE port_id=?", (port_id,))
    conn.execute("DELETE FROM port_security_groups WHERE port_id=?", (port_id,))
    conn.execute("DELETE FROM ports WHERE id=?", (port_id,))


@handles(NetworkDelete)
def network_delete(conn: sqlite3.Connection, cmd: NetworkDelete) -> Result:
    require(conn, "networks", "id", cmd.id, "Network")
    busy = fetch_one(conn, "SELECT id, device_owner FROM ports WHERE network_id=? AND device_owner != ?",
                     (cmd.id, OWNER_DHCP))
    if busy is not None:
        raise Conflict(f"Unable to complete operation on network {cmd.id}: one or more ports are in use"
                       f" (port {busy['id']}, owner '{busy['device_owner']}')")
    if fetch_one(conn, "SELECT id FROM floating_ips WHERE network_id=?", (cmd.id,)) is not None:
        raise Conflict(f"network {cmd.id} has floating IPs")
    if fetch_one(conn, "SELECT id FROM routers WHERE gateway_network_id=?", (cmd.id,)) is not None:
        raise Conflict(f"network {cmd.id} is a router's external gateway")
    for (port_id,) in conn.execute("SELECT id FROM ports WHERE network_id=?", (cmd.id,)).fetchall():
        _delete_port_rows(conn, port_id)
    conn.execute("DELETE FROM subnets WHERE network_id=?", (cmd.id,))
    conn.execute("DELETE FROM networks WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(SubnetCreate)
def subnet_create(conn: sqlite3.Connection, cmd: SubnetCreate) -> Result:
    network = require(conn, "networks", "id", cmd.network_id, "Network")
    quota.check(conn, cmd.project_id, "subnets", 1, _in_use(conn, cmd.project_id, "subnets"))
    try:
        net = ipaddress.ip_network(cmd.cidr, strict=True)
    except ValueError as exc:
        raise BadRequest(f"invalid CIDR {cmd.cidr}: {exc}") from exc
    for other in fetch_all(conn, "SELECT id, cidr FROM subnets WHERE network_id=?", (cmd.network_id,)):
        other_net = ipaddress.ip_network(other["cidr"])
        if other_net.version == net.version and net.overlaps(other_net):
            raise Conflict(f"Invalid input for operation: requested subnet with cidr: {cmd.cidr} for network:"
                           f" {cmd.network_id} overlaps with another subnet ({other['id']}, {other['cidr']})")
    try:
        check_subnet_options(cmd.cidr, cmd.dns_nameservers, [(r.destination, r.nexthop) for r in cmd.host_routes])
    except ValueError as exc:
        raise BadRequest(f"Invalid input for subnet: {exc}") from exc
    gateway = None if cmd.no_gateway else cmd.gateway_ip or str(next(iter(net.hosts()), net.network_address))
    if gateway is not None and not _contains(cmd.cidr, gateway):
        raise BadRequest(f"gateway {gateway} is outside {cmd.cidr}")
    pools = cmd.allocation_pools or default_pools(cmd.cidr, gateway)
    for start, end in pools:
        if not (_contains(cmd.cidr, start) and _contains(cmd.cidr, end)) or _int(start) > _int(end):
            raise BadRequest(f"allocation pool {start}-{end} is not a range inside {cmd.cidr}")
        if gateway is not None and _int(start) <= _int(gateway) <= _int(end):
            raise Conflict(f"gateway {gateway} is inside the allocation pool {start}-{end}")
    conn.execute(
        "INSERT INTO subnets VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (cmd.id, cmd.network_id, cmd.project_id, cmd.name, str(net), net.version, gateway, dumps(pools),
         int(cmd.enable_dhcp), dumps(cmd.dns_nameservers), dumps([r.model_dump() for r in cmd.host_routes]),
         cmd.created_at),
    )
    if cmd.enable_dhcp:
        dhcp = fetch_one(conn, "SELECT * FROM ports WHERE network_id=? AND device_owner=?",
                         (cmd.network_id, OWNER_DHCP))
        if dhcp is None:
            dhcp = _insert_port(conn, cmd.dhcp_port_id, network, network["project_id"], "", cmd.dhcp_mac, OWNER_DHCP,
                                cmd.network_id, cmd.host, False, cmd.created_at)
        # The DHCP port takes the first pool address, before any instance.
        _allocate(conn, dhcp, [FixedIpRequest(subnet_id=cmd.id)])
    return {"id": cmd.id}


@handles(SubnetUpdate)
def subnet_update(conn: sqlite3.Connection, cmd: SubnetUpdate) -> Result:
    subnet = require(conn, "subnets", "id", cmd.id, "Subnet")
    try:  # only what changes is checked: a legacy bad value must not block its own repair
        check_subnet_options(subnet["cidr"], cmd.dns_nameservers or [],
                             [(r.destination, r.nexthop) for r in cmd.host_routes or []])
    except ValueError as exc:
        raise BadRequest(f"Invalid input for subnet: {exc}") from exc
    if cmd.name is not None:
        conn.execute("UPDATE subnets SET name=? WHERE id=?", (cmd.name, cmd.id))
    if cmd.dns_nameservers is not None:
        conn.execute("UPDATE subnets SET dns_nameservers=? WHERE id=?", (dumps(cmd.dns_nameservers), cmd.id))
    if cmd.host_routes is not None:
        routes = dumps([r.model_dump() for r in cmd.host_routes])
        conn.execute("UPDATE subnets SET host_routes=? WHERE id=?", (routes, cmd.id))
    return {"id": cmd.id}


@handles(SubnetDelete)
def subnet_delete(conn: sqlite3.Connection, cmd: SubnetDelete) -> Result:
    require(conn, "subnets", "id", cmd.id, "Subnet")
    busy = fetch_one(
        conn, "SELECT p.id, p.device_owner FROM ip_allocations a JOIN ports p ON p.id=a.port_id"
        " WHERE a.subnet_id=? AND p.device_owner != ?", (cmd.id, OWNER_DHCP))
    if busy is not None:
        raise Conflict(f"Unable to complete operation on subnet {cmd.id}: one or more ports have an IP allocation"
                       f" from this subnet (port {busy['id']})")
    conn.execute("DELETE FROM ip_allocations WHERE subnet_id=?", (cmd.id,))
    conn.execute("DELETE FROM subnets WHERE id=?", (cmd.id,))
    # a DHCP port left with no address serves nothing
    for (port_id,) in conn.execute(
        "SELECT id FROM ports WHERE device_owner=? AND id NOT IN (SELECT port_id FROM ip_allocations)", (OWNER_DHCP,)
    ).fetchall():
        _delete_port_rows(conn, port_id)
    return {"id": cmd.id}


# --- ports -----------------------------------------------------------------------------------


def _insert_port(conn: sqlite3.Connection, port_id: str, network: dict[str, Any], project_id: str, name: str,
                 mac: str, owner: str, device_id: str, host: str, port_security: bool, created_at: str,
                 auto_delete: bool = False) -> dict[str, Any]:
    if fetch_one(conn, "SELECT id FROM ports WHERE network_id=? AND mac_address=?", (network["id"], mac)):
        raise Conflict(f"MAC address {mac} is already in use on network {network['id']}")
    seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM ports").fetchone()[0])
    status = "ACTIVE" if host else "DOWN"
    conn.execute(
        "INSERT INTO ports VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (port_id, seq, network["id"], project_id, name, mac, owner, device_id, host, status, int(port_security),
         int(auto_delete), created_at),
    )
    return require(conn, "ports", "id", port_id, "Port")


def ensure_default_group(conn: sqlite3.Connection, project_id: str, group_id: str, created_at: str) -> str:
    """The project's `default` group (created with Neutron's four rules if missing)."""
    row = fetch_one(conn, "SELECT id FROM security_groups WHERE project_id=? AND name='default'", (project_id,))
    if row is not None:
        return str(row["id"])
    conn.execute("INSERT INTO security_groups VALUES (?,?,?,?,?)",
                 (group_id, project_id, "default", "Default security group", created_at))
    for n, (direction, ethertype) in enumerate(
            [("egress", "IPv4"), ("egress", "IPv6"), ("ingress", "IPv4"), ("ingress", "IPv6")]):
        remote = group_id if direction == "ingress" else None
        rule_id = str(uuid.uuid5(uuid.UUID(group_id), str(n)))  # deterministic: same on every replica
        conn.execute("INSERT INTO security_group_rules VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (rule_id, group_id, project_id, direction, ethertype, None, None, None, None, remote, created_at))
    return group_id


def _set_groups(conn: sqlite3.Connection, port_id: str, project_id: str, groups: list[str]) -> None:
    for gid in groups:
        row = fetch_one(conn, "SELECT project_id FROM security_groups WHERE id=?", (gid,))
        if row is None or row["project_id"] != project_id:
            raise NotFound(f"Security group {gid} could not be found")
    conn.execute("DELETE FROM port_security_groups WHERE port_id=?", (port_id,))
    for gid in sorted(set(groups)):
        conn.execute("INSERT INTO port_security_groups VALUES (?,?)", (port_id, gid))


@handles(PortCreate)
def port_create(conn: sqlite3.Connection, cmd: PortCreate) -> Result:
    network = require(conn, "networks", "id", cmd.network_id, "Network")
    if not cmd.device_owner.startswith(NETWORK_OWNER):
        quota.check(conn, cmd.project_id, "ports", 1,
                    _in_use(conn, cmd.project_id, "ports", f"AND device_owner NOT LIKE '{NETWORK_OWNER}%'"))
    port = _insert_port(conn, cmd.id, network, cmd.project_id, cmd.name, cmd.mac, cmd.device_owner, cmd.device_id,
                        cmd.host, cmd.port_security_enabled, cmd.created_at, cmd.auto_delete)
    _allocate(conn, port, cmd.fixed_ips)
    groups = cmd.security_groups
    if groups is None:
        groups = [ensure_default_group(conn, cmd.project_id, cmd.default_sg_id, cmd.created_at)] \
            if cmd.port_security_enabled and not cmd.device_owner.startswith(NETWORK_OWNER) else []
    if groups and not cmd.port_security_enabled:
        raise BadRequest("a port without port security takes no security groups")
    _set_groups(conn, cmd.id, cmd.project_id, groups)
    return {"id": cmd.id}


@handles(PortUpdate)
def port_update(conn: sqlite3.Connection, cmd: PortUpdate) -> Result:
    port = require(conn, "ports", "id", cmd.id, "Port")
    if cmd.expect_device_id is not None and port["device_id"] != cmd.expect_device_id:
        raise Conflict(f"port {cmd.id} is in use by device '{port['device_id']}'")
    given = (("name", cmd.name), ("device_owner", cmd.device_owner), ("device_id", cmd.device_id),
             ("host", cmd.host))
    fields: dict[str, str | int] = {k: v for k, v in given if v is not None}
    if cmd.port_security_enabled is not None:
        fields["port_security_enabled"] = int(cmd.port_security_enabled)
    if cmd.auto_delete is not None:
        fields["auto_delete"] = int(cmd.auto_delete)
    if cmd.host is not None:
        fields["status"] = "ACTIVE" if cmd.host else "DOWN"
    for key, value in fields.items():
        conn.execute(f"UPDATE ports SET {key}=? WHERE id=?", (value, cmd.id))
    secure = bool(fields.get("port_security_enabled", port["port_security_enabled"]))
    if cmd.security_groups is not None:
        if cmd.security_groups and not secure:
            raise BadRequest("a port without port security takes no security groups")
        _set_groups(conn, cmd.id, port["project_id"], cmd.security_groups)
    elif not secure:
        conn.execute("DELETE FROM port_security_groups WHERE port_id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(PortDelete)
def port_delete(conn: sqlite3.Connection, cmd: PortDelete) -> Result:
    port = require(conn, "ports", "id", cmd.id, "Port")
    if not cmd.internal and port["device_owner"] in (OWNER_ROUTER_INTERFACE, OWNER_ROUTER_GATEWAY, OWNER_FLOATINGIP):
        raise Conflict(f"Port {cmd.id} cannot be deleted directly via the port API: it has device owner"
                       f" {port['device_owner']}")
    _delete_port_rows(conn, cmd.id)
    return {"id": cmd.id}


# --- security groups -------------------------------------------------------------------------


@handles(SecurityGroupEnsureDefault)
def security_group_ensure_default(conn: sqlite3.Connection, cmd: SecurityGroupEnsureDefault) -> Result:
    return {"id": ensure_default_group(conn, cmd.project_id, cmd.id, cmd.created_at)}


@handles(HostSetVtep)
def host_set_vtep(conn: sqlite3.Connection, cmd: HostSetVtep) -> Result:
    conn.execute("INSERT INTO host_vteps VALUES (?,?) ON CONFLICT(host) DO UPDATE SET ip=?", (cmd.host, cmd.ip, cmd.ip))
    return {"host": cmd.host}

