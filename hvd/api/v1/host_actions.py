"""Host maintenance: POST /v1/hosts/{name}/drain (runs on that host) and /evacuate (a fenced host)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from hvd.api.context import RequestContext
from hvd.api.forward import to_host
from hvd.api.helpers import context, json_response, parse_body
from hvd.api.routing import Router
from hvd.api.services import ApiServices, services
from hvd.api.v1.servers import compute
from hvd.catalog.sql import fetch_all, require
from hvd.compute.drain import DrainReport
from hvd.errors import HvdError


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvacuateReport(BaseModel):
    host: str
    accepted: list[str]
    refused: dict[str, str]


async def _host_request(request: web.Request, rule: str) -> tuple[ApiServices, RequestContext, str]:
    """Policy, an empty body and a known host: what every host action checks first."""
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, rule)
    await parse_body(request, Empty)
    name = request.match_info["name"]
    await svc.catalog.read(require, "hosts", "name", name, "Host")
    return svc, ctx, name


async def drain_host(request: web.Request) -> web.Response:
    _, ctx, name = await _host_request(request, "host:manage")
    comp = compute(request)
    forwarded = await to_host(request, name, comp.placement.is_up, f"Host {name}")
    if forwarded is not None:
        return forwarded
    report = await comp.drains.drain(ctx)
    return json_response(report.model_dump())


async def evacuate_host(request: web.Request) -> web.Response:
    svc, ctx, name = await _host_request(request, "compute:evacuate")
    comp = compute(request)
    accepted: list[str] = []
    refused: dict[str, str] = {}
    for inst in await svc.catalog.read(fetch_all, "SELECT * FROM instances WHERE host=? AND deleted_at IS NULL"
                                                  " ORDER BY created_at, id", (name,)):
        try:
            await comp.evacuate(ctx, inst, None)
            accepted.append(inst["id"])
        except HvdError as exc:
            refused[inst["id"]] = exc.message
    return json_response({"host": name, "accepted": accepted, "refused": refused}, status=202)


def register(router: Router) -> None:
    t = "compute"
    router.add("POST", "/v1/hosts/{name}/drain", drain_host,
               "Disable the host and move every server away (live when possible; cold moves are confirmed)",
               body=Empty, response=DrainReport, tag=t)
    router.add("POST", "/v1/hosts/{name}/evacuate", evacuate_host,
               "Rebuild every server of a fenced host elsewhere", body=Empty, response=EvacuateReport, status=202,
               tag=t)
