"""Apply handlers: host aggregates (Nova's: named host sets with metadata, an optional zone).

A host's availability zone is the zone of an aggregate it belongs to, else the one it reports;
a host belongs to at most one zone, so adding it to an aggregate of another zone is refused.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from pydantic import Field

from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import dumps, fetch_all, fetch_one, require
from hvd.errors import BadRequest, Conflict


class AggregateCreate(Command):
    type: Literal["aggregate.create"] = "aggregate.create"
    id: str
    name: str
    availability_zone: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: str


class AggregateUpdate(Command):
    """Rename, change the zone, set and unset metadata keys."""

    type: Literal["aggregate.update"] = "aggregate.update"
    id: str
    name: str | None = None
    availability_zone: str | None = None
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    updated_at: str


class AggregateDelete(Command):
    type: Literal["aggregate.delete"] = "aggregate.delete"
    id: str


class AggregateHost(Command):
    """Add a host to an aggregate (``add``) or remove it."""

    type: Literal["aggregate.host"] = "aggregate.host"
    id: str
    host: str
    add: bool
    updated_at: str


def zone_of(conn: sqlite3.Connection, host: str) -> str | None:
    """The zone an aggregate gives ``host`` (None: the host's own)."""
    row = conn.execute(
        "SELECT a.availability_zone FROM aggregates a JOIN aggregate_hosts h ON h.aggregate_id=a.id"
        " WHERE h.host=? AND a.availability_zone IS NOT NULL ORDER BY a.name LIMIT 1", (host,)).fetchone()
    return None if row is None else str(row[0])


def _check_zone(conn: sqlite3.Connection, host: str, zone: str | None, aggregate_id: str) -> None:
    if zone is None:
        return
    for other in fetch_all(conn, "SELECT a.name, a.availability_zone FROM aggregates a JOIN aggregate_hosts h"
                                 " ON h.aggregate_id=a.id WHERE h.host=? AND a.id != ?"
                                 " AND a.availability_zone IS NOT NULL", (host, aggregate_id)):
        if other["availability_zone"] != zone:
            raise Conflict(f"host {host} is in zone {other['availability_zone']} (aggregate {other['name']});"
                           f" a host belongs to one zone only")


@handles(AggregateCreate)
def aggregate_create(conn: sqlite3.Connection, cmd: AggregateCreate) -> Result:
    if fetch_one(conn, "SELECT id FROM aggregates WHERE name=?", (cmd.name,)):
        raise Conflict(f"an aggregate named {cmd.name} exists already")
    conn.execute("INSERT INTO aggregates VALUES (?,?,?,?,?,?)",
                 (cmd.id, cmd.name, cmd.availability_zone, dumps(cmd.metadata), cmd.created_at, cmd.created_at))
    return {"id": cmd.id}


@handles(AggregateUpdate)
def aggregate_update(conn: sqlite3.Connection, cmd: AggregateUpdate) -> Result:
    row = require(conn, "aggregates", "id", cmd.id, "Aggregate")
    name = cmd.name or row["name"]
    if name != row["name"] and fetch_one(conn, "SELECT id FROM aggregates WHERE name=?", (name,)):
        raise Conflict(f"an aggregate named {name} exists already")
    zone = cmd.availability_zone if cmd.availability_zone is not None else row["availability_zone"]
    if zone != row["availability_zone"]:
        for host in [r[0] for r in conn.execute("SELECT host FROM aggregate_hosts WHERE aggregate_id=?", (cmd.id,))]:
            _check_zone(conn, host, zone, cmd.id)
    metadata: dict[str, Any] = {**row["metadata"], **cmd.set}
    for key in cmd.unset:
        if key not in metadata:
            raise BadRequest(f"aggregate {row['name']} has no metadata key {key}")
        metadata.pop(key)
    conn.execute("UPDATE aggregates SET name=?, availability_zone=?, metadata=?, updated_at=? WHERE id=?",
                 (name, zone or None, dumps(metadata), cmd.updated_at, cmd.id))
    return {"id": cmd.id}


@handles(AggregateDelete)
def aggregate_delete(conn: sqlite3.Connection, cmd: AggregateDelete) -> Result:
    row = require(conn, "aggregates", "id", cmd.id, "Aggregate")
    if conn.execute("SELECT 1 FROM aggregate_hosts WHERE aggregate_id=? LIMIT 1", (cmd.id,)).fetchone():
        raise Conflict(f"aggregate {row['name']} still has hosts; remove them first")
    conn.execute("DELETE FROM aggregates WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(AggregateHost)
def aggregate_host(conn: sqlite3.Connection, cmd: AggregateHost) -> Result:
    row = require(conn, "aggregates", "id", cmd.id, "Aggregate")
    require(conn, "hosts", "name", cmd.host, "Host")
    member = conn.execute("SELECT 1 FROM aggregate_hosts WHERE aggregate_id=? AND host=?", (cmd.id, cmd.host))
    if cmd.add:
        if member.fetchone():
            raise Conflict(f"host {cmd.host} is in aggregate {row['name']} already")
        _check_zone(conn, cmd.host, row["availability_zone"], cmd.id)
        conn.execute("INSERT INTO aggregate_hosts VALUES (?,?)", (cmd.id, cmd.host))
    else:
        if not member.fetchone():
            raise BadRequest(f"host {cmd.host} is not in aggregate {row['name']}")
        conn.execute("DELETE FROM aggregate_hosts WHERE aggregate_id=? AND host=?", (cmd.id, cmd.host))
    conn.execute("UPDATE aggregates SET updated_at=? WHERE id=?", (cmd.updated_at, cmd.id))
    return {"id": cmd.id}
