"""/v1/routers (+ interfaces and external gateway) and /v1/floating-ips (+ associate/disassociate).

A router is hosted by the daemon that created it (its `qrouter-` namespace lives there).
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.netcommon import PAGE_QUERY, find_network, find_owned, find_subnet, is_admin, new_mac, notify
from hvd.catalog.cmd_network import OWNER_ROUTER_INTERFACE
from hvd.catalog.cmd_network_l3 import (
    FloatingIpCreate,
    FloatingIpDelete,
    FloatingIpUpdate,
    RouterAddInterface,
    RouterCreate,
    RouterDelete,
    RouterRemoveInterface,
    RouterSetGateway,
    RouterUpdate,
)
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import BadRequest, HvdError, NotFound
from hvd.identity.service import now_iso
from hvd.net.addr import IpAddress


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewayIn(_In):
    network: str = Field(min_length=1, max_length=255, description="External network id or name.")


class RouterIn(_In):
    name: str = Field("", max_length=255, pattern=r"^[^\x00-\x1f]*$")
    external_gateway: GatewayIn | None = None


class RouterPatch(_In):
    name: str = Field(max_length=255, pattern=r"^[^\x00-\x1f]*$")


class InterfaceIn(_In):
    subnet: str | None = Field(None, max_length=255, description="Subnet id or name (the router takes its gateway).")
    port: str | None = Field(None, max_length=255, description="An unbound port id.")


class Interface(BaseModel):
    port_id: str
    subnet_id: str
    ip_address: str


class Gateway(BaseModel):
    network_id: str
    port_id: str
    ip_address: str | None


class RouterOut(BaseModel):
    id: str
    name: str
    project_id: str
    host: str
    external_gateway: Gateway | None
    interfaces: list[Interface]
    created_at: str


class RouterList(BaseModel):
    routers: list[RouterOut]
    next: str | None


class FloatingIpIn(_In):
    floating_network: str = Field(min_length=1, max_length=255, description="External network id or name.")
    floating_ip_address: IpAddress | None = None
    port: str | None = Field(None, max_length=255)
    fixed_ip_address: IpAddress | None = None


class AssociateIn(_In):
    port: str = Field(min_length=1, max_length=255)
    fixed_ip_address: IpAddress | None = None


class Empty(_In):
    pass


class FloatingIpOut(BaseModel):
    id: str
    project_id: str
    floating_network_id: str
    floating_ip_address: str
    port_id: str | None
    fixed_ip_address: str | None
    router_id: str | None
    status: str
    created_at: str


class FloatingIpList(BaseModel):
    floating_ips: list[FloatingIpOut]
    next: str | None


def router_view(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    ifaces = fetch_all(
        conn, "SELECT p.id AS port_id, a.subnet_id, a.ip AS ip_address FROM ports p JOIN ip_allocations a"
        " ON a.port_id=p.id WHERE p.device_id=? AND p.device_owner=? ORDER BY p.seq",
        (row["id"], OWNER_ROUTER_INTERFACE))
    gateway = None
    if row["gateway_port_id"]:
        ip = fetch_one(conn, "SELECT ip FROM ip_allocations WHERE port_id=?", (row["gateway_port_id"],))
        gateway = {"network_id": row["gateway_network_id"], "port_id": row["gateway_port_id"],
                   "ip_address": ip["ip"] if ip else None}
    return {**{k: row[k] for k in ("id", "name", "project_id", "host", "created_at")}, "external_gateway": gateway,
            "interfaces": ifaces}


def fip_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "project_id": row["project_id"], "floating_network_id": row["network_id"],
            "floating_ip_address": row["floating_ip"], "port_id": row["port_id"], "fixed_ip_address": row["fixed_ip"],
            "router_id": row["router_id"], "status": "ACTIVE" if row["port_id"] else "DOWN",
            "created_at": row["created_at"]}


async def _router(request: web.Request, ref: str | None = None) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    return await svc.catalog.read(find_owned, "routers", ref or request.match_info["id"], "Router", ctx,
                                  is_admin(request, ctx))


async def _external(request: web.Request, ref: str) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    network = await svc.catalog.read(find_network, ref, ctx, is_admin(request, ctx))
    if not network["external"]:
        raise BadRequest(f"Network {ref} is not an external network")
    return network


async def _show_router(request: web.Request, router_id: str, status: int = 200) -> web.Response:
    svc = services(request)
    row = await _router(request, router_id)
    location = f"/v1/routers/{router_id}" if status == 201 else None
    return json_response(await svc.catalog.read(router_view, row), status=status, location=location)


async def list_routers(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    admin = is_admin(request, ctx)
    sql, args = ("", ()) if admin else (" WHERE project_id=?", (ctx.project_id,))
    rows = await svc.catalog.read(fetch_all, f"SELECT * FROM routers{sql} ORDER BY created_at, id", args)
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"routers": [await svc.catalog.read(router_view, r) for r in page], "next": nxt})


async def show_router(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    return await _show_router(request, request.match_info["id"])


async def create_router(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, RouterIn)
    external = await _external(request, body.external_gateway.network) if body.external_gateway else None
    rid = str(uuid.uuid4())
    await svc.catalog.propose(RouterCreate(id=rid, project_id=ctx.project_id, name=body.name,
                                           host=svc.config.host_name, created_at=now_iso()))
    if external is not None:
        try:
            await svc.catalog.propose(RouterSetGateway(id=rid, network_id=external["id"], port_id=str(uuid.uuid4()),
                                                       mac=new_mac(), created_at=now_iso()))
        except HvdError:
            await svc.catalog.propose(RouterDelete(id=rid))  # nothing half-created
            raise
    await notify(request)
    return await _show_router(request, rid, status=201)


async def update_router(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, RouterPatch)
    row = await _router(request)
    await svc.catalog.propose(RouterUpdate(id=row["id"], name=body.name))
    return await _show_router(request, row["id"])


async def delete_router(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _router(request)
    await svc.catalog.propose(RouterDelete(id=row["id"]))
    await notify(request)
    return web.Response(status=204)


async def set_gateway(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, GatewayIn)
    row = await _router(request)
    external = await _external(request, body.network)
    await svc.catalog.propose(RouterSetGateway(id=row["id"], network_id=external["id"], port_id=str(uuid.uuid4()),
                                               mac=new_mac(), created_at=now_iso()))
    await notify(request)
    return await _show_router(request, row["id"])


async def clear_gateway(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _router(request)
    await svc.catalog.propose(RouterSetGateway(id=row["id"], network_id=None, port_id="", mac="",
                                               created_at=now_iso()))
    await notify(request)
    return await _show_router(request, row["id"])


async def _interface_refs(request: web.Request) -> tuple[str | None, str | None]:
    svc, ctx = services(request), context(request)
    body = await parse_body(request, InterfaceIn)
    if (body.subnet is None) == (body.port is None):
        raise BadRequest("give either 'subnet' or 'port'")
    admin = is_admin(request, ctx)
    if body.subnet is not None:
        subnet = await svc.catalog.read(find_subnet, body.subnet, ctx, admin)
        if subnet["project_id"] != ctx.project_id and not admin:
            raise NotFound(f"Subnet {body.subnet} could not be found")
        return str(subnet["id"]), None
    assert body.port is not None
    port = await svc.catalog.read(find_owned, "ports", body.port, "Port", ctx, admin)
    return None, str(port["id"])


async def add_interface(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _router(request)
    subnet_id, port_id = await _interface_refs(request)
    await svc.catalog.propose(RouterAddInterface(id=row["id"], subnet_id=subnet_id, port_id=port_id,
                                                 new_port_id=str(uuid.uuid4()), mac=new_mac(), created_at=now_iso()))
    await notify(request)
    return await _show_router(request, row["id"])


async def remove_interface(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _router(request)
    subnet_id, port_id = await _interface_refs(request)
    await svc.catalog.propose(RouterRemoveInterface(id=row["id"], subnet_id=subnet_id, port_id=port_id))
    await notify(request)
    return await _show_router(request, row["id"])


# --- floating IPs ----------------------------------------------------------------------------


async def _fip(request: web.Request, fip_id: str | None = None) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    fip_id = fip_id or request.match_info["id"]
    row = await svc.catalog.read(fetch_one, "SELECT * FROM floating_ips WHERE id=? OR floating_ip=?",
                                 (fip_id, fip_id))
    if row is None or (row["project_id"] != ctx.project_id and not is_admin(request, ctx)):
        raise NotFound(f"Floating IP {fip_id} could not be found")
    return row


async def _port_id(request: web.Request, ref: str) -> str:
    svc, ctx = services(request), context(request)
    return str((await svc.catalog.read(find_owned, "ports", ref, "Port", ctx, False))["id"])


async def list_fips(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    admin = is_admin(request, ctx)
    sql, args = ("", ()) if admin else (" WHERE project_id=?", (ctx.project_id,))
    rows = await svc.catalog.read(fetch_all, f"SELECT * FROM floating_ips{sql} ORDER BY created_at, id", args)
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"floating_ips": [fip_view(r) for r in page], "next": nxt})


async def show_fip(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    return json_response(fip_view(await _fip(request)))


async def create_fip(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, FloatingIpIn)
    network = await _external(request, body.floating_network)
    port_id = await _port_id(request, body.port) if body.port else None
    fid = str(uuid.uuid4())
    await svc.catalog.propose(FloatingIpCreate(
        id=fid, project_id=ctx.project_id, network_id=network["id"], floating_ip=body.floating_ip_address,
        port_id=port_id, fixed_ip=body.fixed_ip_address, fip_port_id=str(uuid.uuid4()), mac=new_mac(),
        created_at=now_iso()))
    await notify(request)
    return json_response(fip_view(await _fip(request, fid)), status=201, location=f"/v1/floating-ips/{fid}")


async def associate_fip(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, AssociateIn)
    row = await _fip(request)
    port_id = await _port_id(request, body.port)
    await svc.catalog.propose(FloatingIpUpdate(id=row["id"], port_id=port_id, fixed_ip=body.fixed_ip_address))
    await notify(request)
    return json_response(fip_view(await _fip(request, row["id"])))


async def disassociate_fip(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    await parse_body(request, Empty)
    row = await _fip(request)
    await svc.catalog.propose(FloatingIpUpdate(id=row["id"], port_id=None))
    await notify(request)
    return json_response(fip_view(await _fip(request, row["id"])))


async def delete_fip(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _fip(request)
    await svc.catalog.propose(FloatingIpDelete(id=row["id"]))
    await notify(request)
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "network"
    base = "/v1/routers"
    router.add("GET", base, list_routers, "List routers", response=RouterList, query=PAGE_QUERY, tag=t)
    router.add("POST", base, create_router, "Create a router (optionally with an external gateway)", body=RouterIn,
               response=RouterOut, status=201, tag=t)
    router.add("GET", base + "/{id}", show_router, "Show a router", response=RouterOut, tag=t)
    router.add("PATCH", base + "/{id}", update_router, "Rename a router", body=RouterPatch, response=RouterOut, tag=t)
    router.add("DELETE", base + "/{id}", delete_router, "Delete a router (no interfaces left)", status=204, tag=t)
    router.add("POST", base + "/{id}/add-interface", add_interface, "Attach a subnet (or port)", body=InterfaceIn,
               response=RouterOut, tag=t)
    router.add("POST", base + "/{id}/remove-interface", remove_interface, "Detach a subnet (or port)",
               body=InterfaceIn, response=RouterOut, tag=t)
    router.add("PUT", base + "/{id}/gateway", set_gateway, "Set the external gateway (SNAT)", body=GatewayIn,
               response=RouterOut, tag=t)
    router.add("DELETE", base + "/{id}/gateway", clear_gateway, "Clear the external gateway", response=RouterOut,
               tag=t)
    fips = "/v1/floating-ips"
    router.add("GET", fips, list_fips, "List floating IPs", response=FloatingIpList, query=PAGE_QUERY, tag=t)
    router.add("POST", fips, create_fip, "Allocate a floating IP (optionally associated)", body=FloatingIpIn,
               response=FloatingIpOut, status=201, tag=t)
    router.add("GET", fips + "/{id}", show_fip, "Show a floating IP", response=FloatingIpOut, tag=t)
    router.add("DELETE", fips + "/{id}", delete_fip, "Release a floating IP", status=204, tag=t)
    router.add("POST", fips + "/{id}/associate", associate_fip, "Associate with a port", body=AssociateIn,
               response=FloatingIpOut, tag=t)
    router.add("POST", fips + "/{id}/disassociate", disassociate_fip, "Disassociate from its port", body=Empty,
               response=FloatingIpOut, tag=t)
