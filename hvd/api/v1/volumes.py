"""/v1/volumes and /v1/volume-types (Cinder's volumes API in hvd's conventions)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.context import RequestContext
from hvd.api.helpers import context, json_response, page_params, paginate, parse_body, query_bool
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.images import find_image
from hvd.catalog import cmd_volumes as cv
from hvd.catalog import queries
from hvd.catalog.cmd_compute import ImageCreate, ImageSetStatus, check_image_room
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import BadRequest, HvdError, NotFound
from hvd.identity.service import now_iso
from hvd.storage.volumes import states as st
from hvd.storage.volumes.scheduler import VolumeRequest
from hvd.storage.volumes.service import VolumeService

VOLUMES = "volumes"  # key of the VolumeService in ApiServices.extra
NamePattern = r"^[A-Za-z0-9_.:@ -]*$"
MAX_GB = 65536  # 64 TiB: a bound every backend and quota handles
Metadata = dict[str, str]


class VolumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=255, pattern=NamePattern)
    description: str = Field("", max_length=1024)
    size_gb: int = Field(ge=1, le=MAX_GB, description="Size in GiB (at least the source's size).")
    volume_type: str | None = Field(None, max_length=255, description="Name or id; default: [volumes] default_type.")
    availability_zone: str | None = Field(None, max_length=255)
    image: str | None = Field(None, max_length=255, description="Create from this image (name or id).")
    snapshot: str | None = Field(None, max_length=255, description="Create from this volume snapshot.")
    source_volume: str | None = Field(None, max_length=255, description="Create as a copy of this volume.")
    bootable: bool = False
    metadata: Metadata = Field(default_factory=dict, max_length=64)


class VolumePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=255, pattern=NamePattern)
    description: str | None = Field(None, max_length=1024)
    bootable: bool | None = None
    metadata: Metadata | None = Field(None, max_length=64)


class ExtendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_size_gb: int = Field(ge=1, le=MAX_GB, description="The new size in GiB (greater than the current one).")


class UploadImageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, description="The new image's name.")
    disk_format: Literal["raw", "qcow2"] = "qcow2"
    visibility: Literal["public", "private"] = Field("private", description="public needs image:publicize")
    force: bool = Field(False, description="Upload an attached (in-use) volume; its data may be inconsistent.")


class ResetStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["available", "error", "in-use", "error_deleting"] = Field(
        description="What the volume really is (e.g. error for a create whose host died); no check is made")


class AttachmentView(BaseModel):
    id: str
    server_id: str
    device: str | None
    status: str
    attach_mode: str
    host: str | None


class Volume(BaseModel):
    id: str
    name: str
    description: str
    project_id: str
    size_gb: int
    status: str
    volume_type: str | None
    availability_zone: str
    bootable: bool
    multiattach: bool
    source_image_id: str | None
    source_snapshot_id: str | None
    source_volume_id: str | None
    attachments: list[AttachmentView]
    host: str | None = Field(description="host@backend, for admins only (null for others)")
    error: str | None
    metadata: Metadata
    created_at: str
    updated_at: str


class VolumeUpload(BaseModel):
    volume: Volume
    image_id: str = Field(description="The new image (queued, then saving, then active once the data is in)")


class VolumeList(BaseModel):
    volumes: list[Volume]
    next: str | None


class VolumeTypeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, pattern=NamePattern)
    description: str = Field("", max_length=1024)
    extra_specs: dict[str, str] = Field(default_factory=dict, max_length=64,
                                        description="volume_backend_name, multiattach ('<is> True')")
    is_public: bool = True


class VolumeTypePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=1024)
    extra_specs: dict[str, str] = Field(default_factory=dict, max_length=64, description="keys to set")
    unset: list[str] = Field(default_factory=list, max_length=64, description="extra spec keys to remove")


class VolumeType(BaseModel):
    id: str
    name: str
    description: str
    extra_specs: dict[str, str]
    is_public: bool
    created_at: str


class VolumeTypeList(BaseModel):
    volume_types: list[VolumeType]
    next: str | None


def volumes(request: web.Request) -> VolumeService:
    service: VolumeService | None = services(request).extra.get(VOLUMES)
    if service is None:
        raise NotFound("volumes are not enabled on this host ([volumes] enabled = false)")
    return service


def _view_rows(conn: sqlite3.Connection, rows: list[dict[str, Any]], admin: bool) -> list[dict[str, Any]]:
    types = {r["id"]: r["name"] for r in fetch_all(conn, "SELECT id, name FROM volume_types")}
    out = []
    for row in rows:
        atts = fetch_all(conn, "SELECT * FROM volume_attachments WHERE volume_id=? ORDER BY created_at, id",
                         (row["id"],))
        out.append({
            **{k: row[k] for k in ("id", "name", "description", "project_id", "size_gb", "status", "availability_zone",
                                   "bootable", "multiattach", "source_image_id", "source_snapshot_id",
                                   "source_volume_id", "error", "metadata", "created_at", "updated_at")},
            "volume_type": types.get(row["volume_type_id"]),
            "attachments": [{"id": a["id"], "server_id": a["instance_id"], "device": a["device"],
                             "status": a["status"], "attach_mode": a["attach_mode"],
                             "host": a["host"] if admin else None} for a in atts],
            "host": f"{row['host']}@{row['backend']}" if admin else None,
        })
    return out


def _admin(request: web.Request, ctx: RequestContext) -> bool:
    return services(request).policy.allowed(ctx.roles, "host:read")


async def view(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    ctx = context(request)
    return (await services(request).catalog.read(_view_rows, [row], _admin(request, ctx)))[0]


def _visible(conn: sqlite3.Connection, ctx: RequestContext, all_projects: bool) -> list[dict[str, Any]]:
    if all_projects:
        return fetch_all(conn, "SELECT * FROM volumes ORDER BY created_at, id")
    return fetch_all(conn, "SELECT * FROM volumes WHERE project_id=? ORDER BY created_at, id", (ctx.project_id,))


async def visible_volume(request: web.Request, ref: str | None = None) -> dict[str, Any]:
    """A volume of the caller's project (admin: any) by id or name; 404 otherwise."""
    svc, ctx = services(request), context(request)
    ref = ref if ref is not None else request.match_info["id"]
    if svc.policy.all_projects(ctx.roles):
        return await svc.catalog.read(queries.find, "volumes", ref, "Volume")
    return await svc.catalog.read(queries.find, "volumes", ref, "Volume", "project_id=?", (ctx.project_id,))


async def _wait_view(request: web.Request, table: str, row_id: str, wait: bool) -> dict[str, Any] | None:
    """The row now, or once stable with ?wait=true (``wait`` parsed before the change was made)."""
    svc = services(request)
    if wait:
        return await volumes(request).wait_stable(table, row_id, svc.config.api.wait_timeout_s)
    return await svc.catalog.read(fetch_one, f"SELECT * FROM {table} WHERE id=?", (row_id,))


async def list_volumes(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    all_projects = query_bool(request, "all_projects") and svc.policy.all_projects(ctx.roles)
    rows = await svc.catalog.read(_visible, ctx, all_projects)
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"volumes": await svc.catalog.read(_view_rows, page, _admin(request, ctx)), "next": nxt})


async def show_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    return json_response(await view(request, await visible_volume(request)))


def find_type(conn: sqlite3.Connection, ref: str, ctx: RequestContext, admin: bool) -> dict[str, Any]:
    row = queries.find(conn, "volume_types", ref, "Volume type")
    if not row["is_public"] and not admin:
        raise NotFound(f"Volume type {ref} could not be found")
    return row


async def create_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:create")
    body = await parse_body(request, VolumeIn)
    vs = volumes(request)
    admin = svc.policy.all_projects(ctx.roles)
    sources = [s for s in (body.image, body.snapshot, body.source_volume) if s is not None]
    if len(sources) > 1:
        raise BadRequest("give at most one of image, snapshot, source_volume")
    vtype = await svc.catalog.read(find_type, body.volume_type or svc.config.volumes.default_type, ctx, admin)
    image_id = snapshot_id = source_volume_id = None
    host_of_source: str | None = None
    backend_of_source: str | None = None
    if body.image is not None:
        image = await svc.catalog.read(find_image, body.image, ctx, admin)
        if image["status"] != "active":
            raise BadRequest(f"image {image['id']} is {image['status']}, not active")
        needed = max(int(image["min_disk"] or 0), -(-int(image["virtual_size"] or 0) // (1 << 30)))
        if needed > body.size_gb:
            raise BadRequest(f"image {image['id']} needs a volume of at least {needed} GiB, {body.size_gb} GiB asked")
        image_id = str(image["id"])
    if body.snapshot is not None:
        where, args = ("1=1", ()) if admin else ("project_id=?", (ctx.project_id,))
        snap = await svc.catalog.read(queries.find, "volume_snapshots", body.snapshot, "Snapshot", where, args)
        snapshot_id, host_of_source, backend_of_source = str(snap["id"]), snap["host"], snap["backend"]
    if body.source_volume is not None:
        src = await visible_volume(request, body.source_volume)
        source_volume_id, host_of_source, backend_of_source = str(src["id"]), src["host"], src["backend"]
    vid = str(uuid.uuid4())

    def make(host: str, backend: str) -> cv.VolumeCreate:
        return cv.VolumeCreate(
            id=vid, project_id=ctx.project_id, user_id=ctx.user_id, name=body.name, description=body.description,
            size_gb=body.size_gb, volume_type_id=str(vtype["id"]), availability_zone=body.availability_zone or vs.az,
            host=host, backend=backend, volume_format=_format_of(vs, host, backend), bootable=body.bootable,
            source_image_id=image_id, source_snapshot_id=snapshot_id, source_volume_id=source_volume_id,
            metadata=body.metadata, created_at=now_iso())

    if host_of_source is not None and backend_of_source is not None:
        await vs.propose(make(host_of_source, backend_of_source))  # copies stay on the source's backend
    else:
        await vs.create_placed(VolumeRequest(body.size_gb, body.availability_zone, dict(vtype["extra_specs"])),
                               lambda chosen: make(chosen.host, chosen.name))
    vs.publish("volume.status", vid, "creating", project_id=ctx.project_id)
    row = await _wait_view(request, "volumes", vid, wait)
    if row is None:
        raise NotFound(f"Volume {vid} could not be found")
    return json_response(await view(request, row), status=202, location=f"/v1/volumes/{vid}")


def _format_of(vs: VolumeService, host: str, backend: str) -> str:
    local = vs.backends.get(backend) if host == vs.host else None
    fmt = local.volume_format if local is not None else "raw"
    return fmt if fmt in ("raw", "qcow2") else "raw"


async def update_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:manage")
    body = await parse_body(request, VolumePatch)
    row = await visible_volume(request)
    await svc.catalog.propose(cv.VolumeUpdate(id=str(row["id"]), name=body.name, description=body.description,
                                              bootable=body.bootable, metadata=body.metadata, updated_at=now_iso()))
    return json_response(await view(request, await visible_volume(request, str(row["id"]))))


async def delete_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    row = await visible_volume(request)
    vs = volumes(request)
    await vs.propose(cv.VolumeBegin(id=str(row["id"]), op="delete", updated_at=now_iso()))
    vs.publish("volume.status", str(row["id"]), "deleting", project_id=row["project_id"])
    after = await _wait_view(request, "volumes", str(row["id"]), wait)
    if after is None:
        return web.Response(status=204)
    return json_response(await view(request, after), status=202)


async def extend_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    body = await parse_body(request, ExtendIn)
    row = await visible_volume(request)
    if row["status"] == "in-use":  # online: the attached server's host grows it and tells the guest
        from hvd.api.v1.server_volumes import extend_online

        return await extend_online(request, row, body.new_size_gb)
    vs = volumes(request)
    await vs.propose(cv.VolumeBegin(id=str(row["id"]), op="extend", new_size_gb=body.new_size_gb, updated_at=now_iso()))
    vs.publish("volume.status", str(row["id"]), "extending", project_id=row["project_id"])
    after = await _wait_view(request, "volumes", str(row["id"]), wait)
    if after is None:
        raise NotFound(f"Volume {row['id']} could not be found")
    return json_response(await view(request, after), status=202)


async def upload_to_image(request: web.Request) -> web.Response:
    """Cinder's upload-to-image: the volume goes uploading and an image is recorded, handed to the
    volume's host (saving: no one else may write it), which copies the data into it; then the
    volume returns to its previous status."""
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    svc.policy.enforce(ctx.roles, "image:manage")
    body = await parse_body(request, UploadImageIn)
    if body.visibility == "public":
        svc.policy.enforce(ctx.roles, "image:publicize")
    row = await visible_volume(request)
    vs = volumes(request)
    vid, owner = str(row["id"]), str(row["project_id"])
    # prompt refusals before anything changes (the commits check both again)
    st.check_operation("upload", str(row["status"]), force=body.force, volume_id=vid)
    await svc.catalog.read(check_image_room, owner)  # the commit checks it again
    # the begin first: of two uploads of one volume only one gets past it, and it owns the image made next
    await vs.propose(cv.VolumeBegin(id=vid, op="upload", force=body.force, updated_at=now_iso()))
    image_id = str(uuid.uuid4())
    made = False
    try:
        await svc.catalog.propose(ImageCreate(
            id=image_id, name=body.name, owner=owner, disk_format=body.disk_format, container_format="bare",
            visibility=body.visibility, min_disk=int(row["size_gb"]), properties={"volume_id": vid},
            created_at=now_iso()))
        made = True
        # handed to the volume's host at once: a queued image would take data from anyone who may PUT it
        await svc.catalog.propose(ImageSetStatus(id=image_id, status="saving", expect=["queued"],
                                                 host=str(row["host"]), updated_at=now_iso()))
    except BaseException as exc:  # no image to write: the volume goes back to its status, nothing was copied
        error = exc.message if isinstance(exc, HvdError) else type(exc).__name__
        if made:  # not handed over: no one writes it (one someone else took stays theirs)
            with contextlib.suppress(HvdError):
                await asyncio.shield(svc.catalog.propose(ImageSetStatus(id=image_id, status="killed",
                                                                        expect=["queued"], updated_at=now_iso())))
        with contextlib.suppress(HvdError):
            await asyncio.shield(vs.propose(cv.VolumeFinish(id=vid, op="upload", ok=False,
                                                            error=f"no image was made: {error}",
                                                            updated_at=now_iso())))
        raise
    vs.wake()  # the image is ready for the volume's host (this one: at once; another picks it up within 2 s)
    vs.publish("volume.status", vid, st.UPLOADING, project_id=owner)
    after = await _wait_view(request, "volumes", vid, wait)
    if after is None:
        raise NotFound(f"Volume {vid} could not be found")
    return json_response({"volume": await view(request, after), "image_id": image_id}, status=202,
                         location=f"/v1/images/{image_id}")


async def reset_status(request: web.Request) -> web.Response:
    """Admin repair (Cinder's reset-state): a volume stuck in a state no host will finish."""
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:reset_status")
    body = await parse_body(request, ResetStatusIn)
    row = await visible_volume(request)
    await svc.catalog.propose(cv.VolumeResetStatus(id=str(row["id"]), status=body.status, updated_at=now_iso()))
    volumes(request).publish("volume.status", str(row["id"]), body.status, project_id=row["project_id"])
    return json_response(await view(request, await visible_volume(request, str(row["id"]))))


# --- volume types --------------------------------------------------------------------------------


def _type_out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "name", "description", "extra_specs", "is_public", "created_at")}


async def list_types(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    admin = svc.policy.allowed(ctx.roles, "volume_type:manage")
    rows = await svc.catalog.read(fetch_all, "SELECT * FROM volume_types ORDER BY name")
    rows = [r for r in rows if admin or r["is_public"]]
    page, nxt = paginate([_type_out(r) for r in rows], *page_params(request), key="name")
    return json_response({"volume_types": page, "next": nxt})


async def show_type(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    admin = svc.policy.allowed(ctx.roles, "volume_type:manage")
    return json_response(_type_out(await svc.catalog.read(find_type, request.match_info["id"], ctx, admin)))


async def create_type(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume_type:manage")
    body = await parse_body(request, VolumeTypeIn)
    tid = str(uuid.uuid4())
    await svc.catalog.propose(cv.VolumeTypeCreate(id=tid, name=body.name, description=body.description,
                                                  extra_specs=body.extra_specs, is_public=body.is_public,
                                                  created_at=now_iso()))
    row = await svc.catalog.read(queries.find, "volume_types", tid, "Volume type")
    return json_response(_type_out(row), status=201, location=f"/v1/volume-types/{tid}")


async def update_type(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume_type:manage")
    body = await parse_body(request, VolumeTypePatch)
    row = await svc.catalog.read(queries.find, "volume_types", request.match_info["id"], "Volume type")
    await svc.catalog.propose(cv.VolumeTypeUpdate(id=str(row["id"]), description=body.description,
                                                  set=body.extra_specs, unset=body.unset))
    return json_response(_type_out(await svc.catalog.read(queries.find, "volume_types", str(row["id"]),
                                                          "Volume type")))


async def delete_type(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume_type:manage")
    row = await svc.catalog.read(queries.find, "volume_types", request.match_info["id"], "Volume type")
    await svc.catalog.propose(cv.VolumeTypeDelete(id=str(row["id"])))
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "volume"
    page = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"))
    wait = (("wait", "boolean", "block until a stable state"),)
    router.add("GET", "/v1/volumes", list_volumes, "List volumes", response=VolumeList,
               query=(*page, ("all_projects", "boolean", "admin: every project's")), tag=t)
    router.add("POST", "/v1/volumes", create_volume, "Create a volume (blank, from an image, snapshot or volume)",
               body=VolumeIn, response=Volume, status=202, query=wait, tag=t)
    router.add("GET", "/v1/volumes/{id}", show_volume, "Show a volume", response=Volume, tag=t)
    router.add("PATCH", "/v1/volumes/{id}", update_volume, "Rename a volume, set its bootable flag or metadata",
               body=VolumePatch, response=Volume, tag=t)
    router.add("DELETE", "/v1/volumes/{id}", delete_volume, "Delete a volume (available, no snapshots)",
               status=202, response=Volume, query=wait, tag=t)
    router.add("POST", "/v1/volumes/{id}/extend", extend_volume, "Grow a volume (an in-use one online)", body=ExtendIn,
               response=Volume, status=202, query=wait, tag=t)
    router.add("POST", "/v1/volumes/{id}/upload-image", upload_to_image,
               "Make an image of a volume (an in-use one with force)", body=UploadImageIn, response=VolumeUpload,
               status=202, query=wait, tag=t)
    router.add("POST", "/v1/volumes/{id}/reset-status", reset_status, "Admin: set a stuck volume's status",
               body=ResetStatusIn, response=Volume, tag=t)
    router.add("GET", "/v1/volume-types", list_types, "List volume types", response=VolumeTypeList, query=page, tag=t)
    router.add("POST", "/v1/volume-types", create_type, "Create a volume type", body=VolumeTypeIn,
               response=VolumeType, status=201, tag=t)
    router.add("GET", "/v1/volume-types/{id}", show_type, "Show a volume type", response=VolumeType, tag=t)
    router.add("PATCH", "/v1/volume-types/{id}", update_type, "Change a volume type's extra specs",
               body=VolumeTypePatch, response=VolumeType, tag=t)
    router.add("DELETE", "/v1/volume-types/{id}", delete_type, "Delete an unused volume type", status=204, tag=t)
