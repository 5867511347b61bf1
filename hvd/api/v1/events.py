"""/v1/events: server-sent events (instance actions and state changes) for the caller's project."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from hvd.api.helpers import context
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.events import EventBus

log = logging.getLogger(__name__)

EVENTS = "events"
KEEPALIVE_S = 15.0


async def stream_events(request: web.Request) -> web.StreamResponse:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    bus: EventBus = svc.extra[EVENTS]
    admin = svc.policy.all_projects(ctx.roles)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        async with bus.subscribe() as queue:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if not admin and event.get("project_id") != ctx.project_id:
                    continue  # events without a project (host-level, task steps) are for admins
                data = json.dumps(event, default=str)
                await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client has gone
        log.debug("client %s left the event stream", request.remote)
    return response


def register(router: Router) -> None:
    router.add("GET", "/v1/events", stream_events, "Server-sent events", raw_response="text/event-stream",
               tag="compute")
