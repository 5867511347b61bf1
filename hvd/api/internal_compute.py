"""Peer routes of compute: the leader's placement hand-off, the chosen host's build call, and image
data between hosts. Signed like every peer route (see internal.py); typed bodies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hvd.api.internal import _authenticated_body, _wire
from hvd.api.services import SERVICES
from hvd.cluster import event_relay
from hvd.cluster.peers import APPLIED_HEADER
from hvd.compute import coldmove, migration
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
from hvd.compute.migration import MigrationCall
from hvd.compute.service import ComputeService
from hvd.errors import BadRequest, Conflict, HvdError, ServiceUnavailable
from hvd.storage import transfer
from hvd.storage.transfer import ReplicateAnswer, ReplicateRequest

log = logging.getLogger(__name__)

CATCH_UP_TIMEOUT_S = 10.0
COMPUTE_KEY = "compute"  # key of the ComputeService in ApiServices.extra
EVENTS_KEY = "events"  # key of the EventBus in ApiServices.extra


async def catch_up(request: web.Request) -> None:
    """Wait until this replica has applied what the calling host had applied when it called."""
    raw = request.headers.get(APPLIED_HEADER, "")
    if not raw.isdigit():
        return
    coordinator = request.app[SERVICES].catalog.coordinator
    try:
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            await coordinator.wait_applied(int(raw))
    except TimeoutError as exc:
        raise ServiceUnavailable(f"this host has not caught up to catalog index {raw} yet; retry") from exc


def _typed(model: type[BaseModel],
           run: Callable[[ComputeService, BaseModel], Awaitable[BaseModel]]) -> Callable[[web.Request],
                                                                                 Awaitable[web.Response]]:
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


async def _place(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, PlaceRequest)
    service.builds.accept_placement(payload)
    return PlaceAnswer(accepted=True)


async def _build(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, BuildRequest)
    return await service.builds.accept_build(payload)


async def _unshelve(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, UnshelveRequest)
    return await service.builds.accept_unshelve(payload)


async def _migration_prepare(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MigrationCall)
    return await service.migrations.prepare(payload)


async def _migration_finish(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MigrationCall)
    return await service.migrations.finish(payload)


async def _migration_abort(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MigrationCall)
    return await service.migrations.abort_incoming(payload)


async def _move_receive(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MoveCall)
    return await service.moves.receive(payload)


async def _move_manifest(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MoveCall)
    return await service.moves.manifest(payload)


async def _move_confirm(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MoveCall)
    return await service.moves.confirmed(payload)


async def _move_revert(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MoveCall)
    return await service.moves.reverted(payload)


async def _move_confirm_here(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, MoveCall)
    return await service.moves.confirm_here(payload)


async def _move_file(request: web.Request) -> web.StreamResponse:
    try:
        await _authenticated_body(request)
        service: ComputeService = request.app[SERVICES].extra[COMPUTE_KEY]
        return await service.moves.serve_file(request, request.match_info["id"], request.match_info["name"])
    except HvdError as exc:
        return _wire(exc)


async def _replicate(service: ComputeService, payload: BaseModel) -> BaseModel:
    assert isinstance(payload, ReplicateRequest)
    manager = service.manager
    if manager.peers is None:
        raise ServiceUnavailable("this host has no cluster key to fetch images with")
    image = await manager.image_row(payload.image_id)
    if image["status"] != "active":
        raise Conflict(f"Image {payload.image_id} is {image['status']}, not active")
    await transfer.replicate_into(manager.store, manager.peers, service.catalog, image)
    return ReplicateAnswer(stored=True)


async def _image_data(request: web.Request) -> web.StreamResponse:
    try:
        await _authenticated_body(request)
        service: ComputeService = request.app[SERVICES].extra[COMPUTE_KEY]
        return await transfer.serve_data(request, service.manager.store, request.match_info["id"])
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
    app.router.add_post(PLACE_PATH, _typed(PlaceRequest, _place))
    app.router.add_post(BUILD_PATH, _typed(BuildRequest, _build))
    app.router.add_post(UNSHELVE_PATH, _typed(UnshelveRequest, _unshelve))
    app.router.add_post(transfer.REPLICATE_PATH, _typed(ReplicateRequest, _replicate))
    app.router.add_post(migration.PREPARE_PATH, _typed(MigrationCall, _migration_prepare))
    app.router.add_post(migration.FINISH_PATH, _typed(MigrationCall, _migration_finish))
    app.router.add_post(migration.ABORT_PATH, _typed(MigrationCall, _migration_abort))
    app.router.add_post(coldmove.RECEIVE_PATH, _typed(MoveCall, _move_receive))
    app.router.add_post(coldmove.MANIFEST_PATH, _typed(MoveCall, _move_manifest))
    app.router.add_post(coldmove.CONFIRM_PATH, _typed(MoveCall, _move_confirm))
    app.router.add_post(coldmove.REVERT_PATH, _typed(MoveCall, _move_revert))
    app.router.add_post(coldmove.CONFIRM_HERE_PATH, _typed(MoveCall, _move_confirm_here))
    app.router.add_get(coldmove.FILE_PATH, _move_file)
    app.router.add_get(transfer.DATA_PATH, _image_data)
    app.router.add_get(event_relay.STREAM_PATH, _events)
