"""/v1/images: Glance's subset — records, streamed upload/download to the local store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.context import RequestContext
from hvd.api.forward import PEERS
from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog import queries, quota
from hvd.catalog.cmd_compute import ImageCreate, ImageDelete, ImageSetStatus, ImageUpdate
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.catalog.usage import project_usage
from hvd.errors import BadRequest, Conflict, HvdError, NotFound, QuotaExceeded
from hvd.identity.service import now_iso
from hvd.storage import qemu_img, transfer
from hvd.storage.image_store import ImageStore

log = logging.getLogger(__name__)

IMAGE_STORE = "image_store"
DISK_FORMATS = Literal["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso"]
CONTAINER_FORMATS = Literal["ami", "ari", "aki", "bare", "ovf", "ova", "docker"]
MAX_IMAGE_BYTES = 1 << 40
# formats qemu-img can identify, mapped from Glance's names
QEMU_CHECKED = {"raw", "qcow2", "vmdk", "vdi", "vhdx", "vhd"}


class ImageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    disk_format: DISK_FORMATS = "qcow2"
    container_format: CONTAINER_FORMATS = "bare"
    visibility: Literal["public", "private"] = "private"
    protected: bool = False
    min_disk: int = Field(0, ge=0, le=1 << 20)
    min_ram: int = Field(0, ge=0, le=1 << 24)
    properties: dict[str, str] = Field(default_factory=dict, max_length=128)


class ImagePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=255)
    visibility: Literal["public", "private"] | None = None
    protected: bool | None = None
    min_disk: int | None = Field(None, ge=0, le=1 << 20)
    min_ram: int | None = Field(None, ge=0, le=1 << 24)
    properties: dict[str, str] | None = Field(None, max_length=128)


class Image(BaseModel):
    id: str
    name: str
    owner: str
    status: str
    disk_format: str
    container_format: str
    visibility: str
    protected: bool
    min_disk: int
    min_ram: int
    size: int | None
    virtual_size: int | None
    checksum: str | None
    properties: dict[str, str]
    created_at: str
    updated_at: str


class ImageList(BaseModel):
    images: list[Image]
    next: str | None


def image_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in Image.model_fields}


def find_image(conn: sqlite3.Connection, ref: str, ctx: RequestContext, admin: bool) -> dict[str, Any]:
    """An image the caller may see (public, or owned by its project; admin: all) by id or name."""
    if admin:
        return queries.find(conn, "images", ref, "Image", "status != 'deleted'")
    return queries.find(conn, "images", ref, "Image", "status != 'deleted' AND (visibility='public' OR owner=?)",
                        (ctx.project_id,))


def store(request: web.Request) -> ImageStore:
    image_store: ImageStore = services(request).extra[IMAGE_STORE]
    return image_store


def _visible_images(conn: sqlite3.Connection, ctx: RequestContext, admin: bool) -> list[dict[str, Any]]:
    if admin:
        return fetch_all(conn, "SELECT * FROM images WHERE status != 'deleted' ORDER BY created_at, id")
    return fetch_all(
        conn,
        "SELECT * FROM images WHERE status != 'deleted' AND (visibility='public' OR owner=?) ORDER BY created_at, id",
        (ctx.project_id,),
    )


async def _own_image(request: web.Request) -> dict[str, Any]:
    """An image the caller may change: its project's (any for admin); others' are 404 or 403."""
    svc, ctx = services(request), context(request)
    admin = svc.policy.all_projects(ctx.roles)
    row = await svc.catalog.read(find_image, request.match_info["id"], ctx, admin)
    if row["owner"] != ctx.project_id and not admin:
        raise NotFound(f"Image {request.match_info['id']} could not be found")
    return row


async def list_images(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:read")
    rows = await svc.catalog.read(_visible_images, ctx, svc.policy.all_projects(ctx.roles))
    for key in ("name", "status", "visibility", "disk_format"):
        want = request.query.get(key)
        if want is not None:
            rows = [r for r in rows if r[key] == want]
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"images": [image_view(r) for r in page], "next": nxt})


async def show_image(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:read")
    admin = svc.policy.all_projects(ctx.roles)
    return json_response(image_view(await svc.catalog.read(find_image, request.match_info["id"], ctx, admin)))


async def create_image(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:manage")
    body = await parse_body(request, ImageIn)
    if body.visibility == "public":
        svc.policy.enforce(ctx.roles, "image:publicize")
    image_id = str(uuid.uuid4())
    await svc.catalog.propose(ImageCreate(id=image_id, owner=ctx.project_id, created_at=now_iso(), **body.model_dump()))
    row = await svc.catalog.read(queries.find, "images", image_id, "Image")
    return json_response(image_view(row), status=201, location=f"/v1/images/{image_id}")


async def update_image(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:manage")
    body = await parse_body(request, ImagePatch)
    if body.visibility == "public":
        svc.policy.enforce(ctx.roles, "image:publicize")
    row = await _own_image(request)
    await svc.catalog.propose(ImageUpdate(id=row["id"], updated_at=now_iso(), **body.model_dump()))
    return json_response(image_view(await svc.catalog.read(queries.find, "images", row["id"], "Image")))


async def delete_image(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:manage")
    row = await _own_image(request)
    await svc.catalog.propose(ImageDelete(id=row["id"], updated_at=now_iso()))
    store(request).delete(row["id"])
    return web.Response(status=204)


ROOM_CHECK_EVERY = 64 << 20  # bytes between two free-space checks during an upload


def _within_quota(conn: sqlite3.Connection, owner: str, size: int) -> None:
    used = project_usage(conn, owner)["image_megabytes"]
    quota.check(conn, owner, "image_megabytes", (size + 2**20 - 1) // 2**20, used)


async def upload_image(request: web.Request) -> web.Response:
    """Stream the body into the store; queued → saving → active, or killed (nothing kept)."""
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:manage")
    row = await _own_image(request)
    if request.content_type not in ("application/octet-stream", ""):
        raise BadRequest(f"image data must be sent as application/octet-stream, not {request.content_type}")
    image_id = row["id"]
    image_store = store(request)
    reserve = svc.config.images.free_space_reserve_mb * 2**20
    image_store.check_room(request.content_length or 0, reserve)  # before anything changes
    if request.content_length:  # the quota is checked again, atomically, when the image becomes active
        await svc.catalog.read(_within_quota, row["owner"], request.content_length)
    await svc.catalog.propose(
        ImageSetStatus(id=image_id, status="saving", expect=["queued"], host=svc.config.host_name,
                       updated_at=now_iso())
    )
    try:
        async def chunks() -> AsyncIterator[bytes]:
            received = 0
            async for chunk in request.content.iter_chunked(1 << 20):
                received += len(chunk)
                if received % ROOM_CHECK_EVERY < len(chunk):  # a chunked upload has no length to check first
                    image_store.check_room(0, reserve)
                yield chunk

        try:
            size, checksum = await image_store.write(image_id, chunks(), MAX_IMAGE_BYTES)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        if size == 0:
            raise BadRequest("image data is empty")
        virtual_size = size
        if row["disk_format"] in QEMU_CHECKED:
            try:
                info = await qemu_img.info(image_store.path(image_id))
            except HvdError as exc:
                raise BadRequest(f"image data is not a readable disk image: {exc.message}") from exc
            qemu_img.check_safe_upload(info, row["disk_format"])
            virtual_size = info.virtual_size
        await svc.catalog.propose(
            ImageSetStatus(id=image_id, status="active", expect=["saving"], size=size, virtual_size=virtual_size,
                           checksum=checksum, updated_at=now_iso())
        )
        peers = svc.extra.get(PEERS)
        if peers is not None:  # copies on other hosts, so one dead host does not lose the image
            transfer.spread_later(peers, svc.catalog, image_id, svc.config.images.replicas)
    except BaseException as exc:
        if isinstance(exc, QuotaExceeded):  # the activation was refused: the data goes, the record is killed
            log.info("upload of image %s refused: %s", image_id, exc.message)
        try:  # the file goes only with the record: an activation whose answer was lost may have committed
            await asyncio.shield(svc.catalog.propose(
                ImageSetStatus(id=image_id, status="killed", expect=["saving"], updated_at=now_iso())
            ))
        except HvdError:
            now = await svc.catalog.read(fetch_one, "SELECT status FROM images WHERE id=?", (image_id,))
            if now is not None and now["status"] == "active":
                log.info("image %s was recorded active after all (%s)", image_id, type(exc).__name__)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return web.Response(status=204)
            image_store.delete(image_id)
            raise exc from None
        image_store.delete(image_id)
        raise
    return web.Response(status=204)


async def download_image(request: web.Request) -> web.StreamResponse:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "image:read")
    admin = svc.policy.all_projects(ctx.roles)
    row = await svc.catalog.read(find_image, request.match_info["id"], ctx, admin)
    if row["status"] != "active":
        raise Conflict(f"Image {row['id']} has no data (status {row['status']})")
    image_store = store(request)
    if not image_store.path(row["id"]).exists():
        raise NotFound(f"the data of image {row['id']} is not on this host")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(row["size"]),
                                           "X-Image-Sha256": row["checksum"] or ""})
    await response.prepare(request)
    async for chunk in image_store.read(row["id"]):
        await response.write(chunk)
    await response.write_eof()
    return response


def register(router: Router) -> None:
    t = "image"
    q = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"),
         ("name", "string", "filter"), ("status", "string", "filter"), ("visibility", "string", "filter"),
         ("disk_format", "string", "filter"))
    router.add("GET", "/v1/images", list_images, "List images", response=ImageList, query=q, tag=t)
    router.add("POST", "/v1/images", create_image, "Create an image record (status queued)", body=ImageIn,
               response=Image, status=201, tag=t)
    router.add("GET", "/v1/images/{id}", show_image, "Show an image", response=Image, tag=t)
    router.add("PATCH", "/v1/images/{id}", update_image, "Update an image", body=ImagePatch, response=Image, tag=t)
    router.add("DELETE", "/v1/images/{id}", delete_image, "Delete an image (protected: 409)", status=204, tag=t)
    router.add("PUT", "/v1/images/{id}/file", upload_image, "Upload image data (streamed)", status=204,
               raw_body="application/octet-stream", tag=t)
    router.add("GET", "/v1/images/{id}/file", download_image, "Download image data",
               raw_response="application/octet-stream", tag=t)
