"""``block_device_mapping`` of POST /v1/servers: boot from a volume, and volumes at create.

Nova's block_device_mapping_v2, simplified: ``[{"source": "image"|"volume"|"snapshot", "id",
"size_gb"?, "delete_on_termination", "boot_index": 0|null}]``. Volumes to make (from an image or a
volume snapshot) are created and awaited here, before the server record, so a bad reference or a
failed copy is an error with nothing left behind. The server's host attaches them at build
(hvd.compute.volumes.connect_at_build): the entry with boot_index 0 as vda, in place of a local
root disk; the others as data disks. A snapshot of such a server is a snapshot of its boot volume
plus an image record naming it (``snapshot_runner``); booting that image makes a volume from it.
Operations that need the server's own files, or that would need a volume's data from a host that
is down, are refused with the reason (``check_op``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context
from hvd.api.services import services
from hvd.api.v1.images import find_image
from hvd.api.v1.volumes import find_type, visible_volume, volumes
from hvd.catalog import cmd_volumes as cv
from hvd.catalog import queries
from hvd.catalog.cmd_compute import BOOT_VOLUME_KEY, ImageCreate, ImageSetStatus
from hvd.catalog.sql import fetch_all
from hvd.compute.lifecycle import Op
from hvd.compute.volumes import move_blocker
from hvd.errors import BadRequest, Conflict, HvdError
from hvd.identity.service import now_iso
from hvd.storage.volumes import states as st
from hvd.storage.volumes.scheduler import VolumeRequest

log = logging.getLogger(__name__)

GIB = 1 << 30
BOOT_ID = BOOT_VOLUME_KEY  # instance extra: the volume the server boots from
BDM = "block_device_mapping"  # instance extra: [{"volume_id", "boot_index"}] attached at build
DELETE_ON_TERMINATION = "delete_on_termination"  # instance extra: volume ids deleted with the server
SNAPSHOT_PROPERTY = "boot_volume_snapshot_id"  # image property: booting the image = a volume from this snapshot
# operations that copy or replace the root disk file: a server booted from a volume has none
REFUSED_FOR_VOLUME_BOOT = {
    Op.SHELVE: "it has no local disk to shelve",
    Op.REBUILD: "its root disk is a volume",
    Op.RESIZE: "resizing a server booted from a volume is not supported",
    Op.MIGRATE: "moving a server booted from a volume to another host is not supported",
    Op.LIVE_MIGRATE: "moving a server booted from a volume to another host is not supported",
}


class BlockDevice(BaseModel):
    """One entry of ``block_device_mapping``."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["image", "volume", "snapshot"] = Field(
        description="image: a new volume from it; volume: an existing available volume; snapshot: a new volume"
                    " from a volume snapshot")
    id: str = Field(min_length=1, max_length=255, description="The image, volume or snapshot (id or name).")
    size_gb: int | None = Field(None, ge=1, le=65536, description="Size of a new volume (default: big enough).")
    delete_on_termination: bool = Field(False, description="Delete the volume with the server.")
    boot_index: int | None = Field(None, ge=0, le=0, description="0: the server boots from it (vda); null: data.")


@dataclass
class BootPlan:
    """What the server record carries: its image id (the boot volume's image, or "") and extra."""

    image_id: str
    extra: dict[str, Any]
    created: list[str] = field(default_factory=list)  # volumes made here (deleted if the create fails)


def from_image(image: dict[str, Any]) -> list[BlockDevice] | None:
    """The mapping an image made by snapshotting a server booted from a volume stands for."""
    snapshot_id = (image.get("properties") or {}).get(SNAPSHOT_PROPERTY)
    if not snapshot_id:
        return None
    return [BlockDevice(source="snapshot", id=snapshot_id, boot_index=0, delete_on_termination=True)]


def snapshot_runner(request: web.Request, image_id: str,
                    name: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """Snapshot of a server booted from a volume: a snapshot of its boot volume (crash-consistent:
    taken while the guest runs, as a power cut would leave it) and an image record pointing to it
    (no data of its own): a server created from that image boots from a new volume made from it."""
    svc, ctx = services(request), context(request)
    vs = volumes(request)

    async def run(inst: dict[str, Any]) -> dict[str, Any]:
        boot = str(inst["extra"][BOOT_ID])
        snapshot_id = str(uuid.uuid4())
        await svc.catalog.propose(ImageCreate(
            id=image_id, name=name, owner=inst["project_id"], disk_format="raw", container_format="bare",
            visibility="private", properties={SNAPSHOT_PROPERTY: snapshot_id, "image_type": "snapshot",
                                              "instance_uuid": inst["id"], "root_device_name": "/dev/vda"},
            created_at=now_iso()))
        try:
            await vs.propose(cv.SnapshotCreate(id=snapshot_id, volume_id=boot, project_id=inst["project_id"],
                                               user_id=ctx.user_id, name=f"{name} (boot volume)", force=True,
                                               created_at=now_iso()))
            snap = await vs.wait_stable("volume_snapshots", snapshot_id, svc.config.api.wait_timeout_s)
            if snap is None or snap["status"] != st.AVAILABLE:
                raise Conflict(f"snapshot of boot volume {boot} failed: {(snap or {}).get('error') or 'deleted'}")
            await svc.catalog.propose(ImageSetStatus(id=image_id, status="saving", expect=["queued"],
                                                     updated_at=now_iso()))
            await svc.catalog.propose(ImageSetStatus(id=image_id, status="active", expect=["saving"], size=0,
                                                     virtual_size=int(snap["size_gb"]) * GIB, updated_at=now_iso()))
        except BaseException:
            with contextlib.suppress(Exception):
                await svc.catalog.propose(ImageSetStatus(id=image_id, status="killed", expect=["queued", "saving"],
                                                         updated_at=now_iso()))
            raise
        return {}

    return run


def boots_from_volume(inst: dict[str, Any]) -> bool:
    return bool((inst.get("extra") or {}).get(BOOT_ID))


async def prepare(request: web.Request, mapping: list[BlockDevice], flavor: dict[str, Any],
                  count: int) -> BootPlan:
    """Check the mapping and make the volumes it asks for (available when this returns)."""
    if count > 1:
        raise BadRequest("block_device_mapping can be given for one server only (max_count is above 1)")
    boots = [d for d in mapping if d.boot_index == 0]
    if len(boots) > 1:
        raise BadRequest("only one block_device_mapping entry may have boot_index 0")
    plan = BootPlan(image_id="", extra={BDM: [], DELETE_ON_TERMINATION: []})
    try:
        for dev in sorted(mapping, key=lambda d: d.boot_index is None):
            volume = await _volume_for(request, dev, flavor, plan)
            if dev.boot_index == 0:
                plan.extra[BOOT_ID] = volume["id"]
                plan.image_id = str(volume["source_image_id"] or "")
            plan.extra[BDM].append({"volume_id": volume["id"], "boot_index": dev.boot_index})
            if dev.delete_on_termination:
                plan.extra[DELETE_ON_TERMINATION].append(volume["id"])
    except BaseException:
        await discard(request, plan)
        raise
    return plan


async def _volume_for(request: web.Request, dev: BlockDevice, flavor: dict[str, Any],
                      plan: BootPlan) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    admin = svc.policy.all_projects(ctx.roles)
    if dev.source == "volume":
        volume = await visible_volume(request, dev.id)
        if volume["status"] != st.AVAILABLE:
            raise Conflict(f"volume {volume['id']} is {volume['status']}: only an available volume can be mapped")
        return volume
    vs = volumes(request)
    image_id = snapshot_id = None
    host = backend = None
    if dev.source == "image":
        image = await svc.catalog.read(find_image, dev.id, ctx, admin)
        if image["status"] != "active":
            raise BadRequest(f"image {image['id']} is {image['status']}, not active")
        needed = max(int(flavor["disk_gb"]), int(image["min_disk"] or 0),
                     -(-int(image["virtual_size"] or 0) // GIB), 1)
        image_id = str(image["id"])
    else:
        where, args = ("1=1", ()) if admin else ("project_id=?", (ctx.project_id,))
        snap = await svc.catalog.read(queries.find, "volume_snapshots", dev.id, "Snapshot", where, args)
        needed, snapshot_id = int(snap["size_gb"]), str(snap["id"])
        host, backend = snap["host"], snap["backend"]  # a copy stays on its snapshot's backend
    size = dev.size_gb or needed
    if size < needed:
        raise BadRequest(f"{dev.source} {dev.id} needs a volume of at least {needed} GiB, {size} GiB asked")
    vtype = await svc.catalog.read(find_type, svc.config.volumes.default_type, ctx, admin)
    vid = str(uuid.uuid4())

    def make(host: str, backend: str) -> cv.VolumeCreate:
        local = vs.backends.get(backend) if host == vs.host else None
        return cv.VolumeCreate(
            id=vid, project_id=ctx.project_id, user_id=ctx.user_id, name=f"boot-{vid[:8]}" if dev.boot_index == 0
            else f"data-{vid[:8]}", size_gb=size, volume_type_id=str(vtype["id"]), availability_zone=vs.az,
            host=host, backend=backend, volume_format=local.volume_format if local is not None else "raw",
            bootable=image_id is not None, source_image_id=image_id, source_snapshot_id=snapshot_id,
            created_at=now_iso())

    if host is None or backend is None:
        await vs.create_placed(VolumeRequest(size, None, dict(vtype["extra_specs"])),
                               lambda chosen: make(chosen.host, chosen.name))
    else:
        await vs.propose(make(host, backend))
    plan.created.append(vid)
    vs.publish("volume.status", vid, st.CREATING)
    made = await vs.wait_stable("volumes", vid, svc.config.api.wait_timeout_s)
    if made is None or made["status"] != st.AVAILABLE:
        reason = (made or {}).get("error") or "it was deleted"
        raise Conflict(f"the volume for block device {dev.source} {dev.id} could not be made: {reason}")
    return made


async def discard(request: web.Request, plan: BootPlan) -> None:
    """Delete the volumes ``prepare`` made (the server was not created)."""
    vs = services(request).extra.get("volumes")
    for vid in plan.created:
        with contextlib.suppress(HvdError):
            await services(request).catalog.propose(cv.VolumeBegin(id=vid, op="delete", updated_at=now_iso()))
            if vs is not None:
                vs.wake()


async def check_op(request: web.Request, inst: dict[str, Any], op: Op) -> None:
    """409 for an operation a server booted from a volume, or with volumes attached, cannot do."""
    reason = REFUSED_FOR_VOLUME_BOOT.get(op)
    if reason and (inst.get("extra") or {}).get(BOOT_ID):
        raise Conflict(f"Cannot {op.value} instance {inst['id']}: it boots from volume"
                       f" {inst['extra'][BOOT_ID]}; {reason}")
    if op in (Op.LIVE_MIGRATE, Op.EVACUATE):  # cold moves and unshelve reconnect volumes on the new host
        attached = await services(request).catalog.read(
            fetch_all, "SELECT volume_id, connection_info FROM volume_attachments WHERE instance_id=?", (inst["id"],))
        local = [a for a in attached if a["connection_info"].get("type") != "nbd"]
        if local and op == Op.EVACUATE:  # opened directly: the volume lives on the server's (dead) host
            raise Conflict(f"Cannot {op.value} instance {inst['id']}: volume {local[0]['volume_id']} lives on its"
                           f" host {inst['host']} (opened directly there): while that host is down its data is"
                           " unreachable from any other")
        blocked = [r for a in local if (r := move_blocker(a["connection_info"], a["volume_id"]))]
        if blocked and op == Op.LIVE_MIGRATE:
            raise Conflict(f"Cannot {op.value} instance {inst['id']}: {blocked[0]}")
