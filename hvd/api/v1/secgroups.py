"""/v1/security-groups and /v1/security-group-rules (per project; a `default` group is made on
first use: all egress, ingress only from members of the same group)."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.api.v1.netcommon import PAGE_QUERY, find_owned, is_admin, notify
from hvd.catalog.cmd_network import SecurityGroupEnsureDefault
from hvd.catalog.cmd_network_l3 import (
    SecurityGroupCreate,
    SecurityGroupDelete,
    SecurityGroupRuleCreate,
    SecurityGroupRuleDelete,
    SecurityGroupUpdate,
)
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import BadRequest, NotFound
from hvd.identity.service import now_iso
from hvd.net.addr import IpPrefix
from hvd.net.model import SecurityGroupRuleSpec


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupIn(_In):
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    description: str = Field("", max_length=1024)


class GroupPatch(_In):
    name: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    description: str | None = Field(None, max_length=1024)


class RuleIn(_In):
    security_group: str = Field(min_length=1, max_length=255, description="Group id or name.")
    direction: Literal["ingress", "egress"]
    ethertype: Literal["IPv4", "IPv6"] = "IPv4"
    protocol: Literal["tcp", "udp", "icmp", "icmpv6"] | None = None
    port_range_min: int | None = Field(None, ge=1, le=65535)
    port_range_max: int | None = Field(None, ge=1, le=65535)
    remote_ip_prefix: IpPrefix | None = None
    remote_group: str | None = Field(None, max_length=255, description="Group id or name.")


class Rule(BaseModel):
    id: str
    security_group_id: str
    project_id: str
    direction: str
    ethertype: str
    protocol: str | None
    port_range_min: int | None
    port_range_max: int | None
    remote_ip_prefix: str | None
    remote_group_id: str | None
    created_at: str


class RuleList(BaseModel):
    security_group_rules: list[Rule]
    next: str | None


class Group(BaseModel):
    id: str
    name: str
    description: str
    project_id: str
    rules: list[Rule]
    created_at: str


class GroupList(BaseModel):
    security_groups: list[Group]
    next: str | None


def rule_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"security_group_id": row["group_id"], **{k: v for k, v in row.items() if k != "group_id"}}


def group_view(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    rules = fetch_all(conn, "SELECT * FROM security_group_rules WHERE group_id=? ORDER BY created_at, id",
                      (row["id"],))
    return {**row, "rules": [rule_view(r) for r in rules]}


async def ensure_default(request: web.Request) -> str:
    """The caller's project's default group id (created through the catalog on first use)."""
    svc, ctx = services(request), context(request)
    result = await svc.catalog.propose(SecurityGroupEnsureDefault(project_id=ctx.project_id, id=str(uuid.uuid4()),
                                                                  created_at=now_iso()))
    return str(result["id"])


async def _group(request: web.Request, ref: str | None = None) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    return await svc.catalog.read(find_owned, "security_groups", ref or request.match_info["id"], "Security group",
                                  ctx, is_admin(request, ctx))


async def list_groups(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    # a read makes the default group only for a caller who may write, and only once
    if svc.policy.allowed(ctx.roles, "network:manage") and not await svc.catalog.read(
            fetch_one, "SELECT id FROM security_groups WHERE project_id=? AND name='default'", (ctx.project_id,)):
        await ensure_default(request)
    admin = is_admin(request, ctx)
    sql, args = ("", ()) if admin else (" WHERE project_id=?", (ctx.project_id,))
    rows = await svc.catalog.read(fetch_all, f"SELECT * FROM security_groups{sql} ORDER BY created_at, id", args)
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"security_groups": [await svc.catalog.read(group_view, r) for r in page], "next": nxt})


async def show_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    return json_response(await svc.catalog.read(group_view, await _group(request)))


async def create_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, GroupIn)
    gid = str(uuid.uuid4())
    await svc.catalog.propose(SecurityGroupCreate(id=gid, project_id=ctx.project_id, name=body.name,
                                                  description=body.description, default_sg_id=str(uuid.uuid4()),
                                                  created_at=now_iso()))
    row = await _group(request, gid)
    return json_response(await svc.catalog.read(group_view, row), status=201, location=f"/v1/security-groups/{gid}")


async def update_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, GroupPatch)
    row = await _group(request)
    await svc.catalog.propose(SecurityGroupUpdate(id=row["id"], name=body.name, description=body.description))
    return json_response(await svc.catalog.read(group_view, await _group(request, row["id"])))


async def delete_group(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _group(request)
    await svc.catalog.propose(SecurityGroupDelete(id=row["id"]))
    return web.Response(status=204)


async def list_rules(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    admin = is_admin(request, ctx)
    sql, args = ("", ()) if admin else (" WHERE project_id=?", (ctx.project_id,))
    rows = await svc.catalog.read(fetch_all, f"SELECT * FROM security_group_rules{sql} ORDER BY created_at, id", args)
    if "security_group" in request.query:
        rows = [r for r in rows if r["group_id"] == request.query["security_group"]]
    page, nxt = paginate([rule_view(r) for r in rows], *page_params(request))
    return json_response({"security_group_rules": page, "next": nxt})


async def _rule(request: web.Request, rule_id: str | None = None) -> dict[str, Any]:
    svc, ctx = services(request), context(request)
    rule_id = rule_id or request.match_info["id"]
    row = await svc.catalog.read(fetch_one, "SELECT * FROM security_group_rules WHERE id=?", (rule_id,))
    if row is None or (row["project_id"] != ctx.project_id and not is_admin(request, ctx)):
        raise NotFound(f"Security group rule {rule_id} could not be found")
    return row


async def show_rule(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:read")
    return json_response(rule_view(await _rule(request)))


async def create_rule(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    body = await parse_body(request, RuleIn)
    group = await _group(request, body.security_group)
    remote = (await _group(request, body.remote_group))["id"] if body.remote_group else None
    try:  # the host's own model decides what a valid rule is
        SecurityGroupRuleSpec(body.direction, body.ethertype, body.protocol, body.port_range_min, body.port_range_max,
                              body.remote_ip_prefix, remote)
    except ValueError as exc:
        raise BadRequest(f"Invalid security group rule: {exc}") from exc
    rid = str(uuid.uuid4())
    await svc.catalog.propose(SecurityGroupRuleCreate(
        id=rid, group_id=group["id"], project_id=group["project_id"], direction=body.direction,
        ethertype=body.ethertype, protocol=body.protocol, port_range_min=body.port_range_min,
        port_range_max=body.port_range_max if body.port_range_max is not None else body.port_range_min,
        remote_ip_prefix=body.remote_ip_prefix, remote_group_id=remote, created_at=now_iso()))
    await notify(request)
    return json_response(rule_view(await _rule(request, rid)), status=201, location=f"/v1/security-group-rules/{rid}")


async def delete_rule(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "network:manage")
    row = await _rule(request)
    await svc.catalog.propose(SecurityGroupRuleDelete(id=row["id"]))
    await notify(request)
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "network"
    base = "/v1/security-groups"
    router.add("GET", base, list_groups, "List security groups", response=GroupList, query=PAGE_QUERY, tag=t)
    router.add("POST", base, create_group, "Create a security group", body=GroupIn, response=Group, status=201,
               tag=t)
    router.add("GET", base + "/{id}", show_group, "Show a security group", response=Group, tag=t)
    router.add("PATCH", base + "/{id}", update_group, "Update a security group", body=GroupPatch, response=Group,
               tag=t)
    router.add("DELETE", base + "/{id}", delete_group, "Delete a security group", status=204, tag=t)
    rules = "/v1/security-group-rules"
    router.add("GET", rules, list_rules, "List security group rules", response=RuleList, query=PAGE_QUERY, tag=t)
    router.add("POST", rules, create_rule, "Add a rule (applied to running ports at once)", body=RuleIn,
               response=Rule, status=201, tag=t)
    router.add("GET", rules + "/{id}", show_rule, "Show a rule", response=Rule, tag=t)
    router.add("DELETE", rules + "/{id}", delete_rule, "Delete a rule (applied at once)", status=204, tag=t)
