"""/v1/keypairs (owned by the calling user) and /v1/server-groups (owned by the project)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog import queries
from hvd.catalog.cmd_resources import KeypairCreate, KeypairDelete, ServerGroupCreate, ServerGroupDelete
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import NotFound
from hvd.identity.service import now_iso
from hvd.identity.sshkeys import fingerprint, generate_ed25519, parse_public_key

NamePattern = r"^[A-Za-z0-9_. -]+$"


class KeypairIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, pattern=NamePattern)
    public_key: str | None = Field(None, max_length=16384, description="Omit to have one generated.")


class Keypair(BaseModel):
    id: str
    name: str
    public_key: str
    fingerprint: str
    type: str
    user_id: str
    created_at: str
    private_key: str | None = Field(None, description="Only in the answer that generated it.")


class KeypairList(BaseModel):
    keypairs: list[Keypair]
    next: str | None


class ServerGroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, pattern=NamePattern)
    policy: Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class ServerGroup(BaseModel):
    id: str
    name: str
    policy: str
    project_id: str
    user_id: str
    members: list[str]
    created_at: str


class ServerGroupList(BaseModel):
    server_groups: list[ServerGroup]
    next: str | None


def _keypair_out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "public_key": row["public_key"], "fingerprint": row["fingerprint"],
        "type": row["key_type"], "user_id": row["user_id"], "created_at": row["created_at"],
    }


async def list_keypairs(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "keypair:read")
    rows = await svc.catalog.read(
        fetch_all, "SELECT * FROM keypairs WHERE user_id=? ORDER BY created_at, id", (ctx.user_id,)
    )
    page, nxt = paginate([_keypair_out(r) for r in rows], *page_params(request), key="name")
    return json_response({"keypairs": page, "next": nxt})


async def _own_keypair(request: web.Request) -> dict[str, Any]:
    ctx = context(request)
    name = request.match_info["name"]
    row = await services(request).catalog.read(
        fetch_one, "SELECT * FROM keypairs WHERE user_id=? AND (name=? OR id=?)", (ctx.user_id, name, name)
    )
    if row is None:
        raise NotFound(f"Keypair {name} could not be found")
    return row


async def show_keypair(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "keypair:read")
    return json_response(_keypair_out(await _own_keypair(request)))


async def create_keypair(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "keypair:manage")
    body = await parse_body(request, KeypairIn)
    private_key = None
    public_key = body.public_key
    if public_key is None:
        public_key, private_key = generate_ed25519(f"{body.name}@hvd")
    key_type, blob = parse_public_key(public_key)
    kid = str(uuid.uuid4())
    await svc.catalog.propose(
        KeypairCreate(id=kid, user_id=ctx.user_id, project_id=ctx.project_id, name=body.name,
                      public_key=public_key.strip(), fingerprint=fingerprint(blob), key_type=key_type,
                      created_at=now_iso())
    )
    row = await svc.catalog.read(fetch_one, "SELECT * FROM keypairs WHERE id=?", (kid,))
    assert row is not None
    out = _keypair_out(row)
    if private_key is not None:
        out["private_key"] = private_key
    return json_response(out, status=201, location=f"/v1/keypairs/{body.name}")


async def delete_keypair(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "keypair:manage")
    row = await _own_keypair(request)
    await svc.catalog.propose(KeypairDelete(user_id=ctx.user_id, name=str(row["name"])))
    return web.Response(status=204)


async def _group_out(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    members = await services(request).catalog.read(
        fetch_all, "SELECT instance_id FROM server_group_members WHERE group_id=? ORDER BY instance_id", (row["id"],)
    )
    return {**{k: row[k] for k in ("id", "name", "policy", "project_id", "user_id", "created_at")},
            "members": [m["instance_id"] for m in members]}


async def list_groups(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "server_group:read")
    rows = await svc.catalog.read(
        fetch_all, "SELECT * FROM server_groups WHERE project_id=? ORDER BY created_at, id", (ctx.project_id,)
    )
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"server_groups": [await _group_out(request, r) for r in page], "next": nxt})


async def _own_group(request: web.Request) -> dict[str, Any]:
    ctx = context(request)
    return await services(request).catalog.read(
        queries.find, "server_groups", request.match_info["id"], "Server group", "project_id=?", (ctx.project_id,)
    )


async def show_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "server_group:read")
    return json_response(await _group_out(request, await _own_group(request)))


async def create_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "server_group:manage")
    body = await parse_body(request, ServerGroupIn)
    gid = str(uuid.uuid4())
    await svc.catalog.propose(
        ServerGroupCreate(id=gid, project_id=ctx.project_id, user_id=ctx.user_id, name=body.name,
                          policy=body.policy, created_at=now_iso())
    )
    row = await svc.catalog.read(queries.find, "server_groups", gid, "Server group")
    return json_response(await _group_out(request, row), status=201, location=f"/v1/server-groups/{gid}")


async def delete_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "server_group:manage")
    row = await _own_group(request)
    await svc.catalog.propose(ServerGroupDelete(id=str(row["id"])))
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "compute"
    page = (("limit", "integer", "page size"), ("marker", "string", "last name/id of the previous page"))
    router.add("GET", "/v1/keypairs", list_keypairs, "List your keypairs", response=KeypairList, query=page, tag=t)
    router.add("POST", "/v1/keypairs", create_keypair, "Import or generate a keypair", body=KeypairIn,
               response=Keypair, status=201, tag=t)
    router.add("GET", "/v1/keypairs/{name}", show_keypair, "Show a keypair", response=Keypair, tag=t)
    router.add("DELETE", "/v1/keypairs/{name}", delete_keypair, "Delete a keypair", status=204, tag=t)
    router.add("GET", "/v1/server-groups", list_groups, "List server groups", response=ServerGroupList,
               query=page, tag=t)
    router.add("POST", "/v1/server-groups", create_group, "Create a server group", body=ServerGroupIn,
               response=ServerGroup, status=201, tag=t)
    router.add("GET", "/v1/server-groups/{id}", show_group, "Show a server group", response=ServerGroup, tag=t)
    router.add("DELETE", "/v1/server-groups/{id}", delete_group, "Delete a server group", status=204, tag=t)
