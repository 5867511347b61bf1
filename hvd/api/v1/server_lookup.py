"""The server a /v1/servers/{id}/... sub-resource route names, as the caller may see it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvd.api.forward import catch_up_if_forwarded
from hvd.api.helpers import context
from hvd.api.services import services
from hvd.catalog import queries


async def visible_server(request: web.Request) -> dict[str, Any]:
    """A live server of the caller's project (any project for admin) by id or name; else 404.

    A request forwarded from another host first waits until this replica has applied what that
    host had, so a server it just saw is found here too."""
    svc, ctx = services(request), context(request)
    admin = svc.policy.all_projects(ctx.roles)
    where, args = ("deleted_at IS NULL", ()) if admin else ("deleted_at IS NULL AND project_id=?", (ctx.project_id,))
    await catch_up_if_forwarded(request)
    return await svc.catalog.read(queries.find, "instances", request.match_info["id"], "Instance", where, args)
