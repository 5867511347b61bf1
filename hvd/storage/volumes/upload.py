"""Upload-to-image on the volume's host (Cinder's os-volume_upload_image): the API records the volume
``uploading`` and an image handed to this host (``saving``); this copies the volume into it with
qemu-img, records it active and returns the volume to its previous status, or kills the image.
Redone from the start after a crash (a cut attempt's files are removed first)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from typing import TYPE_CHECKING, Any

from hvd.catalog import cmd_volumes as cv
from hvd.catalog.cmd_compute import ImageSetStatus
from hvd.catalog.sql import fetch_one
from hvd.errors import HvdError, NotImplementedYet
from hvd.faults import checkpoint
from hvd.identity.service import now_iso, seconds_since
from hvd.storage import qemu_img, transfer
from hvd.storage.volumes.backend import DATA_IO, GIB, message_of

if TYPE_CHECKING:
    from hvd.storage.volumes.service import VolumeService

log = logging.getLogger(__name__)

UPLOAD_GRACE_S = 60.0  # an upload's image is recorded just after its begin: a volume without one after this was cut


async def upload_work(svc: VolumeService, vol: dict[str, Any]) -> None:
    """Copy an uploading volume into its image (queued → saving → active; killed and its
    files removed on failure), then return the volume to its previous status. Redone from
    the start after a crash: a cut attempt's files are removed first."""
    vid = str(vol["id"])
    image = await svc.catalog.read(upload_image_of, vid, str(vol["project_id"]), str(vol["updated_at"]))
    status = None if image is None else str(image["status"])
    if status in (None, "queued") and seconds_since(str(vol["updated_at"])) < UPLOAD_GRACE_S:
        return  # the API records the image and hands it to this host just after the begin: look again
    if image is None or status != "saving" or image["host"] != svc.host:
        ok = image is not None and status == "active" and image["host"] == svc.host  # done, cut before
        if image is not None and status == "queued":  # its API request was cut before the hand-over
            with contextlib.suppress(HvdError):
                await svc.catalog.propose(ImageSetStatus(id=str(image["id"]), status="killed", expect=["queued"],
                                                         updated_at=now_iso()))
        error = None if ok else (
            "the upload's image record is missing, was deleted or is written by another host; nothing was"
            " uploaded")
        await svc._finish(cv.VolumeFinish(id=vid, op="upload", ok=ok, error=error, updated_at=now_iso()))
        return
    image_id = str(image["id"])
    store = svc.image_store
    try:
        if store is None:
            raise NotImplementedYet(f"host {svc.host} has no image store to upload volume {vid} into")
        backend = svc.backend_of(vol)
        await asyncio.to_thread(store.delete, image_id)  # what a cut attempt left
        raw = backend.raw_path(vid)
        if raw is not None:
            src, src_fmt = str(raw), "raw"
        else:  # a qcow2 file, read with -U like the raw ones (an in-use volume's QEMU holds it)
            info = backend.connection_info(vid)
            src, src_fmt = str(info["path"]), str(info["format"])
        fmt = str(image["disk_format"])
        # at most what the volume stores (its allocated blocks; a block device: its size)
        st_src = await asyncio.to_thread(os.stat, src)
        incoming = st_src.st_blocks * 512 if stat.S_ISREG(st_src.st_mode) else int(vol["size_gb"]) * GIB
        store.check_room(incoming, svc.config.images.free_space_reserve_mb << 20)
        await qemu_img.run(qemu_img.volume_to_image_argv(src, store.partial_path(image_id), src_fmt, fmt))
        checkpoint("volume.upload.partial_written")
        virtual_size = (await qemu_img.info(store.partial_path(image_id), fmt)).virtual_size
        size, checksum = await asyncio.get_running_loop().run_in_executor(DATA_IO, store.adopt_partial, image_id)
        await svc.catalog.propose(ImageSetStatus(id=image_id, status="active", expect=["saving"], size=size,
                                                 virtual_size=virtual_size, checksum=checksum,
                                                 updated_at=now_iso()))
    except Exception as exc:
        log.warning("upload of volume %s into image %s failed: %s", vid, image_id, message_of(exc))
        try:  # the file goes only with the image: an activation whose answer was lost may have committed
            await svc.catalog.propose(ImageSetStatus(id=image_id, status="killed", expect=["saving"],
                                                     updated_at=now_iso()))
        except HvdError:
            now = await svc.catalog.read(fetch_one, "SELECT status FROM images WHERE id=?", (image_id,))
            if now is not None and now["status"] == "active":
                log.info("image %s was recorded active after all; upload of volume %s done", image_id, vid)
                await _uploaded(svc, vid, image_id)
                return
        if store is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(store.delete, image_id)
        await svc._finish(cv.VolumeFinish(id=vid, op="upload", ok=False, error=message_of(exc),
                                          updated_at=now_iso()))
        return
    await _uploaded(svc, vid, image_id)

async def _uploaded(svc: VolumeService, vid: str, image_id: str) -> None:
    if svc.peers is not None:  # copies on other hosts, like an API upload
        transfer.spread_later(svc.peers, svc.catalog, image_id, svc.config.images.replicas)
    await svc._finish(cv.VolumeFinish(id=vid, op="upload", ok=True, updated_at=now_iso()))


def upload_image_of(conn: Any, volume_id: str, project_id: str, begun_at: str) -> dict[str, Any] | None:
    """The image an uploading volume is copied into: its newest queued or saving image, else the
    newest one recorded since the upload began (active: done; killed or deleted: failed); None
    when the API has not recorded it (yet). Only images of the volume's project count: anyone may
    set a volume_id property on an image of their own, and another project's must never get the data."""
    where = "json_extract(properties, '$.volume_id')=? AND owner=?"
    pending = fetch_one(conn, f"SELECT * FROM images WHERE {where} AND status IN ('queued', 'saving')"
                              " ORDER BY created_at DESC LIMIT 1", (volume_id, project_id))
    if pending is not None:
        return pending
    return fetch_one(conn, f"SELECT * FROM images WHERE {where} AND created_at>=? ORDER BY created_at DESC LIMIT 1",
                     (volume_id, project_id, begun_at))
