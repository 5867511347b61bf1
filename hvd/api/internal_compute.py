"""Peer routes of compute: the leader's placement hand-off, the chosen host's build call, and image
data between hosts. Signed like every peer route (see internal.py); typed bodies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hvd.api.forward import wait_applied
from hvd.api.internal import _authenticated_body, _wire
from hvd.api.services import SERVICES
from hvd.cluster import event_relay
from hvd.cluster.peers import APPLIED_HEADER
from hvd.compute import base_source, coldmove, migration
from hvd.compute.builds import (
    BUILD_PATH,
    PLACE_PATH,
    UNSHELVE_PATH,
    BuildRequest,
    PlaceAnswer,
    PlaceRequest,
    UnshelveRequest,
)
from hvd.compute.coldmove import MoveCall
from hvd.compute.manager import instances_using
from hvd.compute.migration import MigrationCall
from hvd.compute.service import ComputeService
from hvd.errors import BadRequest, Conflict, HvdError, NotFound, ServiceUnavailable
from hvd.storage import transfer
from hvd.storage.transfer import ReplicateAnswer, ReplicateRequest
from hvd.storage.volumes import nbd

log = logging.getLogger(__name__)

COMPUTE_KEY = "compute"  # key of the ComputeService in ApiServices.extra
EVENTS_KEY = "events"  # key of the EventBus in ApiServices.extra


async def catch_up(request: web.Request) -> None:
    """Wait until this replica has applied what the calling host had applied when it called."""
    await wait_applied(request, request.headers.get(APPLIED_HEADER, ""))


M = TypeVar("M", bound=BaseModel)


def _typed(model: type[M], run: Callable[[ComputeService, M], Awaitable[BaseModel]]) -> Callable[
        [web.Request], Awaitable[web.Response]]:
    """A peer route: signed body -> ``model`` -> ``run`` on this host's compute service -> JSON."""
    async def handler(request: web.Request) -> web.Response:
        try:
            body = await _authenticated_body(request)
            try:
                payload = model.model_validate_json(body)
            except ValidationError as exc:
                raise BadRequest(f"malformed {model.__name__}: {exc.errors()[0]['msg']}") from exc
            await catch_up(request)
            service: ComputeService = request.app[SERVICES].extra[COMPUTE_KEY]
            answer = await run(service, payload)
        except HvdError as exc:
            return _wire(exc)
        return web.Response(body=answer.model_dump_json(), content_type="application/json")

    return handler


async def _place(service: ComputeService, payload: PlaceRequest) -> BaseModel:
    service.builds.accept_placement(payload)
    return PlaceAnswer(accepted=True)


async def _replicate(service: ComputeService, payload: ReplicateRequest) -> BaseModel:
    manager = service.manager
    if manager.peers is None:
        raise ServiceUnavailable("this host has no cluster key to fetch images with")
    image = await manager.image_row(payload.image_id)
    if image["status"] != "active":
        raise Conflict(f"Image {payload.image_id} is {image['status']}, not active")
    await transfer.replicate_into(manager.store, manager.peers, service.catalog, image)
    return ReplicateAnswer(stored=True)


async def _move_file(request: web.Request) -> web.StreamResponse:
    try:
        await _authenticated_body(request)
        service: ComputeService = request.app[SERVICES].extra[COMPUTE_KEY]
        return await service.moves.serve_file(request, request.match_info["id"], request.match_info["name"])
    except HvdError as exc:
        return _wire(exc)


async def _image_data(request: web.Request) -> web.StreamResponse:
    try:
        await _authenticated_body(request)
        service: ComputeService = request.app[SERVICES].extra[COMPUTE_KEY]
        return await transfer.serve_data(request, service.manager.store, request.match_info["id"])
    except HvdError as exc:
        return _wire(exc)


async def _cached_base(request: web.Request) -> web.StreamResponse:
    """This host's cached base of an image, only while one of its instances uses it."""
    try:
        await _authenticated_body(request)
        service: ComputeService = request.app[SERVICES].extra[COMPUTE_KEY]
        image_id = request.match_info["id"]
        if not base_source.valid_image_id(image_id):
            raise BadRequest(f"image id {image_id!r} is not a uuid")
        users = await service.catalog.read(instances_using, image_id)
        if not base_source.serves_base(image_id, service.host, users):
            raise NotFound(f"no instance on host {service.host} uses image {image_id}")
        return await transfer.serve_cached_base(request, service.manager.cache, image_id)
    except HvdError as exc:
        return _wire(exc)


async def _events(request: web.Request) -> web.StreamResponse:
    try:
        await _authenticated_body(request)
    except HvdError as exc:
        return _wire(exc)
    return await event_relay.serve_stream(request, request.app[SERVICES].extra[EVENTS_KEY])


def install(app: web.Application) -> None:
    """Add the compute peer routes (the app must already carry the peer endpoint and services)."""
    add = app.router.add_post
    add(PLACE_PATH, _typed(PlaceRequest, _place))
    add(BUILD_PATH, _typed(BuildRequest, lambda s, p: s.builds.accept_build(p)))
    add(UNSHELVE_PATH, _typed(UnshelveRequest, lambda s, p: s.builds.accept_unshelve(p)))
    add(transfer.REPLICATE_PATH, _typed(ReplicateRequest, _replicate))
    add(migration.PREPARE_PATH, _typed(MigrationCall, lambda s, p: s.migrations.prepare(p)))
    add(migration.FINISH_PATH, _typed(MigrationCall, lambda s, p: s.migrations.finish(p)))
    add(migration.ABORT_PATH, _typed(MigrationCall, lambda s, p: s.migrations.abort_incoming(p)))
    add(nbd.EXPORT_PATH, _typed(nbd.ExportRequest, lambda s, p: s.volumes.nbd_server().export(p)))
    add(nbd.UNEXPORT_PATH, _typed(nbd.ExportRequest, lambda s, p: s.volumes.nbd_server().unexport(p)))
    add(coldmove.RECEIVE_PATH, _typed(MoveCall, lambda s, p: s.moves.receive(p)))
    add(coldmove.MANIFEST_PATH, _typed(MoveCall, lambda s, p: s.moves.manifest(p)))
    add(coldmove.CONFIRM_PATH, _typed(MoveCall, lambda s, p: s.moves.confirmed(p)))
    add(coldmove.CONFIRM_HERE_PATH, _typed(MoveCall, lambda s, p: s.moves.confirm_here(p)))
    add(coldmove.REVERT_PATH, _typed(MoveCall, lambda s, p: s.moves.reverted(p)))
    app.router.add_get(coldmove.FILE_PATH, _move_file)
    app.router.add_get(transfer.DATA_PATH, _image_data)
    app.router.add_get(transfer.BASE_PATH, _cached_base)
    app.router.add_get(event_relay.STREAM_PATH, _events)
