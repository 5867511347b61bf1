"""/v1/servers: create, list, show, delete, actions, console log, action log."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.context import RequestContext
from hvd.api.forward import catch_up_if_forwarded, to_owner
from hvd.api.helpers import context, json_response, page_params, paginate, parse_body, query_bool
from hvd.api.routing import Router
from hvd.api.services import ApiServices, services
from hvd.api.v1 import server_bdm, server_password, server_ports, server_volumes
from hvd.api.v1.flavors import find_flavor
from hvd.api.v1.images import find_image
from hvd.catalog import queries
from hvd.catalog.cmd_compute import InstanceCreate
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.compute import lifecycle
from hvd.compute.lifecycle import Op
from hvd.compute.service import ComputeService
from hvd.errors import BadRequest, NotFound, QuotaExceeded
from hvd.identity.service import now_iso

COMPUTE = "compute"


def compute(request: web.Request) -> ComputeService:
    svc: ComputeService = services(request).extra[COMPUTE]
    return svc


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    flavor: str = Field(min_length=1, max_length=255, description="Flavor name or id.")
    image: str | None = Field(None, min_length=1, max_length=255,
                              description="Image name or id (not needed when booting from a volume).")
    key_name: str | None = Field(None, min_length=1, max_length=255)
    user_data: str | None = Field(None, max_length=65535, description="Passed to the guest (config drive).")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=128)
    server_group: str | None = Field(None, min_length=1, max_length=255)
    availability_zone: str | None = Field(None, min_length=1, max_length=255,
                                          description="'zone' or 'zone:host' (forced host: admin only).")
    min_count: int = Field(1, ge=1, le=100)
    max_count: int | None = Field(None, ge=1, le=100)
    config_drive: bool = True
    networks: server_ports.Networks = Field(
        "auto", description="NICs: [{network, fixed_ip?} | {port}], 'auto' (the project's only network) or 'none'.")
    block_device_mapping: list[server_bdm.BlockDevice] | None = Field(
        None, min_length=1, max_length=8, description="Volumes at create; boot_index 0 = boot from that volume.")


class FlavorRef(BaseModel):
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    ephemeral_gb: int = 0
    swap_mb: int = 0


class Fault(BaseModel):
    code: int
    message: str
    created: str


class Server(BaseModel):
    id: str
    name: str
    status: str
    vm_state: str
    task_state: str | None
    power_state: int
    host: str | None = Field(description="The hypervisor host (admins only: null for others, as in Nova).")
    host_id: str = Field(description="An opaque id of the host, per project (Nova's hostId): tells whether two"
                                     " of your servers share a host without naming it; empty when unplaced.")
    flavor: FlavorRef
    image: dict[str, str]
    addresses: dict[str, list[dict[str, Any]]]
    key_name: str | None
    metadata: dict[str, str]
    availability_zone: str | None
    project_id: str
    user_id: str
    locked: bool
    fault: Fault | None
    created_at: str
    updated_at: str
    launched_at: str | None


class ServerList(BaseModel):
    servers: list[Server]
    next: str | None


class ServersCreated(BaseModel):
    servers: list[Server]


class RebootIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["soft", "hard", "SOFT", "HARD"] = "soft"


class RescueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(None, min_length=1, max_length=255)


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)


class RebuildIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1, max_length=255)


class ResizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flavor: str = Field(min_length=1, max_length=255)


class MigrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, min_length=1, max_length=255)
    block_migration: bool | Literal["auto"] = Field(
        "auto", description="live-migrate: copy the disks (true), not (false: shared storage only), or as found")


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotOut(BaseModel):
    image_id: str
    server: Server


class ConsoleLog(BaseModel):
    output: str


class InstanceAction(BaseModel):
    id: str
    action: str
    request_id: str
    user_id: str
    project_id: str
    start_time: str
    finish_time: str | None
    result: str | None
    message: str | None


class ActionList(BaseModel):
    actions: list[InstanceAction]


def server_view(row: dict[str, Any], addresses: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    flavor = row["flavor"]
    return {
        "id": row["id"],
        "name": row["name"],
        "status": lifecycle.status_of(lifecycle.VmState(row["vm_state"]),
                                      lifecycle.TaskState(row["task_state"]) if row["task_state"] else None),
        "vm_state": row["vm_state"],
        "task_state": row["task_state"],
        "power_state": row["power_state"],
        "host": row["host"],
        "host_id": hashlib.sha224(f"{row['project_id']}{row['host']}".encode()).hexdigest() if row["host"] else "",
        "flavor": {k: flavor.get(k, 0) for k in ("id", "name", "vcpus", "ram_mb", "disk_gb", "ephemeral_gb",
                                                   "swap_mb")},
        "image": {"id": row["image_id"]},
        "addresses": addresses or {},
        "key_name": row["key_name"],
        "metadata": row["metadata"],
        "availability_zone": row["availability_zone"],
        "project_id": row["project_id"],
        "user_id": row["user_id"],
        "locked": row["locked"],
        "fault": row["fault"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "launched_at": row["launched_at"],
    }


async def _view(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    svc = services(request)
    net = svc.extra.get("network")
    addresses = await net.addresses_of(row["id"]) if net is not None else {}
    view = server_view(row, addresses)
    if not svc.policy.allowed(context(request).roles, "host:read"):
        view["host"] = None  # where a server runs is the operator's business (Nova hides it too)
    return view


def _visible_servers(conn: sqlite3.Connection, ctx: RequestContext, all_projects: bool) -> list[dict[str, Any]]:
    if all_projects:
        return fetch_all(conn, "SELECT * FROM instances WHERE deleted_at IS NULL ORDER BY created_at, id")
    return fetch_all(
        conn, "SELECT * FROM instances WHERE deleted_at IS NULL AND project_id=? ORDER BY created_at, id",
        (ctx.project_id,),
    )


async def visible_server(request: web.Request, ref: str | None = None) -> dict[str, Any]:
    """A live server of the caller's project (any project for admin) by id or name; else 404."""
    svc, ctx = services(request), context(request)
    ref = ref or request.match_info["id"]
    await catch_up_if_forwarded(request)
    admin = svc.policy.all_projects(ctx.roles)
    where, args = ("deleted_at IS NULL", ()) if admin else ("deleted_at IS NULL AND project_id=?", (ctx.project_id,))
    return await svc.catalog.read(queries.find, "instances", ref, "Instance", where, args)


async def list_servers(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    all_projects = query_bool(request, "all_projects") and svc.policy.all_projects(ctx.roles)
    rows = await svc.catalog.read(_visible_servers, ctx, all_projects)
    if "host" in request.query:  # filtering by host would name hosts to those who may not see them
        svc.policy.enforce(ctx.roles, "host:read")
    for key in ("name", "status", "host"):
        want = request.query.get(key)
        if want is not None:
            rows = [r for r in rows if (server_view(r)[key] or "") == want]
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"servers": [await _view(request, r) for r in page], "next": nxt})


async def show_server(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    return json_response(await _view(request, await visible_server(request)))


async def _wait(request: web.Request, ids: list[str]) -> list[dict[str, Any]]:
    svc = services(request)
    rows = []
    for inst_id in ids:
        if query_bool(request, "wait"):
            rows.append(await compute(request).wait_stable(inst_id, svc.config.api.wait_timeout_s))
        else:
            rows.append(await compute(request).instance(inst_id))
    return rows


async def _resolve_create(svc: ApiServices, ctx: RequestContext, body: ServerCreate) -> dict[str, Any]:
    admin = svc.policy.all_projects(ctx.roles)
    flavor = await svc.catalog.read(find_flavor, body.flavor, ctx, admin)
    boots_from_volume = any(d.boot_index == 0 for d in body.block_device_mapping or [])
    if body.image is None and not boots_from_volume:
        raise BadRequest("give 'image', or a block_device_mapping entry with boot_index 0 (boot from a volume)")
    image = await svc.catalog.read(find_image, body.image, ctx, admin) if body.image is not None else \
        {"id": "", "status": "active", "min_disk": 0, "min_ram": 0}
    boots_from_volume = boots_from_volume or server_bdm.from_image(image) is not None
    if image["status"] != "active":
        raise BadRequest(f"Image {body.image} is not active (status {image['status']})")
    if flavor["disk_gb"] and image["min_disk"] > flavor["disk_gb"] and not boots_from_volume:
        raise BadRequest(f"Flavor's disk is too small for requested image: image min_disk {image['min_disk']} GB,"
                         f" flavor disk {flavor['disk_gb']} GB")
    if image["min_ram"] > flavor["ram_mb"]:
        raise BadRequest(f"Flavor's memory is too small for requested image: image min_ram {image['min_ram']} MB,"
                         f" flavor RAM {flavor['ram_mb']} MB")
    keypair = None
    if body.key_name is not None:
        keypair = await svc.catalog.read(
            fetch_one, "SELECT * FROM keypairs WHERE user_id=? AND name=?", (ctx.user_id, body.key_name)
        )
        if keypair is None:
            raise BadRequest(f"Invalid key_name provided: keypair {body.key_name} could not be found")
    group = None
    if body.server_group is not None:
        group = await svc.catalog.read(queries.find, "server_groups", body.server_group, "Server group",
                                       "project_id=?", (ctx.project_id,))
    zone, force_host = body.availability_zone, None
    if zone and ":" in zone:
        svc.policy.enforce(ctx.roles, "compute:create:forced_host")
        zone, _, force_host = zone.partition(":")
        zone = zone or None
        if force_host:
            host = await svc.catalog.read(fetch_one, "SELECT name FROM hosts WHERE name=?", (force_host,))
            if host is None:
                raise BadRequest(f"No such host: {force_host}")
    return {"flavor": flavor, "image": image, "keypair": keypair, "group": group, "zone": zone,
            "force_host": force_host or None}


async def create_server(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:create")
    body = await parse_body(request, ServerCreate)
    max_count = body.max_count or body.min_count
    if max_count < body.min_count:
        raise BadRequest("max_count must not be less than min_count")
    refs = await _resolve_create(svc, ctx, body)
    nics = await server_ports.resolve(request, body.networks, max_count)
    flavor = refs["flavor"]
    boot = None
    mapping = body.block_device_mapping or server_bdm.from_image(refs["image"])
    if mapping:  # its volumes exist (available) before the server record
        boot = await server_bdm.prepare(request, mapping, flavor, max_count)
    records = []
    for n in range(max_count):
        records.append(InstanceCreate(
            id=str(uuid.uuid4()),
            name=body.name if max_count == 1 else f"{body.name}-{n + 1}",
            project_id=ctx.project_id, user_id=ctx.user_id, flavor_id=flavor["id"],
            flavor={k: flavor[k] for k in ("id", "name", "vcpus", "ram_mb", "disk_gb", "ephemeral_gb", "swap_mb",
                                            "extra_specs")},
            image_id=boot.image_id if boot and boot.image_id else refs["image"]["id"], key_name=body.key_name,
            public_key=refs["keypair"]["public_key"] if refs["keypair"] else None,
            user_data=body.user_data, metadata=body.metadata, availability_zone=refs["zone"],
            server_group_id=refs["group"]["id"] if refs["group"] else None, config_drive=body.config_drive,
            extra=boot.extra if boot else {}, created_at=now_iso(),
        ))
    comp = compute(request)
    created: list[str] = []
    try:
        for record in records:
            ports = await server_ports.create_for(request, record.id, nics)
            try:
                created += await comp.create(ctx, [record], refs["force_host"])
            except BaseException:
                await server_ports.undo(request, ports)  # no server: no ports either
                raise
    except BaseException as exc:
        if boot is not None and not created:
            await server_bdm.discard(request, boot)  # no server: the volumes made for it go
        if not isinstance(exc, QuotaExceeded):
            raise
        if len(created) < body.min_count:
            for inst_id in created:  # all or nothing below min_count
                await comp.delete(ctx, await comp.instance(inst_id))
            raise
    rows = await _wait(request, created)
    views = [await _view(request, r) for r in rows]
    if max_count == 1:
        return json_response(views[0], status=202, location=f"/v1/servers/{created[0]}")
    return json_response({"servers": views}, status=202)


async def delete_server(request: web.Request) -> web.Response:
    row = await visible_server(request)
    comp = compute(request)
    owner = row["host"]
    if owner is not None and owner != comp.host and not comp.placement.is_up(owner):
        # the owner is down: the delete is recorded now and finished by the owner when it returns
        await comp.delete(context(request), row, run_here=False)
        return web.Response(status=204)
    forwarded = await to_owner(request, row, comp.placement.is_up)
    if forwarded is not None:
        return forwarded
    await comp.delete(context(request), row)
    if query_bool(request, "wait"):
        await comp.wait_stable(row["id"], services(request).config.api.wait_timeout_s)
    return web.Response(status=204)


async def _action(request: web.Request, op: Op, body_model: type[BaseModel]) -> web.Response:
    svc, ctx = services(request), context(request)
    comp = compute(request)
    body: Any = await parse_body(request, body_model)
    inst = await visible_server(request)
    extra: dict[str, Any] = {}
    if op in (Op.MIGRATE, Op.LIVE_MIGRATE, Op.EVACUATE):
        svc.policy.enforce(ctx.roles, {Op.MIGRATE: "compute:migrate", Op.LIVE_MIGRATE: "compute:live_migrate",
                                       Op.EVACUATE: "compute:evacuate"}[op])
    else:
        svc.policy.enforce(ctx.roles, "compute:action")
    if op != Op.EVACUATE:  # evacuate is for a host that is down: it runs here
        forwarded = await to_owner(request, inst, comp.placement.is_up)
        if forwarded is not None:
            return forwarded
    if op == Op.REBOOT and body.type.lower() == "hard":
        op = Op.REBOOT_HARD
    await server_bdm.check_op(request, inst, op)
    if op in (Op.STOP, Op.START, Op.REBOOT, Op.REBOOT_HARD, Op.PAUSE, Op.UNPAUSE, Op.SUSPEND, Op.RESUME,
              Op.UNRESCUE):
        await comp.begin(ctx, inst, op, comp.simple(op))
    elif op == Op.RESCUE:
        image_id = None
        if body.image is not None:
            image_id = (await svc.catalog.read(find_image, body.image, ctx, svc.policy.all_projects(ctx.roles)))["id"]
        await comp.begin(ctx, inst, op, comp.rescue(image_id))
    elif op == Op.REBUILD:
        image = await svc.catalog.read(find_image, body.image, ctx, svc.policy.all_projects(ctx.roles))
        if image["status"] != "active":
            raise BadRequest(f"Image {body.image} is not active (status {image['status']})")
        await comp.begin(ctx, inst, op, comp.rebuild(image["id"]))
    elif op == Op.SNAPSHOT:
        image_id = str(uuid.uuid4())
        extra["image_id"] = image_id
        runner = server_bdm.snapshot_runner(request, image_id, body.name) if server_bdm.boots_from_volume(inst) \
            else comp.snapshot(image_id, body.name)
        await comp.begin(ctx, inst, op, runner)
    elif op == Op.RESIZE:
        flavor = await svc.catalog.read(find_flavor, body.flavor, ctx, svc.policy.all_projects(ctx.roles))
        if flavor["id"] == inst["flavor_id"]:
            raise BadRequest("When resizing, instances must change flavor")
        if flavor["disk_gb"] < inst["flavor"]["disk_gb"]:
            raise BadRequest(f"Resize to a smaller disk is not allowed ({inst['flavor']['disk_gb']} GB →"
                             f" {flavor['disk_gb']} GB)")
        flavor_copy = {k: flavor[k] for k in ("id", "name", "vcpus", "ram_mb", "disk_gb", "ephemeral_gb",
                                                "swap_mb", "extra_specs")}
        # to any host: the one that boots it reconnects its volumes (directly or over NBD), as a migrate does
        await comp.begin(ctx, inst, op, comp.resize(flavor_copy))
    elif op == Op.CONFIRM_RESIZE:
        await comp.begin(ctx, inst, op, comp.confirm_resize())
    elif op == Op.REVERT_RESIZE:
        await comp.begin(ctx, inst, op, comp.revert_resize())
    elif op == Op.SHELVE:
        await comp.begin(ctx, inst, op, comp.shelve(str(uuid.uuid4())))
    elif op == Op.UNSHELVE:
        await comp.begin(ctx, inst, op, comp.unshelve())
    elif op == Op.LIVE_MIGRATE:
        await _check_target(svc, inst, body.host, comp.host)
        comp.migrations.check(inst, body.block_migration)
        await comp.begin(ctx, inst, op, comp.migrations.run(body.host, body.block_migration))
    elif op == Op.MIGRATE:
        await _check_target(svc, inst, body.host, comp.host)
        await comp.begin(ctx, inst, op, comp.resize(dict(inst["flavor"]), migrate=True, host=body.host))
    elif op == Op.EVACUATE:
        if body.host is not None and await svc.catalog.read(fetch_one, "SELECT name FROM hosts WHERE name=?",
                                                            (body.host,)) is None:
            raise BadRequest(f"No such host: {body.host}")
        await comp.evacuate(ctx, inst, body.host)
    else:  # every action of ACTIONS is handled above
        raise AssertionError(f"unhandled server action {op.value}")
    row = (await _wait(request, [inst["id"]]))[0]
    view = await _view(request, row)
    if op == Op.SNAPSHOT:
        return json_response({"image_id": extra["image_id"], "server": view}, status=202,
                             location=f"/v1/images/{extra['image_id']}")
    return json_response(view, status=202)


async def _check_target(svc: ApiServices, inst: dict[str, Any], host: str | None, here: str) -> None:
    """A move's requested destination: another host that exists (400 naming the problem)."""
    if host is None:
        return
    if host == here:
        raise BadRequest(f"Instance {inst['id']} is on host {here} already (UnableToMigrateToSelf)")
    if await svc.catalog.read(fetch_one, "SELECT name FROM hosts WHERE name=?", (host,)) is None:
        raise BadRequest(f"No such host: {host}")


async def abort_live_migration(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    await parse_body(request, Empty)
    inst = await visible_server(request)
    svc.policy.enforce(ctx.roles, "compute:live_migrate")
    forwarded = await to_owner(request, inst, compute(request).placement.is_up)
    if forwarded is not None:
        return forwarded
    await compute(request).migrations.abort(inst)
    return web.Response(status=202)


async def lock_server(request: web.Request) -> web.Response:
    await parse_body(request, Empty)
    inst = await visible_server(request)
    await compute(request).lock(context(request), inst, True)
    return json_response(await _view(request, await compute(request).instance(inst["id"])), status=202)


async def unlock_server(request: web.Request) -> web.Response:
    await parse_body(request, Empty)
    inst = await visible_server(request)
    await compute(request).lock(context(request), inst, False)
    return json_response(await _view(request, await compute(request).instance(inst["id"])), status=202)


async def console_log(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    raw = request.query.get("lines")
    lines = None
    if raw is not None:
        if not raw.isdigit() or not 0 < int(raw) <= 100000:
            raise BadRequest(f"query parameter 'lines' must be an integer from 1 to 100000, got '{raw}'")
        lines = int(raw)
    inst = await visible_server(request)
    if inst["host"] is None:
        return json_response({"output": ""})
    forwarded = await to_owner(request, inst, compute(request).placement.is_up)
    if forwarded is not None:
        return forwarded
    try:
        output = await compute(request).manager.driver.console_log(inst["id"], lines)
    except NotFound:
        output = ""
    return json_response({"output": output})


async def list_actions(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    admin = svc.policy.all_projects(ctx.roles)
    ref = request.match_info["id"]
    where, args = ("1=1", ()) if admin else ("project_id=?", (ctx.project_id,))
    inst = await svc.catalog.read(queries.find, "instances", ref, "Instance", where, args)
    rows = await svc.catalog.read(
        fetch_all, "SELECT * FROM instance_actions WHERE instance_id=? ORDER BY start_time, id", (inst["id"],)
    )
    return json_response({"actions": [{k: v for k, v in r.items() if k != "instance_id"} for r in rows]})


ACTIONS: list[tuple[str, Op, type[BaseModel], str]] = [
    ("stop", Op.STOP, Empty, "Power off (ACPI, then forced after the shutdown timeout)"),
    ("start", Op.START, Empty, "Power on (the domain XML is regenerated)"),
    ("reboot", Op.REBOOT, RebootIn, "Reboot: soft (ACPI, falls back to hard) or hard"),
    ("pause", Op.PAUSE, Empty, "Pause (state kept in host RAM)"),
    ("unpause", Op.UNPAUSE, Empty, "Unpause"),
    ("suspend", Op.SUSPEND, Empty, "Suspend (state saved to host disk; resources stay reserved)"),
    ("resume", Op.RESUME, Empty, "Resume a suspended server"),
    ("rescue", Op.RESCUE, RescueIn, "Boot from a rescue disk (vda) with the original disk as vdb"),
    ("unrescue", Op.UNRESCUE, Empty, "Leave rescue"),
    ("snapshot", Op.SNAPSHOT, SnapshotIn, "Snapshot the root disk into an image"),
    ("rebuild", Op.REBUILD, RebuildIn, "New root disk from an image; same resources and network"),
    ("resize", Op.RESIZE, ResizeIn, "Change flavor (confirm or revert afterwards)"),
    ("confirm-resize", Op.CONFIRM_RESIZE, Empty, "Confirm a resize"),
    ("revert-resize", Op.REVERT_RESIZE, Empty, "Revert a resize"),
    ("shelve", Op.SHELVE, Empty, "Snapshot, then remove from the host and free its resources"),
    ("unshelve", Op.UNSHELVE, Empty, "Boot a shelved server again (through the scheduler)"),
    ("migrate", Op.MIGRATE, MigrateIn, "Cold-migrate to another host (admin)"),
    ("live-migrate", Op.LIVE_MIGRATE, MigrateIn, "Live-migrate to another host (admin)"),
    ("evacuate", Op.EVACUATE, MigrateIn, "Rebuild on another host when this one is down (admin)"),
]


def _handler(op: Op, model: type[BaseModel]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await _action(request, op, model)

    return handler


def register(router: Router) -> None:
    t = "compute"
    q = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"),
         ("all_projects", "boolean", "admin: every project"), ("name", "string", "filter"),
         ("status", "string", "filter"), ("host", "string", "filter"))
    wait = (("wait", "boolean", "block until the server is in a stable state"),)
    router.add("GET", "/v1/servers", list_servers, "List servers", response=ServerList, query=q, tag=t)
    router.add("POST", "/v1/servers", create_server, "Create a server (202; BUILD → ACTIVE)", body=ServerCreate,
               response=Server, status=202, query=wait, tag=t)
    router.add("GET", "/v1/servers/{id}", show_server, "Show a server", response=Server, tag=t)
    router.add("DELETE", "/v1/servers/{id}", delete_server, "Delete a server (any state)", status=204, query=wait,
               tag=t)
    for name, op, model, summary in ACTIONS:
        response: type[BaseModel] = SnapshotOut if op == Op.SNAPSHOT else Server
        router.add("POST", f"/v1/servers/{{id}}/{name}", _handler(op, model), summary, body=model,
                   response=response, status=202, query=wait, tag=t)
    router.add("POST", "/v1/servers/{id}/live-migrate-abort", abort_live_migration,
               "Cancel a running live migration (the server stays on its source)", body=Empty, status=202, tag=t)
    router.add("POST", "/v1/servers/{id}/lock", lock_server, "Lock (state changes refused; admin ignores)",
               body=Empty, response=Server, status=202, tag=t)
    router.add("POST", "/v1/servers/{id}/unlock", unlock_server, "Unlock", body=Empty, response=Server, status=202,
               tag=t)
    router.add("GET", "/v1/servers/{id}/console-log", console_log, "Serial console output", response=ConsoleLog,
               query=(("lines", "integer", "last N lines"),), tag=t)
    server_volumes.register(router)
    server_password.register(router)
    router.add("GET", "/v1/servers/{id}/actions", list_actions, "The server's action log", response=ActionList,
               tag=t)
