"""/v1/quotas/{project} and /v1/hosts."""

from __future__ import annotations

import sqlite3
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.bounds import QuotaLimit
from hvd.catalog import queries, quota
from hvd.catalog.cmd_hosts import HostSetEnabled, capacity, claimed
from hvd.catalog.cmd_resources import QuotaSet
from hvd.catalog.cmd_volumes import backend_claims, backend_reports
from hvd.catalog.sql import fetch_all, require
from hvd.catalog.usage import project_usage
from hvd.errors import NotFound
from hvd.storage.volumes.claims import Headroom

GOSSIP = "gossip"  # key of the GossipService in ApiServices.extra


class QuotaItem(BaseModel):
    limit: int
    in_use: int


class QuotaSetView(BaseModel):
    project_id: str
    quotas: dict[str, QuotaItem]


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quotas: dict[str, QuotaLimit] = Field(description="resource -> limit (-1 = unlimited)")


class VolumeBackendView(BaseModel):
    name: str
    driver: str
    thin: bool
    total_gb: int
    free_gb: int = Field(description="Real free space as the host last measured it")
    reserved_gb: int
    max_over_subscription_ratio: float = Field(description="How far claims may pass the usable space (1.0 = not)")
    capacity_gb: int = Field(description="(total_gb - reserved_gb) x max_over_subscription_ratio")
    provisioned_gb: int = Field(description="GiB claimed by the volumes and snapshots on it")
    available_gb: int = Field(description="What the volume scheduler may still place on it")
    full: bool = Field(description="A thin backend whose real free space is down to its reserve: takes nothing")


class HostView(BaseModel):
    name: str
    availability_zone: str
    enabled: bool
    disabled_reason: str
    hypervisor_type: str
    hypervisor_version: str
    arch: str
    cpu_model: str
    api_url: str
    updated_at: str
    resources: dict[str, dict[str, float]]
    instances: int
    volume_backends: list[VolumeBackendView] = Field(
        default_factory=list, description="The host's volume backends: last report and provisioned GiB (claims)")
    state: str = Field(description="alive | suspect | dead | left as gossip sees it here; unknown = not heard of")
    incarnation: int | None = Field(description="The host's gossip incarnation (grows at each refutation or report)")
    report_age_s: float | None = Field(description="Seconds since this host learned the host's current report")
    reported: dict[str, float] | None = Field(
        description="Free vcpus / memory_mb / disk_gb, instance count, load and free volume GiB as the host itself"
                    " reports them"
    )


class HostList(BaseModel):
    hosts: list[HostView]
    next: str | None


class HostPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    reason: str = Field("", max_length=255)


def _quota_view(conn: sqlite3.Connection, project_id: str) -> dict[str, Any]:
    usage = project_usage(conn, project_id)
    return {
        "project_id": project_id,
        "quotas": {
            res: {"limit": quota.limit_of(conn, project_id, res), "in_use": usage.get(res, 0)}
            for res in quota.DEFAULT_LIMITS
        },
    }


async def _quota_project(request: web.Request) -> str:
    svc, ctx = services(request), context(request)
    row = await svc.catalog.read(queries.find, "projects", request.match_info["project"], "Project")
    if row["id"] != ctx.project_id and not svc.policy.allowed(ctx.roles, "quota:set"):
        raise NotFound(f"Project {request.match_info['project']} could not be found")
    return str(row["id"])


async def show_quotas(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "quota:read")
    project_id = await _quota_project(request)
    return json_response(await svc.catalog.read(_quota_view, project_id))


async def set_quotas(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "quota:set")
    body = await parse_body(request, QuotaIn)
    project_id = await _quota_project(request)
    await svc.catalog.propose(QuotaSet(project_id=project_id, limits=body.quotas))
    return json_response(await svc.catalog.read(_quota_view, project_id))


def volume_backend_views(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    """host -> its volume backends as last reported, with what is provisioned on each."""
    used = backend_claims(conn)
    return {host: [{"name": str(b.get("name")), "driver": str(b.get("driver")),
                    **Headroom.of(b, used.get((host, str(b.get("name"))), 0)).view()}
                   for b in report.get("backends", [])]
            for host, report in backend_reports(conn).items()}


def host_view(conn: sqlite3.Connection, host: dict[str, Any],
              volumes: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    cap, used = capacity(host), claimed(conn, host["name"])
    volumes = volume_backend_views(conn) if volumes is None else volumes
    resources = {
        res: {
            "total": host[res],
            "reserved": host[f"reserved_{res}"],
            "ratio": host[ratio],
            "capacity": cap[res],
            "claimed": used[res],
            "free": cap[res] - used[res],
        }
        for res, ratio in (("vcpus", "cpu_ratio"), ("memory_mb", "ram_ratio"), ("disk_gb", "disk_ratio"))
    }
    keys = ("name", "availability_zone", "enabled", "disabled_reason", "hypervisor_type", "hypervisor_version",
            "arch", "cpu_model", "api_url", "updated_at")
    return {**{k: host[k] for k in keys}, "resources": resources, "instances": used["count"],
            "volume_backends": volumes.get(host["name"], [])}


def _host_views(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    volumes = volume_backend_views(conn)
    return [host_view(conn, h, volumes) for h in fetch_all(conn, "SELECT * FROM hosts ORDER BY name")]


def _one_host(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    return host_view(conn, require(conn, "hosts", "name", name, "Host"))


def _with_liveness(request: web.Request, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add what gossip says about each host (state, incarnation, report age, reported free resources)."""
    gossip = services(request).extra.get(GOSSIP)
    members = {m.name: m for m in gossip.members()} if gossip is not None else {}
    for view in views:
        m = members.get(view["name"])
        view["state"] = m.state if m else "unknown"
        view["incarnation"] = m.incarnation if m else None
        view["report_age_s"] = round(m.report_age, 3) if m else None
        view["reported"] = {"vcpus_free": m.report.vcpus_free, "memory_mb_free": m.report.memory_mb_free,
                            "disk_gb_free": m.report.disk_gb_free, "instances": m.report.instances,
                            "load": m.report.load, "volume_gb_free": m.report.volume_gb_free} if m else None
    return views


async def list_hosts(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:read")
    page, nxt = paginate(await svc.catalog.read(_host_views), *page_params(request), key="name")
    return json_response({"hosts": _with_liveness(request, page), "next": nxt})


async def show_host(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:read")
    return json_response(_with_liveness(request, [await svc.catalog.read(_one_host, request.match_info["name"])])[0])


async def update_host(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:manage")
    body = await parse_body(request, HostPatch)
    name = request.match_info["name"]
    await svc.catalog.propose(HostSetEnabled(name=name, enabled=body.enabled, reason=body.reason))
    return json_response(_with_liveness(request, [await svc.catalog.read(_one_host, name)])[0])


def register(router: Router) -> None:
    page = (("limit", "integer", "page size"), ("marker", "string", "last name of the previous page"))
    router.add("GET", "/v1/quotas/{project}", show_quotas, "Show a project's quotas and usage",
               response=QuotaSetView, tag="identity")
    router.add("PUT", "/v1/quotas/{project}", set_quotas, "Set a project's quotas", body=QuotaIn,
               response=QuotaSetView, tag="identity")
    router.add("GET", "/v1/hosts", list_hosts, "List hosts and their resources", response=HostList, query=page,
               tag="compute")
    router.add("GET", "/v1/hosts/{name}", show_host, "Show a host", response=HostView, tag="compute")
    router.add("PATCH", "/v1/hosts/{name}", update_host, "Enable or disable a host", body=HostPatch,
               response=HostView, tag="compute")
