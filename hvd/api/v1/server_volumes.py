"""/v1/servers/{id}/volume-attachments: attach, list and detach volumes of a server.

The server's host does the work (a request arriving elsewhere is forwarded there, as for
interfaces); the flow itself is hvd.compute.volumes.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.forward import catch_up_if_forwarded, to_owner
from hvd.api.helpers import context, json_response, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.server_lookup import visible_server
from hvd.api.v1.volumes import view as volume_view
from hvd.api.v1.volumes import visible_volume
from hvd.catalog.sql import fetch_all
from hvd.compute.volumes import ComputeVolumes
from hvd.errors import Conflict

DEVICE_PATTERN = r"^(/dev/)?vd[b-z][a-z]?$"


class AttachRequest(BaseModel):
    """Attach a volume: its id, and optionally the device wanted (the host picks a free one if taken)."""

    model_config = ConfigDict(extra="forbid")
    volume: str = Field(min_length=1, max_length=64, description="Volume id.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, max_length=12,
                               description="Guest device wanted, e.g. vdb or /dev/vdb (a hint, as in Nova).")
    mode: Literal["rw", "ro"] = Field("rw", description="Read-write, or read-only for the guest.")


class VolumeAttachment(BaseModel):
    id: str
    volume_id: str
    server_id: str
    device: str | None
    status: str
    mode: str
    host: str | None
    error: str | None


class VolumeAttachmentList(BaseModel):
    volume_attachments: list[VolumeAttachment]


def view(att: dict[str, Any]) -> dict[str, Any]:
    return {"id": att["id"], "volume_id": att["volume_id"], "server_id": att["instance_id"],
            "device": f"/dev/{att['device']}" if att["device"] else None, "status": att["status"],
            "mode": att["attach_mode"], "host": att["host"], "error": att["error"]}


def _volumes(request: web.Request) -> ComputeVolumes:
    volumes: ComputeVolumes = services(request).extra["compute"].volumes
    return volumes



async def list_attachments(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    inst = await visible_server(request)
    rows = await _volumes(request).of_server(inst["id"])
    return json_response({"volume_attachments": [view(r) for r in rows]})


async def attach_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:action")
    body = await parse_body(request, AttachRequest)
    inst = await visible_server(request)
    compute = svc.extra["compute"]
    forwarded = await to_owner(request, inst, compute.placement.is_up)
    if forwarded is not None:  # the owning host changes its disks
        return forwarded
    compute.check_lock(ctx, inst)
    att = await _volumes(request).attach(inst, body.volume, body.device, body.mode)
    return json_response(view(att), status=201,
                         location=f"/v1/servers/{inst['id']}/volume-attachments/{att['volume_id']}")


async def detach_volume(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:action")
    inst = await visible_server(request)
    compute = svc.extra["compute"]
    forwarded = await to_owner(request, inst, compute.placement.is_up)
    if forwarded is not None:
        return forwarded
    compute.check_lock(ctx, inst)
    await _volumes(request).detach(inst, request.match_info["volume"])
    return web.Response(status=204)


async def extend_online(request: web.Request, volume: dict[str, Any], new_size_gb: int) -> web.Response:
    """POST /v1/volumes/{id}/extend of an in-use volume: run on the attached server's host."""
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "volume:manage")
    atts = await svc.catalog.read(fetch_all, "SELECT * FROM volume_attachments WHERE volume_id=?", (volume["id"],))
    if len(atts) != 1 or not atts[0]["host"]:
        raise Conflict(f"volume {volume['id']} is attached {len(atts)} times: online extend needs exactly one")
    compute = svc.extra["compute"]
    inst = await compute.instance(atts[0]["instance_id"])
    forwarded = await to_owner(request, inst, compute.placement.is_up)  # the server's host (it may have moved)
    if forwarded is not None:
        return forwarded
    await catch_up_if_forwarded(request)
    compute.check_lock(ctx, inst)
    compute.locks.acquire(inst["id"], "volume_extend")
    try:
        await _volumes(request).extend_online(volume["id"], new_size_gb)
    finally:
        compute.locks.release(inst["id"])
    return json_response(await volume_view(request, await visible_volume(request, volume["id"])), status=202)


def register(router: Router) -> None:
    t = "compute"
    base = "/v1/servers/{id}/volume-attachments"
    router.add("GET", base, list_attachments, "The server's volume attachments", response=VolumeAttachmentList,
               tag=t)
    router.add("POST", base, attach_volume, "Attach a volume (hot-plugged when the server runs)",
               body=AttachRequest, response=VolumeAttachment, status=201, tag=t)
    router.add("DELETE", base + "/{volume}", detach_volume,
               "Detach a volume (409 and still attached if the guest does not release it)", status=204, tag=t)
