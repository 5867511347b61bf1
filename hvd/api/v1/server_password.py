"""/v1/servers/{id}/password: the encrypted admin password the guest posted through the metadata
service (Nova's os-server-password): its owner reads it, and clears it so the guest may post anew."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from hvd.api.helpers import context, json_response
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.server_lookup import visible_server
from hvd.catalog.cmd_compute import PASSWORD_KEY, InstancePasswordClear
from hvd.identity.service import now_iso


class ServerPassword(BaseModel):
    password: str  # encrypted with the server's key pair, base64-encoded; "" when the guest posted none



async def show_password(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    inst = await visible_server(request)
    return json_response({"password": str(inst["extra"].get(PASSWORD_KEY) or "")})


async def clear_password(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:action")
    inst = await visible_server(request)
    await svc.catalog.propose(InstancePasswordClear(id=inst["id"], updated_at=now_iso()))
    return web.Response(status=204)


def register(router: Router) -> None:
    router.add("GET", "/v1/servers/{id}/password", show_password,
               "The encrypted admin password the guest posted to the metadata service", response=ServerPassword,
               tag="compute")
    router.add("DELETE", "/v1/servers/{id}/password", clear_password,
               "Clear the stored password (the guest may post a new one)", status=204, tag="compute")
