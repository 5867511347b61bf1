"""/v1/networks, /v1/subnets, /v1/ports (routers, floating IPs and security groups register from
`hvd.api.v1.routers` and `hvd.api.v1.secgroups` through this module's `register`)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1 import routers, secgroups, server_ports
from hvd.api.v1.netcommon import (
    PAGE_QUERY,
    check_port_on_network,
    find_network,
    find_owned,
    find_subnet,
    is_admin,
    network_view,
    new_mac,
    notify,
    port_of,
    port_view,
    sees_provider,
    subnet_view,
    visible_networks,
    visible_subnets,
)
from hvd.bounds import SafeInt
from hvd.catalog.cmd_network import (
    FixedIpRequest,
    HostRouteIn,
    NetworkCreate,
    NetworkDelete,
    NetworkUpdate,
    PortCreate,
    PortDelete,
    PortUpdate,
    SubnetCreate,
    SubnetDelete,
    SubnetUpdate,
)
from hvd.catalog.sql import fetch_all
from hvd.config import Config
from hvd.errors import BadRequest, NotFound
from hvd.identity.service import now_iso
from hvd.net.addr import MAX_DNS_NAMESERVERS, MAX_HOST_ROUTES, IpAddress, IpNetwork

Name = Field("", max_length=255, pattern=r"^[^\x00-\x1f]*$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkIn(_In):
    name: str = Name
    network_type: Literal["local", "flat", "vlan", "vxlan"] | None = Field(None, description="Provider (admin).")
    physical_network: str | None = Field(None, max_length=64, description="Physical label (admin).")
    segmentation_id: SafeInt | None = Field(None, description="VLAN id or VNI (admin); omitted = next free.")
    mtu: int | None = Field(None, ge=68, le=9000)
    shared: bool = Field(False, description="Usable by every project (admin).")
    external: bool = Field(False, description="Router gateways and floating IPs (admin).")


class NetworkPatch(_In):
    name: str | None = Field(None, max_length=255)
    shared: bool | None = None


class Network(BaseModel):
    id: str
    name: str
    project_id: str
    network_type: str | None
    physical_network: str | None
    segmentation_id: int | None
    mtu: int
    shared: bool
    external: bool
    status: str
    subnets: list[str]
    created_at: str


class NetworkList(BaseModel):
    networks: list[Network]
    next: str | None


class Pool(_In):
    start: IpAddress
    end: IpAddress


class SubnetIn(_In):
    network: str = Field(min_length=1, max_length=255, description="Network id or name.")
    name: str = Name
    cidr: IpNetwork
    gateway_ip: IpAddress | None = Field(None, description="Omitted = the first address; null = no gateway.")
    allocation_pools: list[Pool] | None = Field(None, max_length=64)
    enable_dhcp: bool = True
    dns_nameservers: list[IpAddress] = Field(default_factory=list, max_length=MAX_DNS_NAMESERVERS)
    host_routes: list[HostRouteIn] = Field(default_factory=list, max_length=MAX_HOST_ROUTES)


class SubnetPatch(_In):
    name: str | None = Field(None, max_length=255)
    dns_nameservers: list[IpAddress] | None = Field(None, max_length=MAX_DNS_NAMESERVERS)
    host_routes: list[HostRouteIn] | None = Field(None, max_length=MAX_HOST_ROUTES)


class Subnet(BaseModel):
    id: str
    name: str
    network_id: str
    project_id: str
    cidr: str
    ip_version: int
    gateway_ip: str | None
    allocation_pools: list[dict[str, str]]
    enable_dhcp: bool
    dns_nameservers: list[str]
    host_routes: list[dict[str, str]]
    created_at: str


class SubnetList(BaseModel):
    subnets: list[Subnet]
    next: str | None


class FixedIpIn(_In):
    subnet_id: str | None = Field(None, max_length=64)
    ip_address: IpAddress | None = None


class PortIn(_In):
    network: str = Field(min_length=1, max_length=255, description="Network id or name.")
    name: str = Name
    fixed_ips: list[FixedIpIn] | None = Field(None, max_length=16, description="Omitted = next free address.")
    security_groups: list[str] | None = Field(None, description="Ids or names; omitted = the default group.")
    port_security_enabled: bool = True
    mac_address: str | None = Field(None, pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class PortPatch(_In):
    name: str | None = Field(None, max_length=255)
    security_groups: list[str] | None = None
    port_security_enabled: bool | None = None


class Port(BaseModel):
    id: str
    name: str
    network_id: str
    project_id: str
    mac_address: str
    fixed_ips: list[dict[str, str]]
    device_owner: str
    device_id: str
    host: str
    status: str
    security_groups: list[str]
    port_security_enabled: bool
    created_at: str


class PortList(BaseModel):
    ports: list[Port]
    next: str | None


def segment_ranges(config: Config) -> dict[str, Any]:
    """Tenant types and ranges from config, for NetworkCreate (apply allocates from them)."""
    vlan: list[tuple[str, int, int]] = []
    for entry in config.network.network_vlan_ranges:
        parts = entry.split(":")
        if len(parts) == 3:
            vlan.append((parts[0], int(parts[1]), int(parts[2])))
    vni = [(int(a), int(b)) for a, _, b in (r.partition(":") for r in config.network.vni_ranges)]
    types = [t for t in config.network.tenant_network_types if t != "vxlan" or config.network.local_ip]
    return {"tenant_types": types, "vlan_ranges": vlan, "vni_ranges": vni}


# --- networks --------------------------------------------------------------------------------


async def list_networks(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    admin = is_admin(request, ctx)
    rows = await svc.catalog.read(visible_networks, ctx, admin)
    page, nxt = paginate(rows, *page_params(request))
    views = [await svc.catalog.read(network_view, r, sees_provider(request, ctx)) for r in page]
    return json_response({"networks": views, "next": nxt})


async def show_network(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    admin = is_admin(request, ctx)
    row = await svc.catalog.read(find_network, request.match_info["id"], ctx, admin)
    return json_response(await svc.catalog.read(network_view, row, sees_provider(request, ctx)))


async def create_network(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, NetworkIn)
    if body.network_type is not None or body.physical_network is not None or body.segmentation_id is not None:
        svc.policy.enforce(ctx.roles, "network:provider")
    if body.external or body.shared:
        svc.policy.enforce(ctx.roles, "network:external")
    if body.network_type is None and (body.physical_network or body.segmentation_id is not None):
        raise BadRequest("physical_network and segmentation_id need a network_type")
    labels = set(svc.config.network.physical_interface_mappings) | set(svc.config.network.flat_networks)
    if body.network_type in ("flat", "vlan") and body.physical_network not in labels:
        raise BadRequest(f"physical network '{body.physical_network}' is not configured on this cluster")
    nid = str(uuid.uuid4())
    await svc.catalog.propose(NetworkCreate(
        id=nid, project_id=ctx.project_id, name=body.name, network_type=body.network_type,
        physical_network=body.physical_network, segmentation_id=body.segmentation_id, mtu=body.mtu,
        shared=body.shared, external=body.external, created_at=now_iso(), **segment_ranges(svc.config)))
    row = await svc.catalog.read(find_network, nid, ctx, True)
    return json_response(await svc.catalog.read(network_view, row, sees_provider(request, ctx)), status=201,
                         location=f"/v1/networks/{nid}")


async def update_network(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, NetworkPatch)
    admin = is_admin(request, ctx)
    row = await svc.catalog.read(find_owned, "networks", request.match_info["id"], "Network", ctx, admin)
    if body.shared is not None:
        svc.policy.enforce(ctx.roles, "network:external")
    await svc.catalog.propose(NetworkUpdate(id=row["id"], name=body.name, shared=body.shared))
    row = await svc.catalog.read(find_network, row["id"], ctx, True)
    return json_response(await svc.catalog.read(network_view, row, sees_provider(request, ctx)))


async def delete_network(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await svc.catalog.read(find_owned, "networks", request.match_info["id"], "Network", ctx,
                                 is_admin(request, ctx))
    await svc.catalog.propose(NetworkDelete(id=row["id"]))
    await notify(request)
    return web.Response(status=204)


# --- subnets ---------------------------------------------------------------------------------


async def list_subnets(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    rows = await svc.catalog.read(visible_subnets, ctx, is_admin(request, ctx))
    if "network" in request.query:
        rows = [r for r in rows if r["network_id"] == request.query["network"]]
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"subnets": [subnet_view(r) for r in page], "next": nxt})


async def show_subnet(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    return json_response(subnet_view(await svc.catalog.read(find_subnet, request.match_info["id"], ctx,
                                                            is_admin(request, ctx))))


async def create_subnet(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, SubnetIn)
    admin = is_admin(request, ctx)
    network = await svc.catalog.read(find_network, body.network, ctx, admin)
    if network["project_id"] != ctx.project_id and not admin:
        raise NotFound(f"Network {body.network} could not be found")  # visible (shared) but not yours
    # addresses are canonical already (the model's types); the options are checked by apply
    no_gateway = "gateway_ip" in body.model_fields_set and body.gateway_ip is None
    sid = str(uuid.uuid4())
    await svc.catalog.propose(SubnetCreate(
        id=sid, network_id=network["id"], project_id=network["project_id"], name=body.name, cidr=body.cidr,
        gateway_ip=body.gateway_ip, no_gateway=no_gateway,
        allocation_pools=[(p.start, p.end) for p in body.allocation_pools] if body.allocation_pools else None,
        enable_dhcp=body.enable_dhcp, dns_nameservers=body.dns_nameservers, host_routes=body.host_routes,
        dhcp_port_id=str(uuid.uuid4()), dhcp_mac=new_mac(), host=svc.config.host_name, created_at=now_iso()))
    await notify(request)
    row = await svc.catalog.read(find_subnet, sid, ctx, True)
    return json_response(subnet_view(row), status=201, location=f"/v1/subnets/{sid}")


async def _own_subnet(request: web.Request) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await svc.catalog.read(find_subnet, request.match_info["id"], ctx, is_admin(request, ctx))
    if row["project_id"] != ctx.project_id and not is_admin(request, ctx):
        raise NotFound(f"Subnet {request.match_info['id']} could not be found")
    return row


async def update_subnet(request: web.Request) -> web.Response:
    svc = services(request)
    body = await parse_body(request, SubnetPatch)
    row = await _own_subnet(request)
    await svc.catalog.propose(SubnetUpdate(id=row["id"], name=body.name, dns_nameservers=body.dns_nameservers,
                                           host_routes=body.host_routes))
    await notify(request)
    return json_response(subnet_view(await svc.catalog.read(find_subnet, row["id"], context(request), True)))


async def delete_subnet(request: web.Request) -> web.Response:
    row = await _own_subnet(request)
    await services(request).catalog.propose(SubnetDelete(id=row["id"]))
    await notify(request)
    return web.Response(status=204)


# --- ports -----------------------------------------------------------------------------------


async def resolve_groups(request: web.Request, refs: list[str] | None) -> list[str] | None:
    if refs is None:
        return None
    svc, ctx = services(request), context(request)
    out = []
    for ref in refs:
        row = await svc.catalog.read(find_owned, "security_groups", ref, "Security group", ctx, False)
        out.append(str(row["id"]))
    return out


async def create_port_for(request: web.Request, network_ref: str, chosen_mac: bool = False,
                          **fields: Any) -> dict[str, Any]:
    """Create a port on a network the caller may use (own or shared); returns its view."""
    svc, ctx = services(request), context(request)
    admin = is_admin(request, ctx)
    network = await svc.catalog.read(find_network, network_ref, ctx, admin)
    if network["project_id"] != ctx.project_id and not network["shared"] and not admin:
        raise NotFound(f"Network {network_ref} could not be found")
    check_port_on_network(request, ctx, network, port_security_off=fields.get("port_security_enabled") is False,
                          chosen_mac=chosen_mac,
                          chosen_ip=any(f.ip_address is not None for f in fields.get("fixed_ips") or []))
    pid = str(uuid.uuid4())
    await svc.catalog.propose(PortCreate(id=pid, network_id=network["id"], project_id=ctx.project_id,
                                         default_sg_id=str(uuid.uuid4()), created_at=now_iso(), **fields))
    return await svc.catalog.read(port_of, pid)


async def list_ports(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    admin = is_admin(request, ctx)
    sql, args = ("SELECT * FROM ports", ()) if admin else ("SELECT * FROM ports WHERE project_id=?", (ctx.project_id,))
    rows = await svc.catalog.read(fetch_all, sql + " ORDER BY seq", args)
    for key in ("network_id", "device_id", "device_owner"):
        if key in request.query:
            rows = [r for r in rows if r[key] == request.query[key]]
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"ports": [await svc.catalog.read(port_of, r["id"]) for r in page], "next": nxt})


async def _own_port(request: web.Request) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    return await svc.catalog.read(find_owned, "ports", request.match_info["id"], "Port", ctx, is_admin(request, ctx))


async def show_port(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    row = await _own_port(request)
    return json_response(await svc.catalog.read(port_view, row))


async def create_port(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, PortIn)
    fixed = [FixedIpRequest(**f.model_dump()) for f in body.fixed_ips] if body.fixed_ips is not None else None
    view = await create_port_for(request, body.network, chosen_mac=body.mac_address is not None,
                                 name=body.name, mac=body.mac_address or new_mac(),
                                 fixed_ips=fixed, security_groups=await resolve_groups(request, body.security_groups),
                                 port_security_enabled=body.port_security_enabled)
    await notify(request)
    return json_response(view, status=201, location=f"/v1/ports/{view['id']}")


async def update_port(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, PortPatch)
    row = await _own_port(request)
    if body.port_security_enabled is False:
        network = await svc.catalog.read(find_network, row["network_id"], ctx, True)
        check_port_on_network(request, ctx, network, port_security_off=True)
    await svc.catalog.propose(PortUpdate(id=row["id"], name=body.name,
                                         security_groups=await resolve_groups(request, body.security_groups),
                                         port_security_enabled=body.port_security_enabled))
    await notify(request)
    return json_response(await svc.catalog.read(port_of, row["id"]))


async def delete_port(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _own_port(request)
    await svc.catalog.propose(PortDelete(id=row["id"]))
    await notify(request)
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "network"
    for plural, model, listing, patch, handlers in (
        ("networks", NetworkIn, NetworkList, NetworkPatch,
         (list_networks, create_network, show_network, update_network, delete_network)),
        ("subnets", SubnetIn, SubnetList, SubnetPatch,
         (list_subnets, create_subnet, show_subnet, update_subnet, delete_subnet)),
        ("ports", PortIn, PortList, PortPatch, (list_ports, create_port, show_port, update_port, delete_port)),
    ):
        one = {"networks": Network, "subnets": Subnet, "ports": Port}[plural]
        what = plural[:-1]
        lister, creator, shower, updater, deleter = handlers
        router.add("GET", f"/v1/{plural}", lister, f"List {plural}", response=listing, query=PAGE_QUERY, tag=t)
        router.add("POST", f"/v1/{plural}", creator, f"Create a {what}", body=model, response=one, status=201, tag=t)
        router.add("GET", f"/v1/{plural}/{{id}}", shower, f"Show a {what}", response=one, tag=t)
        router.add("PATCH", f"/v1/{plural}/{{id}}", updater, f"Update a {what}", body=patch, response=one, tag=t)
        router.add("DELETE", f"/v1/{plural}/{{id}}", deleter, f"Delete a {what}", status=204, tag=t)
    routers.register(router)
    secgroups.register(router)
    server_ports.register(router)
