"""Image data between hosts over the signed peer API.

A host that needs an image its store lacks streams it from a holder (the host that took the
upload first, then every other host in turn: a host without it answers 404), checking the
sha256 the catalog recorded. One fetch per image per host: the image cache already shares a
fetch among concurrent builds. After an upload, the receiving host asks ``replicas - 1`` other
hosts to pull a copy into their own store, so one dead host does not lose the image.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from hvd.catalog.service import Catalog
from hvd.cluster.peers import PeerCaller, PeerErrors, PeerUnreachable
from hvd.errors import BadRequest, HvdError, NotFound
from hvd.storage import sparse_copy
from hvd.storage.image_cache import ImageCache
from hvd.storage.image_store import CHUNK, ImageStore

log = logging.getLogger(__name__)

DATA_PATH = "/internal/v1/images/{id}/data"
BASE_PATH = "/internal/v1/images/{id}/cached-base"  # a host's image cache copy (of a deleted image)
REPLICATE_PATH = "/internal/v1/images/replicate"
FETCH_TIMEOUT_S = 3600.0


class ReplicateRequest(BaseModel):
    """Pull a copy of this image into your store (from ``source`` first)."""

    image_id: str = Field(max_length=64)
    source: str = Field(max_length=255)


class ReplicateAnswer(BaseModel):
    stored: bool


async def holders(catalog: Catalog, image: dict[str, Any], me: str) -> list[str]:
    """Hosts to ask for ``image``'s data: where it was uploaded first, then every other host."""
    names = await catalog.read(lambda c: [r[0] for r in c.execute("SELECT name FROM hosts ORDER BY name")])
    first = [image["host"]] if image.get("host") and image["host"] != me else []
    return first + [n for n in names if n != me and n not in first]


async def stream_from(peers: PeerCaller, host: str, image_id: str, route: str = DATA_PATH) -> AsyncIterator[bytes]:
    """The image's bytes as ``host`` holds them (in its store, or at ``route`` BASE_PATH its cached
    base); NotFound when it does not hold them."""
    path = route.format(id=image_id)
    base = await peers.url_of(host)
    try:
        async with peers.session.get(base + path, headers=peers.signed("GET", path, b""),
                                     timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S, sock_read=60)) as resp:
            if resp.status == 404:
                raise NotFound(f"host {host} does not hold image {image_id}")
            if resp.status != 200:
                raise PeerUnreachable(f"host {host} answered HTTP {resp.status} for image {image_id}")
            async for chunk in resp.content.iter_chunked(CHUNK):
                yield chunk
    except PeerErrors as exc:
        raise PeerUnreachable(f"host {host} broke off image {image_id}: {type(exc).__name__} {exc}".strip()) from exc


async def fetch_to(peers: PeerCaller, catalog: Catalog, image: dict[str, Any], dest: Path) -> None:
    """Write ``image``'s data from a holder to ``dest`` (sha256-checked); the next holder is tried
    when one does not hold it, breaks off, or sends other bytes. NotFound when no host has it."""
    tried: list[str] = []
    for host in await holders(catalog, image, peers.host):
        try:
            await _write_checked(stream_from(peers, host, image["id"]), dest, image.get("checksum"))
            log.info("fetched image %s from host %s", image["id"], host)
            return
        except (HvdError, OSError) as exc:
            dest.unlink(missing_ok=True)
            tried.append(f"{host}: {exc.message if isinstance(exc, HvdError) else exc}")
    raise NotFound(f"no host could send the data of image {image['id']} ({'; '.join(tried) or 'no other host'})")


async def fetch_base_to(peers: PeerCaller, hosts: list[str], image_id: str, dest: Path) -> None:
    """Write the cached base of ``image_id`` from the first of ``hosts`` that sends it to ``dest``
    (hvd.compute.base_source decides whom to ask). No sha256 check: a base may be converted from
    the uploaded data; the signed peer channel carries it, and the image cache checks its format.
    NotFound when no host sends it."""
    tried: list[str] = []
    for host in hosts:
        try:
            await _write_checked(stream_from(peers, host, image_id, BASE_PATH), dest, None)
            log.info("fetched the cached base of image %s from host %s", image_id, host)
            return
        except (HvdError, OSError) as exc:
            dest.unlink(missing_ok=True)
            tried.append(f"{host}: {exc.message if isinstance(exc, HvdError) else exc}")
    raise NotFound(f"image {image_id} is deleted and no host could send its cached base"
                   f" ({'; '.join(tried) or 'no other host uses it'})")


async def _write_checked(chunks: AsyncIterator[bytes], dest: Path, sha256: str | None) -> None:
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    fh = await loop.run_in_executor(None, open, dest, "wb")
    try:
        writer = sparse_copy.SparseWriter(fh.fileno())  # zero blocks as holes: volumes copied from it stay sparse
        async for chunk in chunks:
            digest.update(chunk)
            await loop.run_in_executor(None, writer.write, chunk)
        await loop.run_in_executor(None, writer.close)
        await loop.run_in_executor(None, os.fsync, fh.fileno())
    finally:
        fh.close()
    if sha256 and digest.hexdigest() != sha256:
        raise BadRequest(f"image data has sha256 {digest.hexdigest()}, the catalog records {sha256}")


async def replicate_into(store: ImageStore, peers: PeerCaller, catalog: Catalog, image: dict[str, Any]) -> None:
    """Pull ``image`` into this host's store (no-op when it is there already)."""
    if store.path(image["id"]).exists():
        return
    partial = store.partial_path(image["id"])
    await fetch_to(peers, catalog, image, partial)
    os.replace(partial, store.path(image["id"]))


async def spread(peers: PeerCaller, catalog: Catalog, image_id: str, replicas: int) -> None:
    """After an upload here: ask ``replicas - 1`` other hosts to hold a copy (best effort)."""
    names = await catalog.read(lambda c: [r[0] for r in c.execute("SELECT name FROM hosts WHERE enabled=1"
                                                                   " ORDER BY name")])
    others = [n for n in names if n != peers.host]
    want = min(replicas, len(others) + 1) - 1
    done = 0
    for host in others:
        if done >= want:
            return
        try:
            await peers.call(host, REPLICATE_PATH, ReplicateRequest(image_id=image_id, source=peers.host),
                             ReplicateAnswer, timeout=FETCH_TIMEOUT_S)
            done += 1
        except HvdError as exc:
            log.warning("host %s could not take a copy of image %s: %s", host, image_id, exc.message)


_spreading: set[asyncio.Future[None]] = set()  # running spreads (the loop keeps only weak references)


def spread_later(peers: PeerCaller, catalog: Catalog, image_id: str, replicas: int) -> None:
    """``spread`` in the background (an upload or snapshot answers without waiting for the copies)."""
    task = asyncio.ensure_future(spread(peers, catalog, image_id, replicas))
    _spreading.add(task)
    task.add_done_callback(_spreading.discard)


async def serve_data(request: web.Request, store: ImageStore, image_id: str) -> web.StreamResponse:
    """The peer side of ``stream_from``: this store's copy of the image, or 404."""
    path = store.path(image_id)
    if "/" in image_id or not path.is_file():
        raise NotFound(f"this host does not hold image {image_id}")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(path.stat().st_size)})
    await response.prepare(request)
    async for chunk in store.read(image_id):
        await response.write(chunk)
    await response.write_eof()
    return response


async def serve_cached_base(request: web.Request, cache: ImageCache, image_id: str) -> web.StreamResponse:
    """The peer side of ``fetch_base_to``: this host's cached base of ``image_id``, or 404. The
    caller has checked that an instance here uses the image (hvd.compute.base_source.serves_base)."""
    path = cache.path_for(image_id)
    base_dir = cache.base_dir.resolve()
    # a regular file right inside _base (no symlink out of it)
    if path.is_symlink() or not path.is_file() or path.resolve().parent != base_dir:
        raise NotFound(f"this host has no cached base of image {image_id}")
    return await _stream_file(request, path)


async def _stream_file(request: web.Request, path: Path) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    fh = await loop.run_in_executor(None, open, path, "rb")
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(os.fstat(fh.fileno()).st_size)})
        await response.prepare(request)
        while chunk := await loop.run_in_executor(None, fh.read, CHUNK):
            await response.write(chunk)
    finally:
        fh.close()
    await response.write_eof()
    return response


def prune(store: ImageStore, catalog_ids: dict[str, str]) -> list[str]:
    """Remove this store's copies of images the catalog deleted (``catalog_ids``: id -> status)."""
    removed = []
    for image_id in store.ids():
        if catalog_ids.get(image_id, "deleted") == "deleted":
            store.delete(image_id)
            removed.append(image_id)
    return removed
