"""/v1/events: server-sent events (instance actions and state changes) for the caller's project."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from hvd.api.helpers import context
from hvd.api.middleware import bearer_token
from hvd.api.routing import Router
from hvd.api.services import ApiServices, services
from hvd.errors import Unauthorized
from hvd.events import Event, EventBus
from hvd.identity.throttle import TooManyRequests

log = logging.getLogger(__name__)

EVENTS = "events"
KEEPALIVE_S = 15.0
MAX_STREAMS = 256  # open event streams per host
MAX_STREAMS_PER_USER = 8
STREAM_QUEUES = web.AppKey("hvd.event_stream_queues", set[asyncio.Queue[Event]])  # open streams, ended at shutdown
_END: Event = {"type": "hvd.stream.end"}  # put (by identity) into a stream's queue to end it


async def stream_events(request: web.Request) -> web.StreamResponse:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    bus: EventBus = svc.extra[EVENTS]
    admin = svc.policy.all_projects(ctx.roles)
    if bus.streams.get(ctx.user_id, 0) >= MAX_STREAMS_PER_USER or sum(bus.streams.values()) >= MAX_STREAMS:
        raise TooManyRequests(f"too many event streams are open (at most {MAX_STREAMS_PER_USER} per user,"
                              f" {MAX_STREAMS} per host); close one first", retry_after=KEEPALIVE_S)
    token = bearer_token(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    bus.streams[ctx.user_id] = bus.streams.get(ctx.user_id, 0) + 1
    try:
        async with bus.subscribe() as queue, _tracked(request.app, queue):
            await response.prepare(request)  # headers once subscribed: a client holding them misses no event
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    event = None
                if event is _END:
                    break
                if not await _still_valid(svc, token):  # revoked or expired: not one more event
                    break
                if event is None:
                    await response.write(b": keepalive\n\n")
                    continue
                if not admin and event.get("project_id") != ctx.project_id:
                    continue  # events without a project (host-level, task steps) are for admins
                data = json.dumps(event, default=str)
                await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client has gone
        log.debug("client %s left the event stream", request.remote)
    finally:
        bus.streams[ctx.user_id] -= 1
        if not bus.streams[ctx.user_id]:
            del bus.streams[ctx.user_id]
    return response


@contextlib.asynccontextmanager
async def _tracked(app: web.Application, queue: asyncio.Queue[Event]) -> AsyncIterator[None]:
    """The stream's queue, known to the app's shutdown while inside."""
    app[STREAM_QUEUES].add(queue)
    try:
        yield
    finally:
        app[STREAM_QUEUES].discard(queue)


async def _end_streams(app: web.Application) -> None:
    # an open stream would otherwise hold the daemon's shutdown until aiohttp's timeout (60 s)
    for queue in app[STREAM_QUEUES]:
        if queue.full():  # the end must get in: drop the oldest event, as the bus does for slow readers
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
        queue.put_nowait(_END)


async def _still_valid(svc: ApiServices, token: str) -> bool:
    """The token validates now (cached until the next identity change, so this is cheap)."""
    try:
        await svc.identity.validate(token)
    except Unauthorized:
        return False
    return True


def register(router: Router) -> None:
    router.add("GET", "/v1/events", stream_events, "Server-sent events", raw_response="text/event-stream",
               tag="compute")


def install_shutdown(app: web.Application) -> None:
    """End the open event streams when `app` shuts down."""
    app[STREAM_QUEUES] = set()
    app.on_shutdown.append(_end_streams)
