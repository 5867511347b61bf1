"""/v1/aggregates (host aggregates with metadata and an optional zone) and /v1/availability-zones."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog import queries
from hvd.catalog.cmd_aggregates import AggregateCreate, AggregateDelete, AggregateHost, AggregateUpdate
from hvd.catalog.sql import fetch_all
from hvd.errors import BadRequest
from hvd.identity.service import now_iso

Name = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f:]+$")


class AggregateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    availability_zone: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f:]+$",
                                          description="Zone of the aggregate's hosts (no ':', as in Nova).")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=128)


class AggregatePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f:]+$")
    availability_zone: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f:]+$")
    metadata: dict[str, str | None] = Field(default_factory=dict, max_length=128,
                                            description="Keys to set; a null value removes the key.")


class HostRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=255)


class Aggregate(BaseModel):
    id: str
    name: str
    availability_zone: str | None
    metadata: dict[str, str]
    hosts: list[str]
    created_at: str
    updated_at: str


class AggregateList(BaseModel):
    aggregates: list[Aggregate]


class Zone(BaseModel):
    name: str
    available: bool
    hosts: list[str] | None = Field(None, description="Admin only: the zone's hosts.")


class ZoneList(BaseModel):
    availability_zones: list[Zone]


def _check_text(values: dict[str, Any]) -> None:
    for key, value in values.items():
        if not 0 < len(key) <= 255 or any(ord(c) < 32 for c in key):
            raise BadRequest(f"metadata key {key!r} must be 1 to 255 printable characters")
        if value is not None and (len(value) > 255 or any(ord(c) < 32 for c in value)):
            raise BadRequest(f"metadata value of {key} must be at most 255 printable characters")


def _view(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    hosts = [r[0] for r in conn.execute("SELECT host FROM aggregate_hosts WHERE aggregate_id=? ORDER BY host",
                                        (row["id"],))]
    return {**{k: row[k] for k in ("id", "name", "availability_zone", "metadata", "created_at", "updated_at")},
            "hosts": hosts}


def _all(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [_view(conn, r) for r in fetch_all(conn, "SELECT * FROM aggregates ORDER BY name")]


def _one(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    return _view(conn, queries.find(conn, "aggregates", ref, "Aggregate"))


async def list_aggregates(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:read")
    return json_response({"aggregates": await svc.catalog.read(_all)})


async def show_aggregate(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:read")
    return json_response(await svc.catalog.read(_one, request.match_info["id"]))


async def create_aggregate(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:manage")
    body = await parse_body(request, AggregateIn)
    _check_text(dict(body.metadata))
    agg_id = str(uuid.uuid4())
    await svc.catalog.propose(AggregateCreate(id=agg_id, name=body.name, availability_zone=body.availability_zone,
                                              metadata=body.metadata, created_at=now_iso()))
    return json_response(await svc.catalog.read(_one, agg_id), status=201, location=f"/v1/aggregates/{agg_id}")


async def update_aggregate(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:manage")
    body = await parse_body(request, AggregatePatch)
    _check_text(dict(body.metadata))
    row = await svc.catalog.read(_one, request.match_info["id"])
    await svc.catalog.propose(AggregateUpdate(
        id=row["id"], name=body.name, availability_zone=body.availability_zone,
        set={k: v for k, v in body.metadata.items() if v is not None},
        unset=[k for k, v in body.metadata.items() if v is None], updated_at=now_iso()))
    return json_response(await svc.catalog.read(_one, row["id"]))


async def delete_aggregate(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:manage")
    row = await svc.catalog.read(_one, request.match_info["id"])
    await svc.catalog.propose(AggregateDelete(id=row["id"]))
    return web.Response(status=204)


async def add_host(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:manage")
    body = await parse_body(request, HostRef)
    row = await svc.catalog.read(_one, request.match_info["id"])
    await svc.catalog.propose(AggregateHost(id=row["id"], host=body.host, add=True, updated_at=now_iso()))
    return json_response(await svc.catalog.read(_one, row["id"]))


async def remove_host(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "host:manage")
    row = await svc.catalog.read(_one, request.match_info["id"])
    await svc.catalog.propose(AggregateHost(id=row["id"], host=request.match_info["host"], add=False,
                                            updated_at=now_iso()))
    return json_response(await svc.catalog.read(_one, row["id"]))


def _zones(conn: sqlite3.Connection) -> dict[str, list[str]]:
    from hvd.scheduler.placement import read_host_states

    zones: dict[str, list[str]] = {}
    for host in read_host_states(conn):
        zones.setdefault(host["availability_zone"], []).append(host["name"])
    return zones


async def list_zones(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")
    admin = svc.policy.allowed(ctx.roles, "host:read")
    zones = await svc.catalog.read(_zones)
    return json_response({"availability_zones": [
        {"name": name, "available": True, **({"hosts": sorted(hosts)} if admin else {})}
        for name, hosts in sorted(zones.items())]})


def register(router: Router) -> None:
    t = "compute"
    router.add("GET", "/v1/aggregates", list_aggregates, "List host aggregates (admin)", response=AggregateList,
               tag=t)
    router.add("POST", "/v1/aggregates", create_aggregate, "Create a host aggregate (admin)", body=AggregateIn,
               response=Aggregate, status=201, tag=t)
    router.add("GET", "/v1/aggregates/{id}", show_aggregate, "Show a host aggregate", response=Aggregate, tag=t)
    router.add("PATCH", "/v1/aggregates/{id}", update_aggregate, "Rename, change zone, set/unset metadata",
               body=AggregatePatch, response=Aggregate, tag=t)
    router.add("DELETE", "/v1/aggregates/{id}", delete_aggregate, "Delete an empty aggregate", status=204, tag=t)
    router.add("POST", "/v1/aggregates/{id}/hosts", add_host, "Add a host to the aggregate", body=HostRef,
               response=Aggregate, tag=t)
    router.add("DELETE", "/v1/aggregates/{id}/hosts/{host}", remove_host, "Remove a host from the aggregate",
               response=Aggregate, tag=t)
    router.add("GET", "/v1/availability-zones", list_zones, "Availability zones (hosts: admin only)",
               response=ZoneList, tag=t)
