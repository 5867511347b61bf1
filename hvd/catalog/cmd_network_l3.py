"""Apply handlers: security groups (and rules), routers (+ interfaces, gateway), floating IPs.

Router and floating-IP ports are ordinary ports of their networks, so their addresses come from
the same IPAM as every other port (`hvd.catalog.cmd_network`).
"""

from __future__ import annotations

import ipaddress
import sqlite3
import uuid
from typing import Any, Literal

from hvd.bounds import Int64
from hvd.catalog import quota
from hvd.catalog.cmd_network import (
    OWNER_FLOATINGIP,
    OWNER_ROUTER_GATEWAY,
    OWNER_ROUTER_INTERFACE,
    FixedIpRequest,
    _allocate,
    _delete_port_rows,
    _in_use,
    _insert_port,
    ensure_default_group,
)
from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import fetch_all, fetch_one, require
from hvd.errors import BadRequest, Conflict, NotFound
from hvd.net.addr import IpAddress, IpPrefix


class SecurityGroupCreate(Command):
    type: Literal["security_group.create"] = "security_group.create"
    id: str
    project_id: str
    name: str
    description: str = ""
    default_sg_id: str
    created_at: str


class SecurityGroupUpdate(Command):
    type: Literal["security_group.update"] = "security_group.update"
    id: str
    name: str | None = None
    description: str | None = None


class SecurityGroupDelete(Command):
    type: Literal["security_group.delete"] = "security_group.delete"
    id: str


class SecurityGroupRuleCreate(Command):
    type: Literal["security_group_rule.create"] = "security_group_rule.create"
    id: str
    group_id: str
    project_id: str
    direction: Literal["ingress", "egress"]
    ethertype: Literal["IPv4", "IPv6"] = "IPv4"
    protocol: str | None = None
    port_range_min: Int64 | None = None
    port_range_max: Int64 | None = None
    remote_ip_prefix: IpPrefix | None = None
    remote_group_id: str | None = None
    created_at: str


class SecurityGroupRuleDelete(Command):
    type: Literal["security_group_rule.delete"] = "security_group_rule.delete"
    id: str


class RouterCreate(Command):
    type: Literal["router.create"] = "router.create"
    id: str
    project_id: str
    name: str
    host: str
    created_at: str


class RouterUpdate(Command):
    type: Literal["router.update"] = "router.update"
    id: str
    name: str


class RouterDelete(Command):
    type: Literal["router.delete"] = "router.delete"
    id: str


class RouterSetGateway(Command):
    """`network_id` None clears the gateway."""

    type: Literal["router.set_gateway"] = "router.set_gateway"
    id: str
    network_id: str | None
    port_id: str
    mac: str
    created_at: str


class RouterAddInterface(Command):
    type: Literal["router.add_interface"] = "router.add_interface"
    id: str
    subnet_id: str | None = None
    port_id: str | None = None
    new_port_id: str
    mac: str
    created_at: str


class RouterRemoveInterface(Command):
    type: Literal["router.remove_interface"] = "router.remove_interface"
    id: str
    subnet_id: str | None = None
    port_id: str | None = None


class FloatingIpCreate(Command):
    type: Literal["floating_ip.create"] = "floating_ip.create"
    id: str
    project_id: str
    network_id: str
    floating_ip: IpAddress | None = None
    port_id: str | None = None
    fixed_ip: IpAddress | None = None
    fip_port_id: str
    mac: str
    created_at: str


class FloatingIpUpdate(Command):
    """Associate with `port_id` (None = disassociate)."""

    type: Literal["floating_ip.update"] = "floating_ip.update"
    id: str
    port_id: str | None = None
    fixed_ip: IpAddress | None = None


class FloatingIpDelete(Command):
    type: Literal["floating_ip.delete"] = "floating_ip.delete"
    id: str



@handles(SecurityGroupCreate)
def security_group_create(conn: sqlite3.Connection, cmd: SecurityGroupCreate) -> Result:
    ensure_default_group(conn, cmd.project_id, cmd.default_sg_id, cmd.created_at)
    if cmd.name == "default":
        raise Conflict("the project already has a security group named 'default'")
    quota.check(conn, cmd.project_id, "security_groups", 1, _in_use(conn, cmd.project_id, "security_groups"))
    conn.execute("INSERT INTO security_groups VALUES (?,?,?,?,?)",
                 (cmd.id, cmd.project_id, cmd.name, cmd.description, cmd.created_at))
    for n, ethertype in enumerate(("IPv4", "IPv6")):  # Neutron gives new groups open egress
        rule_id = str(uuid.uuid5(uuid.UUID(cmd.id), str(n)))
        conn.execute("INSERT INTO security_group_rules VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (rule_id, cmd.id, cmd.project_id, "egress", ethertype, None, None, None, None, None,
                      cmd.created_at))
    return {"id": cmd.id}


@handles(SecurityGroupUpdate)
def security_group_update(conn: sqlite3.Connection, cmd: SecurityGroupUpdate) -> Result:
    row = require(conn, "security_groups", "id", cmd.id, "Security group")
    if cmd.name is not None and cmd.name != row["name"]:
        if row["name"] == "default" or cmd.name == "default":
            raise Conflict("the default security group keeps its name")
        conn.execute("UPDATE security_groups SET name=? WHERE id=?", (cmd.name, cmd.id))
    if cmd.description is not None:
        conn.execute("UPDATE security_groups SET description=? WHERE id=?", (cmd.description, cmd.id))
    return {"id": cmd.id}


@handles(SecurityGroupDelete)
def security_group_delete(conn: sqlite3.Connection, cmd: SecurityGroupDelete) -> Result:
    row = require(conn, "security_groups", "id", cmd.id, "Security group")
    if row["name"] == "default":
        raise Conflict("the default security group cannot be deleted")
    if fetch_one(conn, "SELECT port_id FROM port_security_groups WHERE group_id=?", (cmd.id,)):
        raise Conflict(f"Security group {cmd.id} is in use by one or more ports")
    if fetch_one(conn, "SELECT id FROM security_group_rules WHERE remote_group_id=? AND group_id!=?",
                 (cmd.id, cmd.id)):
        raise Conflict(f"Security group {cmd.id} is referenced by rules of another group")
    conn.execute("DELETE FROM security_group_rules WHERE group_id=?", (cmd.id,))
    conn.execute("DELETE FROM security_groups WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(SecurityGroupRuleCreate)
def security_group_rule_create(conn: sqlite3.Connection, cmd: SecurityGroupRuleCreate) -> Result:
    group = require(conn, "security_groups", "id", cmd.group_id, "Security group")
    if cmd.remote_group_id is not None:
        remote = fetch_one(conn, "SELECT project_id FROM security_groups WHERE id=?", (cmd.remote_group_id,))
        if remote is None or remote["project_id"] != group["project_id"]:
            raise NotFound(f"Security group {cmd.remote_group_id} could not be found")
    in_use = _in_use(conn, group["project_id"], "security_group_rules")
    quota.check(conn, group["project_id"], "security_group_rules", 1, in_use)
    values = (cmd.direction, cmd.ethertype, cmd.protocol, cmd.port_range_min, cmd.port_range_max,
              cmd.remote_ip_prefix, cmd.remote_group_id)
    for rule in fetch_all(conn, "SELECT * FROM security_group_rules WHERE group_id=?", (cmd.group_id,)):
        if tuple(rule[k] for k in ("direction", "ethertype", "protocol", "port_range_min", "port_range_max",
                                   "remote_ip_prefix", "remote_group_id")) == values:
            raise Conflict(f"Security group rule already exists. Rule id is {rule['id']}.")
    conn.execute("INSERT INTO security_group_rules VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (cmd.id, cmd.group_id, group["project_id"], *values, cmd.created_at))
    return {"id": cmd.id}


@handles(SecurityGroupRuleDelete)
def security_group_rule_delete(conn: sqlite3.Connection, cmd: SecurityGroupRuleDelete) -> Result:
    require(conn, "security_group_rules", "id", cmd.id, "Security group rule")
    conn.execute("DELETE FROM security_group_rules WHERE id=?", (cmd.id,))
    return {"id": cmd.id}




# --- routers ---------------------------------------------------------------------------------


def _router_ports(conn: sqlite3.Connection, router_id: str, owner: str) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT * FROM ports WHERE device_id=? AND device_owner=? ORDER BY seq", (router_id, owner))


@handles(RouterCreate)
def router_create(conn: sqlite3.Connection, cmd: RouterCreate) -> Result:
    quota.check(conn, cmd.project_id, "routers", 1, _in_use(conn, cmd.project_id, "routers"))
    conn.execute("INSERT INTO routers VALUES (?,?,?,?,?,?,?)",
                 (cmd.id, cmd.project_id, cmd.name, cmd.host, None, None, cmd.created_at))
    return {"id": cmd.id}


@handles(RouterUpdate)
def router_update(conn: sqlite3.Connection, cmd: RouterUpdate) -> Result:
    require(conn, "routers", "id", cmd.id, "Router")
    conn.execute("UPDATE routers SET name=? WHERE id=?", (cmd.name, cmd.id))
    return {"id": cmd.id}


def _clear_gateway(conn: sqlite3.Connection, router: dict[str, Any]) -> None:
    if fetch_one(conn, "SELECT id FROM floating_ips WHERE router_id=?", (router["id"],)):
        raise Conflict(f"Gateway cannot be updated for router {router['id']}: floating IPs use it")
    if router["gateway_port_id"]:
        _delete_port_rows(conn, router["gateway_port_id"])
    conn.execute("UPDATE routers SET gateway_network_id=NULL, gateway_port_id=NULL WHERE id=?", (router["id"],))


@handles(RouterDelete)
def router_delete(conn: sqlite3.Connection, cmd: RouterDelete) -> Result:
    router = require(conn, "routers", "id", cmd.id, "Router")
    if _router_ports(conn, cmd.id, OWNER_ROUTER_INTERFACE):
        raise Conflict(f"Router {cmd.id} still has ports (remove its interfaces first)")
    _clear_gateway(conn, router)
    conn.execute("DELETE FROM routers WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(RouterSetGateway)
def router_set_gateway(conn: sqlite3.Connection, cmd: RouterSetGateway) -> Result:
    router = require(conn, "routers", "id", cmd.id, "Router")
    if cmd.network_id == router["gateway_network_id"]:
        return {"id": cmd.id}
    _clear_gateway(conn, router)
    if cmd.network_id is None:
        return {"id": cmd.id}
    network = require(conn, "networks", "id", cmd.network_id, "Network")
    if not network["external"]:
        raise BadRequest(f"Network {cmd.network_id} is not an external network")
    port = _insert_port(conn, cmd.port_id, network, "", "", cmd.mac, OWNER_ROUTER_GATEWAY, cmd.id, router["host"],
                        False, cmd.created_at)
    _allocate(conn, port, None)
    if not fetch_one(conn, "SELECT ip FROM ip_allocations WHERE port_id=?", (cmd.port_id,)):
        raise BadRequest(f"external network {cmd.network_id} has no subnet")
    conn.execute("UPDATE routers SET gateway_network_id=?, gateway_port_id=? WHERE id=?",
                 (cmd.network_id, cmd.port_id, cmd.id))
    return {"id": cmd.id}


@handles(RouterAddInterface)
def router_add_interface(conn: sqlite3.Connection, cmd: RouterAddInterface) -> Result:
    router = require(conn, "routers", "id", cmd.id, "Router")
    if (cmd.subnet_id is None) == (cmd.port_id is None):
        raise BadRequest("give either subnet_id or port_id")
    attached = {a["subnet_id"] for p in _router_ports(conn, cmd.id, OWNER_ROUTER_INTERFACE)
                for a in fetch_all(conn, "SELECT subnet_id FROM ip_allocations WHERE port_id=?", (p["id"],))}
    if cmd.subnet_id is not None:
        subnet = require(conn, "subnets", "id", cmd.subnet_id, "Subnet")
        if subnet["gateway_ip"] is None:
            raise BadRequest(f"Bad router request: subnet {cmd.subnet_id} has no gateway IP")
        if cmd.subnet_id in attached:
            raise Conflict(f"Router {cmd.id} already has an interface on subnet {cmd.subnet_id}")
        network = require(conn, "networks", "id", subnet["network_id"], "Network")
        port = _insert_port(conn, cmd.new_port_id, network, router["project_id"], "", cmd.mac,
                            OWNER_ROUTER_INTERFACE, cmd.id, router["host"], False, cmd.created_at)
        _allocate(conn, port, [FixedIpRequest(subnet_id=cmd.subnet_id, ip_address=subnet["gateway_ip"])])
        return {"id": cmd.id, "port_id": cmd.new_port_id, "subnet_id": cmd.subnet_id}
    port = require(conn, "ports", "id", cmd.port_id, "Port")
    if port["device_id"] or port["device_owner"]:
        raise Conflict(f"Port {cmd.port_id} is in use by device '{port['device_id'] or port['device_owner']}'")
    subnets = [a["subnet_id"] for a in fetch_all(conn, "SELECT subnet_id FROM ip_allocations WHERE port_id=?",
                                                  (cmd.port_id,))]
    if not subnets:
        raise BadRequest(f"Bad router request: port {cmd.port_id} has no fixed IP")
    if attached & set(subnets):
        raise Conflict(f"Router {cmd.id} already has an interface on subnet {subnets[0]}")
    conn.execute("UPDATE ports SET device_owner=?, device_id=?, host=?, status='ACTIVE', port_security_enabled=0"
                 " WHERE id=?", (OWNER_ROUTER_INTERFACE, cmd.id, router["host"], cmd.port_id))
    conn.execute("DELETE FROM port_security_groups WHERE port_id=?", (cmd.port_id,))
    return {"id": cmd.id, "port_id": cmd.port_id, "subnet_id": subnets[0]}


@handles(RouterRemoveInterface)
def router_remove_interface(conn: sqlite3.Connection, cmd: RouterRemoveInterface) -> Result:
    require(conn, "routers", "id", cmd.id, "Router")
    ports = _router_ports(conn, cmd.id, OWNER_ROUTER_INTERFACE)
    found = None
    for port in ports:
        subnets = {a["subnet_id"] for a in fetch_all(conn, "SELECT subnet_id FROM ip_allocations WHERE port_id=?",
                                                      (port["id"],))}
        if port["id"] == cmd.port_id or (cmd.subnet_id is not None and cmd.subnet_id in subnets):
            found = (port, subnets)
    if found is None:
        raise NotFound(f"Router {cmd.id} has no interface on {cmd.subnet_id or cmd.port_id}")
    port, subnets = found
    for fip in fetch_all(conn, "SELECT * FROM floating_ips WHERE router_id=?", (cmd.id,)):
        for sub in fetch_all(conn, f"SELECT cidr FROM subnets WHERE id IN ({','.join('?' * len(subnets))})",
                             tuple(subnets)):
            if ipaddress.ip_address(fip["fixed_ip"]) in ipaddress.ip_network(sub["cidr"]):
                raise Conflict(f"Router interface for subnet {sub['cidr']} on router {cmd.id} cannot be deleted,"
                               f" as it is required by one or more floating IPs ({fip['id']})")
    _delete_port_rows(conn, port["id"])
    return {"id": cmd.id, "port_id": port["id"]}


# --- floating IPs ----------------------------------------------------------------------------


def _fip_target(conn: sqlite3.Connection, network_id: str, project_id: str, port_id: str,
                fixed_ip: str | None) -> tuple[str, str]:
    """(fixed IP, router id) for associating a floating IP of `network_id` with `port_id`."""
    port = fetch_one(conn, "SELECT * FROM ports WHERE id=?", (port_id,))
    if port is None or port["project_id"] != project_id:
        raise NotFound(f"Port {port_id} could not be found")
    allocs = fetch_all(conn, "SELECT a.ip, s.id AS subnet_id FROM ip_allocations a JOIN subnets s ON s.id=a.subnet_id"
                       " WHERE a.port_id=? AND s.ip_version=4 ORDER BY s.created_at", (port_id,))
    if fixed_ip is not None:
        allocs = [a for a in allocs if a["ip"] == fixed_ip]
        if not allocs:
            raise BadRequest(f"Port {port_id} does not have fixed ip {fixed_ip}")
    if not allocs:
        raise BadRequest(f"Port {port_id} has no IPv4 address to associate a floating IP with")
    ip, subnet_id = allocs[0]["ip"], allocs[0]["subnet_id"]
    router = fetch_one(
        conn, "SELECT r.id FROM routers r JOIN ports p ON p.device_id=r.id AND p.device_owner=?"
        " JOIN ip_allocations a ON a.port_id=p.id WHERE r.gateway_network_id=? AND a.subnet_id=? ORDER BY r.id",
        (OWNER_ROUTER_INTERFACE, network_id, subnet_id))
    if router is None:
        raise BadRequest(f"External network {network_id} is not reachable from subnet {subnet_id}: no router"
                         f" connects them")
    taken = fetch_one(conn, "SELECT id FROM floating_ips WHERE network_id=? AND fixed_ip=?", (network_id, ip))
    if taken is not None:
        raise Conflict(f"fixed IP {ip} already has floating IP {taken['id']} on network {network_id}")
    return ip, str(router["id"])


@handles(FloatingIpCreate)
def floating_ip_create(conn: sqlite3.Connection, cmd: FloatingIpCreate) -> Result:
    network = require(conn, "networks", "id", cmd.network_id, "Network")
    if not network["external"]:
        raise BadRequest(f"Network {cmd.network_id} is not a valid external network")
    quota.check(conn, cmd.project_id, "floating_ips", 1, _in_use(conn, cmd.project_id, "floating_ips"))
    fixed, router_id = (None, None)
    if cmd.port_id is not None:
        fixed, router_id = _fip_target(conn, cmd.network_id, cmd.project_id, cmd.port_id, cmd.fixed_ip)
    port = _insert_port(conn, cmd.fip_port_id, network, "", "", cmd.mac, OWNER_FLOATINGIP, cmd.id, "", False,
                        cmd.created_at)
    _allocate(conn, port, [FixedIpRequest(ip_address=cmd.floating_ip)] if cmd.floating_ip else None)
    row = fetch_one(conn, "SELECT ip FROM ip_allocations WHERE port_id=?", (cmd.fip_port_id,))
    if row is None:
        raise BadRequest(f"external network {cmd.network_id} has no subnet")
    conn.execute("INSERT INTO floating_ips VALUES (?,?,?,?,?,?,?,?,?)",
                 (cmd.id, cmd.project_id, cmd.network_id, cmd.fip_port_id, row["ip"], cmd.port_id, fixed, router_id,
                  cmd.created_at))
    return {"id": cmd.id, "floating_ip": row["ip"]}


@handles(FloatingIpUpdate)
def floating_ip_update(conn: sqlite3.Connection, cmd: FloatingIpUpdate) -> Result:
    fip = require(conn, "floating_ips", "id", cmd.id, "Floating IP")
    fixed, router_id = (None, None)
    if cmd.port_id is not None:
        conn.execute("UPDATE floating_ips SET fixed_ip=NULL WHERE id=?", (cmd.id,))  # re-associating is fine
        fixed, router_id = _fip_target(conn, fip["network_id"], fip["project_id"], cmd.port_id, cmd.fixed_ip)
    conn.execute("UPDATE floating_ips SET port_id=?, fixed_ip=?, router_id=? WHERE id=?",
                 (cmd.port_id, fixed, router_id, cmd.id))
    return {"id": cmd.id}


@handles(FloatingIpDelete)
def floating_ip_delete(conn: sqlite3.Connection, cmd: FloatingIpDelete) -> Result:
    fip = require(conn, "floating_ips", "id", cmd.id, "Floating IP")
    conn.execute("DELETE FROM floating_ips WHERE id=?", (cmd.id,))
    _delete_port_rows(conn, fip["fip_port_id"])
    return {"id": cmd.id}
