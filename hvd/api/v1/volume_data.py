"""/v1/snapshots and /v1/backups: point-in-time copies and backups of volumes."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.context import RequestContext
from hvd.api.forward import to_host
from hvd.api.helpers import context, json_response, page_params, paginate, parse_body, query_bool
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.servers import COMPUTE
from hvd.api.v1.volumes import MAX_GB, NamePattern, find_type, view, visible_volume, volumes
from hvd.catalog import cmd_volume_backups as cvb
from hvd.catalog import cmd_volumes as cv
from hvd.catalog import queries
from hvd.catalog.commands import Command
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import Conflict, NotFound
from hvd.identity.service import now_iso
from hvd.storage.volumes.scheduler import VolumeRequest


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: str = Field(min_length=1, max_length=255, description="Volume name or id.")
    name: str = Field("", max_length=255, pattern=NamePattern)
    description: str = Field("", max_length=1024)
    force: bool = Field(False, description="Snapshot an attached (in-use) volume; its data may be inconsistent.")


class Snapshot(BaseModel):
    id: str
    name: str
    description: str
    volume_id: str
    project_id: str
    size_gb: int
    status: str
    error: str | None
    created_at: str
    updated_at: str


class SnapshotList(BaseModel):
    snapshots: list[Snapshot]
    next: str | None


class BackupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: str = Field(min_length=1, max_length=255, description="Volume name or id.")
    name: str = Field("", max_length=255, pattern=NamePattern)
    description: str = Field("", max_length=1024)
    incremental: bool = Field(True, description="Store only chunks no earlier backup of the volume holds.")
    force: bool = Field(False, description="Back up an attached (in-use) volume.")


class Backup(BaseModel):
    id: str
    name: str
    description: str
    volume_id: str
    project_id: str
    size_gb: int
    status: str
    parent_id: str | None
    is_incremental: bool
    chunks: int
    new_chunks: int = Field(description="Chunks this backup stored (the others were stored by earlier ones)")
    data_bytes: int
    stored_bytes: int
    error: str | None
    created_at: str
    updated_at: str


class BackupList(BaseModel):
    backups: list[Backup]
    next: str | None


class RestoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: str | None = Field(None, max_length=255,
                                description="An available volume to overwrite; omit for a new one.")
    name: str = Field("", max_length=255, pattern=NamePattern, description="Name of the new volume.")
    size_gb: int | None = Field(None, ge=1, le=MAX_GB, description="Size of the new volume (default: the backup's).")


class RestoreOut(BaseModel):
    backup_id: str
    volume_id: str
    volume: dict[str, Any]


class VerifyOut(BaseModel):
    backup_id: str
    ok: bool
    chunks: int
    problems: list[str]


_SNAP_KEYS = ("id", "name", "description", "volume_id", "project_id", "size_gb", "status", "error", "created_at",
              "updated_at")
_BACKUP_KEYS = (*_SNAP_KEYS, "parent_id", "is_incremental", "chunks", "new_chunks", "data_bytes", "stored_bytes")


def _rows(conn: sqlite3.Connection, table: str, ctx: RequestContext, all_projects: bool) -> list[dict[str, Any]]:
    if all_projects:
        return fetch_all(conn, f"SELECT * FROM {table} ORDER BY created_at, id")
    return fetch_all(conn, f"SELECT * FROM {table} WHERE project_id=? ORDER BY created_at, id", (ctx.project_id,))


async def _visible(request: web.Request, table: str, what: str, ref: str | None = None) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    ref = ref if ref is not None else request.match_info["id"]
    if svc.policy.all_projects(ctx.roles):
        return await svc.catalog.read(queries.find, table, ref, what)
    return await svc.catalog.read(queries.find, table, ref, what, "project_id=?", (ctx.project_id,))


async def _after(request: web.Request, table: str, row_id: str, wait: bool) -> dict[str, Any] | None:
    """The row now, or once stable with ?wait=true (``wait`` parsed before the change was made)."""
    if wait:
        return await volumes(request).wait_stable(table, row_id, services(request).config.api.wait_timeout_s)
    return await services(request).catalog.read(fetch_one, f"SELECT * FROM {table} WHERE id=?", (row_id,))


async def _list(request: web.Request, table: str, plural: str, keys: tuple[str, ...]) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    all_projects = query_bool(request, "all_projects") and svc.policy.all_projects(ctx.roles)
    rows = [{k: r[k] for k in keys} for r in await svc.catalog.read(_rows, table, ctx, all_projects)]
    page, nxt = paginate(rows, *page_params(request))
    return json_response({plural: page, "next": nxt})


async def _show(request: web.Request, table: str, what: str, keys: tuple[str, ...]) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    row = await _visible(request, table, what)
    return json_response({k: row[k] for k in keys})


async def _made(request: web.Request, table: str, what: str, row_id: str, wait: bool,
                keys: tuple[str, ...]) -> web.Response:
    """The answer to a create: the new row (once stable with ?wait=true), 202."""
    row = await _after(request, table, row_id, wait)
    if row is None:
        raise NotFound(f"{what} {row_id} could not be found")
    plural = "snapshots" if table == "volume_snapshots" else "backups"
    return json_response({k: row[k] for k in keys}, status=202, location=f"/v1/{plural}/{row_id}")


async def _delete(request: web.Request, table: str, what: str, keys: tuple[str, ...],
                  begin: Callable[[str], Command]) -> web.Response:
    """Begin deleting the row ``begin(id)`` names; 204 once gone (?wait=true), else 202 and the row."""
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    row = await _visible(request, table, what)
    await volumes(request).propose(begin(str(row["id"])))
    after = await _after(request, table, str(row["id"]), wait)
    if after is None:
        return web.Response(status=204)
    return json_response({k: after[k] for k in keys}, status=202)


async def list_snapshots(request: web.Request) -> web.Response:
    return await _list(request, "volume_snapshots", "snapshots", _SNAP_KEYS)


async def show_snapshot(request: web.Request) -> web.Response:
    return await _show(request, "volume_snapshots", "Snapshot", _SNAP_KEYS)


async def create_snapshot(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    body = await parse_body(request, SnapshotIn)
    vol = await visible_volume(request, body.volume)
    vs = volumes(request)
    sid = str(uuid.uuid4())
    await vs.propose(cv.SnapshotCreate(id=sid, volume_id=str(vol["id"]), project_id=str(vol["project_id"]),
                                       user_id=ctx.user_id, name=body.name, description=body.description,
                                       force=body.force, created_at=now_iso()))
    vs.publish("snapshot.status", sid, "creating", volume_id=vol["id"], project_id=vol["project_id"])
    return await _made(request, "volume_snapshots", "Snapshot", sid, wait, _SNAP_KEYS)


async def delete_snapshot(request: web.Request) -> web.Response:
    return await _delete(request, "volume_snapshots", "Snapshot", _SNAP_KEYS,
                         lambda sid: cv.SnapshotBeginDelete(id=sid, updated_at=now_iso()))


async def list_backups(request: web.Request) -> web.Response:
    return await _list(request, "volume_backups", "backups", _BACKUP_KEYS)


async def show_backup(request: web.Request) -> web.Response:
    return await _show(request, "volume_backups", "Backup", _BACKUP_KEYS)


async def create_backup(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    body = await parse_body(request, BackupIn)
    vol = await visible_volume(request, body.volume)
    vs = volumes(request)
    bid = str(uuid.uuid4())
    # the volume's host reads it and keeps the backup in its backup_dir
    await vs.propose(cvb.BackupCreate(id=bid, volume_id=str(vol["id"]), project_id=str(vol["project_id"]),
                                     user_id=ctx.user_id, name=body.name, description=body.description,
                                     force=body.force, incremental=body.incremental, host=str(vol["host"]),
                                     created_at=now_iso()))
    vs.publish("backup.status", bid, "creating", volume_id=vol["id"], project_id=vol["project_id"])
    return await _made(request, "volume_backups", "Backup", bid, wait, _BACKUP_KEYS)


async def delete_backup(request: web.Request) -> web.Response:
    return await _delete(request, "volume_backups", "Backup", _BACKUP_KEYS,
                         lambda bid: cvb.BackupBeginDelete(id=bid, updated_at=now_iso()))


async def restore_backup(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    wait = query_bool(request, "wait")  # a bad value is refused before anything changes
    svc.policy.enforce(ctx.roles, "volume:manage")
    body = await parse_body(request, RestoreIn)
    backup = await _visible(request, "volume_backups", "Backup")
    vs = volumes(request)
    bid = str(backup["id"])
    if body.volume is not None:
        vol = await visible_volume(request, body.volume)
        vid = str(vol["id"])
        if vol["host"] and vol["host"] != backup["host"]:  # the volume's host restores: ask it whether it can
            comp = svc.extra.get(COMPUTE)  # its view of who is up: a down host is a prompt 409
            is_up = comp.placement.is_up if comp is not None else (lambda _h: True)
            forwarded = await to_host(request, str(vol["host"]), is_up, f"Volume {vid} is on host {vol['host']}")
            if forwarded is not None:
                return forwarded
            if not await vs.sees_backup(backup):
                raise Conflict(f"backup {bid} is in the backup_dir of host {backup['host']}, which host"
                               f" {vol['host']} (volume {vid}'s) does not see: restore it into a new volume"
                               " (made on that host), or give the hosts a shared backup_dir")
        await vs.propose(cvb.BackupRestore(id=bid, volume_id=vid, updated_at=now_iso()))
    else:
        source = await svc.catalog.read(fetch_one, "SELECT * FROM volumes WHERE id=?", (backup["volume_id"],))
        admin = svc.policy.all_projects(ctx.roles)
        type_ref = str(source["volume_type_id"]) if source is not None else svc.config.volumes.default_type
        vtype = await svc.catalog.read(find_type, type_ref, ctx, True if source is not None else admin)
        size = body.size_gb or int(backup["size_gb"])
        vid = str(uuid.uuid4())
        # a new volume is made on the backup's host (its backup_dir holds the chunks)
        await vs.create_placed(VolumeRequest(size, None, dict(vtype["extra_specs"])), lambda chosen: cv.VolumeCreate(
            id=vid, project_id=str(backup["project_id"]), user_id=ctx.user_id, name=body.name,
            description=f"restored from backup {bid}", size_gb=size, volume_type_id=str(vtype["id"]),
            availability_zone=chosen.availability_zone, host=chosen.host, backend=chosen.name,
            restore_backup_id=bid, created_at=now_iso()), on_host=str(backup["host"]))
    vs.publish("volume.status", vid, "restoring-backup", backup_id=bid, project_id=backup["project_id"])
    row = await _after(request, "volumes", vid, wait)
    if row is None:
        raise NotFound(f"Volume {vid} could not be found")
    return json_response({"backup_id": bid, "volume_id": vid, "volume": await view(request, row)}, status=202)


async def verify_backup(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:read")
    backup = await _visible(request, "volume_backups", "Backup")
    forwarded = await to_host(request, str(backup["host"]), lambda _h: True, f"Backup {backup['id']} is on host"
                              f" {backup['host']}")
    if forwarded is not None:
        return forwarded
    problems = await volumes(request).verify_backup(backup)
    return json_response({"backup_id": backup["id"], "ok": not problems, "chunks": backup["chunks"],
                          "problems": problems})


def register(router: Router) -> None:
    t = "volume"
    page = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"),
            ("all_projects", "boolean", "admin: every project's"))
    wait = (("wait", "boolean", "block until a stable state"),)
    router.add("GET", "/v1/snapshots", list_snapshots, "List volume snapshots", response=SnapshotList, query=page,
               tag=t)
    router.add("POST", "/v1/snapshots", create_snapshot, "Snapshot a volume", body=SnapshotIn, response=Snapshot,
               status=202, query=wait, tag=t)
    router.add("GET", "/v1/snapshots/{id}", show_snapshot, "Show a volume snapshot", response=Snapshot, tag=t)
    router.add("DELETE", "/v1/snapshots/{id}", delete_snapshot, "Delete a volume snapshot", status=202,
               response=Snapshot, query=wait, tag=t)
    router.add("GET", "/v1/backups", list_backups, "List volume backups", response=BackupList, query=page, tag=t)
    router.add("POST", "/v1/backups", create_backup, "Back up a volume (incremental after the first)",
               body=BackupIn, response=Backup, status=202, query=wait, tag=t)
    router.add("GET", "/v1/backups/{id}", show_backup, "Show a volume backup", response=Backup, tag=t)
    router.add("DELETE", "/v1/backups/{id}", delete_backup, "Delete a volume backup", status=202, response=Backup,
               query=wait, tag=t)
    router.add("POST", "/v1/backups/{id}/restore", restore_backup, "Restore a backup into a new or an available"
               " volume", body=RestoreIn, response=RestoreOut, status=202, query=wait, tag=t)
    router.add("POST", "/v1/backups/{id}/verify", verify_backup, "Read back every chunk of a backup",
               response=VerifyOut, tag=t)
