"""/v1/flavors (+ extra specs and access lists)."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.context import RequestContext
from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog import queries
from hvd.catalog.cmd_resources import FlavorAccess, FlavorCreate, FlavorDelete, FlavorSetSpecs
from hvd.catalog.sql import fetch_all
from hvd.errors import NotFound
from hvd.identity.service import now_iso

SpecKey = Field(min_length=1, max_length=255)


class FlavorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.: -]+$")
    id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    vcpus: int = Field(ge=1, le=1024)
    ram_mb: int = Field(ge=1, le=16 * 1024 * 1024)
    disk_gb: int = Field(0, ge=0, le=1024 * 1024)
    ephemeral_gb: int = Field(0, ge=0, le=1024 * 1024)
    swap_mb: int = Field(0, ge=0, le=1024 * 1024)
    is_public: bool = True
    extra_specs: dict[str, str] = Field(default_factory=dict)
    description: str = Field("", max_length=1024)


class Flavor(BaseModel):
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    ephemeral_gb: int
    swap_mb: int
    is_public: bool
    extra_specs: dict[str, str]
    description: str
    created_at: str


class FlavorList(BaseModel):
    flavors: list[Flavor]
    next: str | None


class SpecsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class AccessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str = Field(min_length=1, max_length=255)


class AccessList(BaseModel):
    flavor_id: str
    projects: list[str]


def _visible(conn: sqlite3.Connection, ctx: RequestContext, admin: bool) -> list[dict[str, Any]]:
    if admin:
        return fetch_all(conn, "SELECT * FROM flavors ORDER BY created_at, id")
    return fetch_all(
        conn,
        "SELECT * FROM flavors WHERE is_public=1 OR id IN (SELECT flavor_id FROM flavor_access WHERE project_id=?)"
        " ORDER BY created_at, id",
        (ctx.project_id,),
    )


def find_flavor(conn: sqlite3.Connection, ref: str, ctx: RequestContext, admin: bool) -> dict[str, Any]:
    """A flavor by id or name that the caller may use; another project's private flavor is a 404."""
    row = queries.find(conn, "flavors", ref, "Flavor")
    if not admin and not row["is_public"]:
        allowed = conn.execute(
            "SELECT 1 FROM flavor_access WHERE flavor_id=? AND project_id=?", (row["id"], ctx.project_id)
        ).fetchone()
        if allowed is None:
            raise NotFound(f"Flavor {ref} could not be found")
    return row


async def list_flavors(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:read")
    rows = await svc.catalog.read(_visible, ctx, svc.policy.all_projects(ctx.roles))
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"flavors": page, "next": nxt})


async def show_flavor(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:read")
    admin = svc.policy.all_projects(ctx.roles)
    return json_response(await svc.catalog.read(find_flavor, request.match_info["id"], ctx, admin))


async def create_flavor(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:manage")
    body = await parse_body(request, FlavorIn)
    fid = body.id or str(uuid.uuid4())
    await svc.catalog.propose(FlavorCreate(created_at=now_iso(), **{**body.model_dump(), "id": fid}))
    row = await svc.catalog.read(queries.find, "flavors", fid, "Flavor")
    return json_response(row, status=201, location=f"/v1/flavors/{fid}")


async def delete_flavor(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:manage")
    row = await svc.catalog.read(queries.find, "flavors", request.match_info["id"], "Flavor")
    await svc.catalog.propose(FlavorDelete(id=str(row["id"])))
    return web.Response(status=204)


async def set_specs(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:manage")
    body = await parse_body(request, SpecsIn)
    row = await svc.catalog.read(queries.find, "flavors", request.match_info["id"], "Flavor")
    await svc.catalog.propose(FlavorSetSpecs(id=str(row["id"]), set=body.set, unset=body.unset))
    return json_response(await svc.catalog.read(queries.find, "flavors", str(row["id"]), "Flavor"))


async def _access_list(request: web.Request, flavor_id: str) -> web.Response:
    rows = await services(request).catalog.read(
        fetch_all, "SELECT project_id FROM flavor_access WHERE flavor_id=? ORDER BY project_id", (flavor_id,)
    )
    return json_response({"flavor_id": flavor_id, "projects": [r["project_id"] for r in rows]})


async def show_access(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:manage")
    row = await svc.catalog.read(queries.find, "flavors", request.match_info["id"], "Flavor")
    return await _access_list(request, str(row["id"]))


async def _change_access(request: web.Request, grant: bool) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "flavor:manage")
    body = await parse_body(request, AccessIn)
    row = await svc.catalog.read(queries.find, "flavors", request.match_info["id"], "Flavor")
    project = await svc.catalog.read(queries.find, "projects", body.project, "Project")
    await svc.catalog.propose(FlavorAccess(flavor_id=str(row["id"]), project_id=str(project["id"]), grant=grant))
    return await _access_list(request, str(row["id"]))


async def add_access(request: web.Request) -> web.Response:
    return await _change_access(request, True)


async def remove_access(request: web.Request) -> web.Response:
    return await _change_access(request, False)


def register(router: Router) -> None:
    t = "compute"
    page = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"))
    router.add("GET", "/v1/flavors", list_flavors, "List flavors", response=FlavorList, query=page, tag=t)
    router.add("POST", "/v1/flavors", create_flavor, "Create a flavor", body=FlavorIn, response=Flavor,
               status=201, tag=t)
    router.add("GET", "/v1/flavors/{id}", show_flavor, "Show a flavor", response=Flavor, tag=t)
    router.add("DELETE", "/v1/flavors/{id}", delete_flavor, "Delete a flavor", status=204, tag=t)
    router.add("POST", "/v1/flavors/{id}/extra-specs", set_specs, "Set or unset extra specs", body=SpecsIn,
               response=Flavor, tag=t)
    router.add("GET", "/v1/flavors/{id}/access", show_access, "List projects with access", response=AccessList,
               tag=t)
    router.add("POST", "/v1/flavors/{id}/access", add_access, "Grant a project access", body=AccessIn,
               response=AccessList, tag=t)
    router.add("POST", "/v1/flavors/{id}/access/remove", remove_access, "Remove a project's access",
               body=AccessIn, response=AccessList, tag=t)
