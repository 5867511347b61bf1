"""Catalog → `HostNetworkState`: what one host should have, read from the catalog's SQLite.

Pure reads (run in the catalog's database thread via `Catalog.read`). A host gets the networks
that have a port bound to it (VM, DHCP or router ports), every port of those networks (remote
ones feed l2population and security-group member sets), the security groups those ports use,
the routers hosted here with their floating IPs, and the VTEPs of the other hosts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from hvd.catalog.sql import fetch_all
from hvd.net.addr import canonical_ip, check_subnet_options
from hvd.net.model import (
    AllocationPool,
    FixedIp,
    FloatingIp,
    HostNetworkState,
    HostRoute,
    LocalVtep,
    NetworkSpec,
    PortSpec,
    RemoteVtep,
    RouterGateway,
    RouterInterface,
    RouterSpec,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    SubnetSpec,
)

log = logging.getLogger(__name__)

OWNER_ROUTER_INTERFACE = "network:router_interface"


def _in(ids: set[str] | list[str]) -> str:
    return ",".join("?" * len(ids)) or "NULL"


def _allocations(conn: sqlite3.Connection, port_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    rows = conn.execute(
        f"SELECT a.port_id, a.subnet_id, a.ip FROM ip_allocations a JOIN subnets s ON s.id=a.subnet_id"
        f" WHERE a.port_id IN ({_in(port_ids)}) ORDER BY s.created_at, a.ip", tuple(port_ids)).fetchall()
    for port_id, subnet_id, ip in rows:
        try:
            out.setdefault(port_id, []).append((subnet_id, canonical_ip(ip)))
        except ValueError:  # a row from before addresses were checked: never into nft or dnsmasq text
            log.error("port %s: ignoring invalid stored address %r", port_id, ip)
    return out


def _port_groups(conn: sqlite3.Connection, port_ids: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for port_id, group_id in conn.execute(
            f"SELECT port_id, group_id FROM port_security_groups WHERE port_id IN ({_in(port_ids)})"
            " ORDER BY group_id", tuple(port_ids)).fetchall():
        out.setdefault(port_id, []).append(group_id)
    return {k: tuple(v) for k, v in out.items()}


def _network_spec(row: dict[str, Any], mappings: Mapping[str, str],
                  local_vtep: LocalVtep | None) -> NetworkSpec | str:
    """The network's spec on this host, or why this host cannot build it."""
    nic = mappings.get(row["physical_network"] or "")
    if row["type"] == "vxlan" and local_vtep is None:
        return "a vxlan network needs [network] local_ip (the VTEP address) on this host"
    try:
        return NetworkSpec(id=row["id"], type=row["type"], segmentation_id=row["segmentation_id"], physical_nic=nic,
                           mtu=int(row["mtu"]))
    except ValueError as exc:
        return str(exc)


def _dns(row: dict[str, Any]) -> tuple[str, ...]:
    """The subnet's DNS servers; a stored one dnsmasq would refuse (from before subnet options
    were checked) is logged and left out rather than stopping the network's DHCP."""
    out = []
    for text in json.loads(row["dns_nameservers"]):
        try:
            check_subnet_options(row["cidr"], [text], [])
            out.append(canonical_ip(text))
        except ValueError as exc:
            log.error("subnet %s: ignoring DNS server %r: %s", row["id"], text, exc)
    return tuple(out)


def _routes(row: dict[str, Any]) -> tuple[HostRoute, ...]:
    out = []
    for route in json.loads(row["host_routes"]):
        try:
            check_subnet_options(row["cidr"], [], [(route["destination"], route["nexthop"])])
            out.append(HostRoute(route["destination"], canonical_ip(route["nexthop"])))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("subnet %s: ignoring host route %r: %s", row["id"], route, exc)
    return tuple(out)


def _subnet_spec(row: dict[str, Any]) -> SubnetSpec:
    return SubnetSpec(
        id=row["id"], network_id=row["network_id"], cidr=row["cidr"], gateway=row["gateway_ip"],
        dhcp_enabled=bool(row["enable_dhcp"]), dns=_dns(row),
        host_routes=_routes(row),
        allocation_pools=tuple(AllocationPool(a, b) for a, b in json.loads(row["allocation_pools"])),
    )


def _groups(conn: sqlite3.Connection, group_ids: set[str]) -> tuple[SecurityGroupSpec, ...]:
    rules: dict[str, list[SecurityGroupRuleSpec]] = {gid: [] for gid in group_ids}
    for row in fetch_all(conn, f"SELECT * FROM security_group_rules WHERE group_id IN ({_in(group_ids)})"
                         " ORDER BY created_at, id", tuple(group_ids)):
        rules[row["group_id"]].append(SecurityGroupRuleSpec(
            row["direction"], row["ethertype"], row["protocol"], row["port_range_min"], row["port_range_max"],
            row["remote_ip_prefix"], row["remote_group_id"]))
    return tuple(SecurityGroupSpec(gid, tuple(rules[gid])) for gid in sorted(group_ids))


def host_state(conn: sqlite3.Connection, host: str, mappings: Mapping[str, str],
               local_vtep: LocalVtep | None = None) -> HostNetworkState:
    """The desired network state of `host` (see the module docstring)."""
    net_ids = {r[0] for r in conn.execute("SELECT DISTINCT network_id FROM ports WHERE host=?", (host,))}
    networks, unrealisable = [], []
    for row in fetch_all(conn, f"SELECT * FROM networks WHERE id IN ({_in(net_ids)}) ORDER BY id", tuple(net_ids)):
        spec = _network_spec(row, mappings, local_vtep)
        if isinstance(spec, str):
            log.error("network %s cannot be realised on this host: %s", row["id"], spec)
            unrealisable.append((str(row["id"]), spec))
        else:
            networks.append(spec)
    net_ids = {n.id for n in networks}
    subnets = [_subnet_spec(r) for r in fetch_all(
        conn, f"SELECT * FROM subnets WHERE network_id IN ({_in(net_ids)}) ORDER BY created_at, id", tuple(net_ids))]
    port_rows = fetch_all(conn, f"SELECT * FROM ports WHERE network_id IN ({_in(net_ids)}) ORDER BY seq",
                          tuple(net_ids))
    ids = [p["id"] for p in port_rows]
    allocs, groups = _allocations(conn, ids), _port_groups(conn, ids)
    ports = tuple(
        PortSpec(id=p["id"], network_id=p["network_id"], mac=p["mac_address"],
                 fixed_ips=tuple(FixedIp(s, ip) for s, ip in allocs.get(p["id"], [])),
                 device_owner=p["device_owner"], security_group_ids=groups.get(p["id"], ()), host=p["host"],
                 port_security_enabled=bool(p["port_security_enabled"]))
        for p in port_rows)
    group_ids = {g for p in ports for g in p.security_group_ids}
    device_of = {p["id"]: str(p["device_id"]) for p in port_rows}
    routers = _routers(conn, host, net_ids, {p.id: p for p in ports}, device_of)
    vteps = tuple(RemoteVtep(r[0], r[1]) for r in conn.execute(
        "SELECT host, ip FROM host_vteps WHERE host != ? ORDER BY host", (host,)))
    return HostNetworkState(host=host, networks=tuple(networks), subnets=tuple(subnets), ports=ports,
                            security_groups=_groups(conn, group_ids), routers=routers, local_vtep=local_vtep,
                            unrealisable=tuple(unrealisable),
                            vteps=vteps)


def _routers(conn: sqlite3.Connection, host: str, net_ids: set[str],
             ports: Mapping[str, PortSpec], device_of: Mapping[str, str]) -> tuple[RouterSpec, ...]:
    out = []
    for row in fetch_all(conn, "SELECT * FROM routers WHERE host=? ORDER BY id", (host,)):
        ifaces = tuple(
            RouterInterface(p.id, p.fixed_ips[0].subnet_id, p.fixed_ips[0].ip, p.mac)
            for p in ports.values()
            if p.device_owner == OWNER_ROUTER_INTERFACE and p.fixed_ips and device_of.get(p.id) == row["id"])
        gateway = None
        gw_port = ports.get(row["gateway_port_id"] or "")
        if gw_port is not None and gw_port.fixed_ips and row["gateway_network_id"] in net_ids:
            fixed = gw_port.fixed_ips[0]
            gateway = RouterGateway(gw_port.id, row["gateway_network_id"], fixed.subnet_id, fixed.ip, gw_port.mac)
        fips = tuple(FloatingIp(r["fixed_ip"], r["floating_ip"]) for r in fetch_all(
            conn, "SELECT * FROM floating_ips WHERE router_id=? AND fixed_ip IS NOT NULL ORDER BY floating_ip",
            (row["id"],))) if gateway is not None else ()
        out.append(RouterSpec(row["id"], tuple(sorted(ifaces, key=lambda i: i.port_id)), gateway, fips))
    return tuple(out)


def instance_ports(conn: sqlite3.Connection, instance_id: str) -> list[dict[str, Any]]:
    """The instance's ports in attach order, each with its network, fixed IPs and floating IPs."""
    ports = fetch_all(conn, "SELECT p.*, n.name AS network_name, n.mtu FROM ports p JOIN networks n"
                      " ON n.id=p.network_id WHERE p.device_id=? AND p.device_owner LIKE 'compute:%' ORDER BY p.seq",
                      (instance_id,))
    for port in ports:
        port["fixed_ips"] = fetch_all(
            conn, "SELECT a.ip, s.cidr, s.gateway_ip, s.enable_dhcp, s.dns_nameservers, s.ip_version"
            " FROM ip_allocations a JOIN subnets s ON s.id=a.subnet_id WHERE a.port_id=? ORDER BY s.created_at, a.ip",
            (port["id"],))
        port["floating_ips"] = [r["floating_ip"] for r in fetch_all(
            conn, "SELECT floating_ip FROM floating_ips WHERE port_id=? ORDER BY floating_ip", (port["id"],))]
    return ports
