"""Ports of servers: the `networks` of POST /v1/servers, and /v1/servers/{id}/interfaces.

Ports are created (or user ports bound) in the catalog before the server record, so a bad
network, address or port is a 4xx with nothing left behind. A server's own ports are deleted
with it; ports the user passed in are only unbound.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.forward import to_owner
from hvd.api.helpers import context, json_response, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.netcommon import (
    NETWORK,
    check_port_on_network,
    find_network,
    find_owned,
    is_admin,
    new_mac,
    notify,
    port_of,
)
from hvd.api.v1.server_lookup import visible_server
from hvd.catalog.cmd_network import FixedIpRequest, PortCreate, PortDelete, PortUpdate
from hvd.catalog.sql import fetch_all
from hvd.errors import BadRequest, Conflict, HvdError, InvalidState, NotFound
from hvd.identity.service import now_iso
from hvd.net.addr import IpAddress

log = logging.getLogger(__name__)

COMPUTE_OWNER = "compute:nova"


class NetworkRequest(BaseModel):
    """One NIC: a network (optionally with a fixed IP), or an existing unbound port."""

    model_config = ConfigDict(extra="forbid")
    network: str | None = Field(None, min_length=1, max_length=255, description="Network id or name.")
    port: str | None = Field(None, min_length=1, max_length=255, description="An existing, unbound port id.")
    fixed_ip: IpAddress | None = Field(None, description="With `network`: the address to take.")


Networks = list[NetworkRequest] | Literal["auto", "none"]


class PortView(BaseModel):
    id: str
    network_id: str
    mac_address: str
    fixed_ips: list[dict[str, str]]
    status: str
    host: str


class InterfaceList(BaseModel):
    interfaces: list[PortView]


@dataclass(frozen=True)
class PortPlan:
    network_id: str | None = None
    port_id: str | None = None
    fixed_ip: str | None = None


async def resolve(request: web.Request, networks: Networks, count: int = 1) -> list[PortPlan]:
    """Check every requested NIC (404/400 before anything is created); "auto" = the project's
    only network (none: no NIC; several: 409, name one)."""
    svc, ctx = services(request), context(request)
    admin = is_admin(request, ctx)
    if networks == "none":
        return []
    if networks == "auto":
        rows = await svc.catalog.read(fetch_all, "SELECT id FROM networks WHERE project_id=? AND external=0",
                                      (ctx.project_id,))
        if not rows:
            rows = await svc.catalog.read(fetch_all, "SELECT id FROM networks WHERE shared=1 AND external=0")
        if len(rows) > 1:
            raise Conflict("Multiple possible networks found, use a network id to be more specific")
        return [PortPlan(network_id=str(r["id"])) for r in rows]
    plans = []
    for req in networks:
        if (req.network is None) == (req.port is None) or (req.port is not None and req.fixed_ip is not None):
            raise BadRequest("each entry of 'networks' takes 'network' (optionally with 'fixed_ip') or 'port'")
        if req.port is not None:
            port = await svc.catalog.read(find_owned, "ports", req.port, "Port", ctx, admin)
            if port["device_id"] or port["device_owner"]:
                raise Conflict(f"Port {req.port} is still in use by '{port['device_id'] or port['device_owner']}'")
            plans.append(PortPlan(port_id=str(port["id"])))
            continue
        assert req.network is not None
        network = await svc.catalog.read(find_network, req.network, ctx, admin)
        if network["project_id"] != ctx.project_id and not network["shared"] and not admin:
            raise NotFound(f"Network {req.network} could not be found")
        check_port_on_network(request, ctx, network, chosen_ip=req.fixed_ip is not None)
        plans.append(PortPlan(network_id=str(network["id"]), fixed_ip=req.fixed_ip))
    if count > 1 and any(p.port_id or p.fixed_ip for p in plans):
        raise BadRequest("a port or fixed IP can be given for one server only (max_count is above 1)")
    return plans


async def create_for(request: web.Request, instance_id: str, plans: list[PortPlan]) -> list[tuple[str, bool]]:
    """Make (or bind) the ports of one server; returns (port id, created). All or nothing."""
    svc, ctx = services(request), context(request)
    done: list[tuple[str, bool]] = []
    try:
        for plan in plans:
            if plan.port_id is not None:
                await svc.catalog.propose(PortUpdate(id=plan.port_id, device_id=instance_id,
                                                     device_owner=COMPUTE_OWNER, expect_device_id=""))
                done.append((plan.port_id, False))
                continue
            assert plan.network_id is not None
            pid = str(uuid.uuid4())
            fixed = [FixedIpRequest(ip_address=plan.fixed_ip)] if plan.fixed_ip else None
            await svc.catalog.propose(PortCreate(
                id=pid, network_id=plan.network_id, project_id=ctx.project_id, mac=new_mac(), fixed_ips=fixed,
                device_owner=COMPUTE_OWNER, device_id=instance_id, auto_delete=True,
                default_sg_id=str(uuid.uuid4()), created_at=now_iso()))
            done.append((pid, True))
    except BaseException:
        await undo(request, done)
        raise
    return done


async def undo(request: web.Request, ports: list[tuple[str, bool]]) -> None:
    """Delete ports `create_for` made and unbind the ones it bound."""
    catalog = services(request).catalog
    for port_id, created in reversed(ports):
        try:
            if created:
                await catalog.propose(PortDelete(id=port_id, internal=True))
            else:
                await catalog.propose(PortUpdate(id=port_id, device_id="", device_owner="", host=""))
        except HvdError as exc:  # keep undoing the rest
            log.warning("could not undo port %s: %s", port_id, exc.message)


# --- /v1/servers/{id}/interfaces -------------------------------------------------------------



async def _ports_of(request: web.Request, instance_id: str) -> list[dict[str, Any]]:
    catalog = services(request).catalog
    rows = await catalog.read(fetch_all, "SELECT id FROM ports WHERE device_id=? AND device_owner LIKE 'compute:%'"
                              " ORDER BY seq", (instance_id,))
    return [await catalog.read(port_of, r["id"]) for r in rows]


async def list_interfaces(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    inst = await visible_server(request)
    return json_response({"interfaces": await _ports_of(request, inst["id"])})


def _check_attachable(request: web.Request, inst: dict[str, Any]) -> None:
    svc = services(request)
    if inst["task_state"] is not None or inst["vm_state"] not in ("active", "stopped", "paused"):
        raise InvalidState(f"Cannot change interfaces of instance {inst['id']} while it is {inst['vm_state']}"
                           f"/{inst['task_state']}")
    if inst["host"] != svc.config.host_name:
        raise Conflict(f"instance {inst['id']} is not on this host")
    compute = svc.extra["compute"]
    if not compute.manager.driver.capabilities.supports_attach_interface:
        raise Conflict("this host's compute driver cannot attach interfaces")


async def attach_interface(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:action")
    body = await parse_body(request, NetworkRequest)
    inst = await visible_server(request)
    forwarded = await to_owner(request, inst, svc.extra["compute"].placement.is_up)
    if forwarded is not None:  # the owning host changes its NICs
        return forwarded
    _check_attachable(request, inst)
    compute, net = svc.extra["compute"], svc.extra[NETWORK]
    plans = await resolve(request, [body])
    compute.locks.acquire(inst["id"], "interface_attach")
    try:
        made = await create_for(request, inst["id"], plans)
        port_id = made[0][0]
        try:
            await net.plug_instance(inst)
            nic = next(n for n in await net.nics_of(inst["id"]) if n.tap.endswith(port_id[:11]))
            if int(inst["power_state"]) in (1, 3):  # running or paused: hot-plug
                await compute.manager.driver.attach_interface(inst["id"], nic)
        except BaseException:
            await undo(request, made)
            await notify(request)
            raise
    finally:
        compute.locks.release(inst["id"])
    return json_response(await svc.catalog.read(port_of, port_id), status=201,
                         location=f"/v1/servers/{inst['id']}/interfaces/{port_id}")


async def detach_interface(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:action")
    inst = await visible_server(request)
    forwarded = await to_owner(request, inst, svc.extra["compute"].placement.is_up)
    if forwarded is not None:  # the owning host changes its NICs
        return forwarded
    _check_attachable(request, inst)
    port_id = request.match_info["port"]
    ports = await svc.catalog.read(fetch_all, "SELECT * FROM ports WHERE id=? AND device_id=?", (port_id, inst["id"]))
    if not ports:
        raise NotFound(f"Port {port_id} is not attached to instance {inst['id']}")
    compute, net = svc.extra["compute"], svc.extra[NETWORK]
    compute.locks.acquire(inst["id"], "interface_detach")
    try:
        nic = next((n for n in await net.nics_of(inst["id"]) if n.tap.endswith(port_id[:11])), None)
        if nic is not None and int(inst["power_state"]) in (1, 3):
            await compute.manager.driver.detach_interface(inst["id"], nic)
        await undo(request, [(port_id, bool(ports[0]["auto_delete"]))])
        await notify(request)
    finally:
        compute.locks.release(inst["id"])
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "compute"
    base = "/v1/servers/{id}/interfaces"
    router.add("GET", base, list_interfaces, "The server's ports", response=InterfaceList, tag=t)
    router.add("POST", base, attach_interface, "Attach a port (a new one on a network, or an unbound one)",
               body=NetworkRequest, response=PortView, status=201, tag=t)
    router.add("DELETE", base + "/{port}", detach_interface, "Detach a port (deleted if the server made it)",
               status=204, tag=t)
