"""Shared by the networking route modules: visibility rules, views and the host hook.

Visibility follows Neutron: a project sees its own resources plus shared and external networks
(and their subnets); admin sees everything. Anything else is a 404, never a 403, so ids of other
projects do not leak.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from typing import Any

from aiohttp import web

from hvd.api.context import RequestContext
from hvd.api.services import services
from hvd.catalog import queries
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import Conflict, Forbidden, NotFound
from hvd.net.model import generate_mac

log = logging.getLogger(__name__)

NETWORK = "network"  # key of the NetworkService in ApiServices.extra
_rng = random.SystemRandom()

PAGE_QUERY = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"))


def new_mac() -> str:
    """A random `fa:16:3e:..` MAC (the proposer chooses it; apply refuses a duplicate)."""
    return generate_mac(_rng)


def is_admin(request: web.Request, ctx: RequestContext) -> bool:
    """Whether the caller acts on every project's networking (the cross-project scope rule)."""
    return services(request).policy.all_projects(ctx.roles)


def check_port_on_network(request: web.Request, ctx: RequestContext, network: dict[str, Any], *,
                          port_security_off: bool = False, chosen_mac: bool = False,
                          chosen_ip: bool = False) -> None:
    """Neutron's `network_owner or admin` rules: on a network the caller's project does not own
    (a shared one), only the owner or an admin may turn port security off or choose the port's
    MAC or fixed address (each would let a guest spoof another tenant's traffic there)."""
    if network["project_id"] == ctx.project_id or is_admin(request, ctx):
        return
    for refused, what in ((port_security_off, "disable port security"), (chosen_mac, "choose the MAC address"),
                          (chosen_ip, "choose the fixed IP address")):
        if refused:
            raise Forbidden(f"only the owner of network {network['id']} or an admin may {what} of a port on it")


def sees_provider(request: web.Request, ctx: RequestContext) -> bool:
    """Whether network views show the provider fields (type, physical network, segment)."""
    return services(request).policy.allowed(ctx.roles, "network:provider")


async def notify(request: web.Request) -> None:
    """Tell this host's network service the catalog changed (it converges; errors are logged)."""
    net = services(request).extra.get(NETWORK)
    if net is not None:
        await net.changed()


def _owned_where(ctx: RequestContext, admin: bool, alias: str = "") -> tuple[str, tuple[Any, ...]]:
    return ("1=1", ()) if admin else (f"{alias}project_id=?", (ctx.project_id,))


def visible_networks(conn: sqlite3.Connection, ctx: RequestContext, admin: bool) -> list[dict[str, Any]]:
    if admin:
        return fetch_all(conn, "SELECT * FROM networks ORDER BY created_at, id")
    return fetch_all(conn, "SELECT * FROM networks WHERE project_id=? OR shared=1 OR external=1"
                     " ORDER BY created_at, id", (ctx.project_id,))


def find_network(conn: sqlite3.Connection, ref: str, ctx: RequestContext, admin: bool) -> dict[str, Any]:
    """A network the caller may see, by id or name."""
    where, args = ("1=1", ()) if admin else ("project_id=? OR shared=1 OR external=1", (ctx.project_id,))
    return queries.find(conn, "networks", ref, "Network", where, args)


def find_owned(conn: sqlite3.Connection, table: str, ref: str, what: str, ctx: RequestContext,
               admin: bool) -> dict[str, Any]:
    """A row of the caller's project (any for admin) by id or name."""
    where, args = _owned_where(ctx, admin)
    return queries.find(conn, table, ref, what, where, args)


def visible_subnets(conn: sqlite3.Connection, ctx: RequestContext, admin: bool) -> list[dict[str, Any]]:
    if admin:
        return fetch_all(conn, "SELECT * FROM subnets ORDER BY created_at, id")
    return fetch_all(
        conn, "SELECT s.* FROM subnets s JOIN networks n ON n.id=s.network_id"
        " WHERE s.project_id=? OR n.shared=1 OR n.external=1 ORDER BY s.created_at, s.id", (ctx.project_id,))


def find_subnet(conn: sqlite3.Connection, ref: str, ctx: RequestContext, admin: bool) -> dict[str, Any]:
    rows = [s for s in visible_subnets(conn, ctx, admin) if ref in (s["id"], s["name"])]
    by_id = [s for s in rows if s["id"] == ref]
    if by_id:
        return by_id[0]
    if not rows:
        raise NotFound(f"Subnet {ref} could not be found")
    if len(rows) > 1:
        raise Conflict(f"more than one subnet is named '{ref}'; use its id")
    return rows[0]


def subnet_view(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return {
        **{k: row[k] for k in ("id", "name", "network_id", "project_id", "cidr", "ip_version", "gateway_ip",
                               "created_at")},
        "allocation_pools": [{"start": a, "end": b} for a, b in json.loads(row["allocation_pools"])],
        "enable_dhcp": bool(row["enable_dhcp"]),
        "dns_nameservers": json.loads(row["dns_nameservers"]),
        "host_routes": json.loads(row["host_routes"]),
    }


def network_view(conn: sqlite3.Connection, row: dict[str, Any], provider_fields: bool) -> dict[str, Any]:
    subnets = [r["id"] for r in fetch_all(conn, "SELECT id FROM subnets WHERE network_id=? ORDER BY created_at, id",
                                          (row["id"],))]
    provider = {k: row[k] if provider_fields else None for k in ("physical_network", "segmentation_id")}
    return {
        **{k: row[k] for k in ("id", "name", "project_id", "mtu", "status", "created_at")},
        "network_type": row["type"] if provider_fields else None,
        **provider,
        "shared": bool(row["shared"]),
        "external": bool(row["external"]),
        "subnets": subnets,
    }


def port_view(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    ips = fetch_all(conn, "SELECT a.subnet_id, a.ip AS ip_address FROM ip_allocations a JOIN subnets s"
                    " ON s.id=a.subnet_id WHERE a.port_id=? ORDER BY s.created_at, a.ip", (row["id"],))
    groups = [r["group_id"] for r in fetch_all(conn, "SELECT group_id FROM port_security_groups WHERE port_id=?"
                                               " ORDER BY group_id", (row["id"],))]
    return {
        **{k: row[k] for k in ("id", "name", "network_id", "project_id", "device_owner", "device_id", "host",
                               "status", "created_at")},
        "mac_address": row["mac_address"],
        "fixed_ips": ips,
        "security_groups": groups,
        "port_security_enabled": bool(row["port_security_enabled"]),
    }


def port_of(conn: sqlite3.Connection, port_id: str) -> dict[str, Any]:
    row = fetch_one(conn, "SELECT * FROM ports WHERE id=?", (port_id,))
    if row is None:
        raise NotFound(f"Port {port_id} could not be found")
    return port_view(conn, row)
