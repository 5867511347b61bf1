"""Apply handlers: flavors, keypairs, server groups, quotas."""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from pydantic import Field

from hvd.bounds import Int64
from hvd.catalog import quota
from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import dumps, fetch_one, require
from hvd.errors import BadRequest, Conflict, NotFound


class FlavorCreate(Command):
    type: Literal["flavor.create"] = "flavor.create"
    id: str
    name: str
    vcpus: Int64
    ram_mb: Int64
    disk_gb: Int64
    ephemeral_gb: Int64 = 0
    swap_mb: Int64 = 0
    is_public: bool = True
    extra_specs: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    created_at: str


class FlavorDelete(Command):
    type: Literal["flavor.delete"] = "flavor.delete"
    id: str


class FlavorSetSpecs(Command):
    type: Literal["flavor.set_specs"] = "flavor.set_specs"
    id: str
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class FlavorAccess(Command):
    type: Literal["flavor.access"] = "flavor.access"
    flavor_id: str
    project_id: str
    grant: bool


class KeypairCreate(Command):
    type: Literal["keypair.create"] = "keypair.create"
    id: str
    user_id: str
    project_id: str
    name: str
    public_key: str
    fingerprint: str
    key_type: str
    created_at: str


class KeypairDelete(Command):
    type: Literal["keypair.delete"] = "keypair.delete"
    user_id: str
    name: str


class ServerGroupCreate(Command):
    type: Literal["server_group.create"] = "server_group.create"
    id: str
    project_id: str
    user_id: str
    name: str
    policy: Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]
    created_at: str


class ServerGroupDelete(Command):
    type: Literal["server_group.delete"] = "server_group.delete"
    id: str


class QuotaSet(Command):
    type: Literal["quota.set"] = "quota.set"
    project_id: str
    limits: dict[str, Int64]


@handles(FlavorCreate)
def flavor_create(conn: sqlite3.Connection, cmd: FlavorCreate) -> Result:
    if fetch_one(conn, "SELECT id FROM flavors WHERE name=? OR id=?", (cmd.name, cmd.id)) is not None:
        raise Conflict(f"a flavor named '{cmd.name}' or with id '{cmd.id}' already exists")
    conn.execute(
        "INSERT INTO flavors (id, name, vcpus, ram_mb, disk_gb, ephemeral_gb, swap_mb, is_public, extra_specs,"
        " description, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            cmd.id, cmd.name, cmd.vcpus, cmd.ram_mb, cmd.disk_gb, cmd.ephemeral_gb, cmd.swap_mb,
            int(cmd.is_public), dumps(cmd.extra_specs), cmd.description, cmd.created_at,
        ),
    )
    return {"id": cmd.id}


@handles(FlavorDelete)
def flavor_delete(conn: sqlite3.Connection, cmd: FlavorDelete) -> Result:
    require(conn, "flavors", "id", cmd.id, "Flavor")
    # instances keep a copy of their flavor, so deleting it is safe (as in Nova)
    conn.execute("DELETE FROM flavors WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(FlavorSetSpecs)
def flavor_set_specs(conn: sqlite3.Connection, cmd: FlavorSetSpecs) -> Result:
    row = require(conn, "flavors", "id", cmd.id, "Flavor")
    specs: dict[str, Any] = dict(row["extra_specs"])
    specs.update(cmd.set)
    for key in cmd.unset:
        if key not in specs:
            raise NotFound(f"flavor {cmd.id} has no extra spec '{key}'")
        del specs[key]
    conn.execute("UPDATE flavors SET extra_specs=? WHERE id=?", (dumps(specs), cmd.id))
    return {"id": cmd.id, "extra_specs": specs}


@handles(FlavorAccess)
def flavor_access(conn: sqlite3.Connection, cmd: FlavorAccess) -> Result:
    flavor = require(conn, "flavors", "id", cmd.flavor_id, "Flavor")
    require(conn, "projects", "id", cmd.project_id, "Project")
    if flavor["is_public"]:
        raise Conflict(f"flavor {cmd.flavor_id} is public; access lists apply to private flavors")
    if cmd.grant:
        conn.execute("INSERT OR IGNORE INTO flavor_access VALUES (?,?)", (cmd.flavor_id, cmd.project_id))
    elif conn.execute(
        "DELETE FROM flavor_access WHERE flavor_id=? AND project_id=?", (cmd.flavor_id, cmd.project_id)
    ).rowcount == 0:
        raise NotFound(f"project {cmd.project_id} has no access to flavor {cmd.flavor_id}")
    return {"flavor_id": cmd.flavor_id, "project_id": cmd.project_id}


@handles(KeypairCreate)
def keypair_create(conn: sqlite3.Connection, cmd: KeypairCreate) -> Result:
    require(conn, "users", "id", cmd.user_id, "User")
    if fetch_one(conn, "SELECT id FROM keypairs WHERE user_id=? AND name=?", (cmd.user_id, cmd.name)):
        raise Conflict(f"Key pair '{cmd.name}' already exists")
    in_use = conn.execute("SELECT COUNT(*) FROM keypairs WHERE user_id=?", (cmd.user_id,)).fetchone()[0]
    quota.check(conn, cmd.project_id, "key_pairs", 1, in_use)
    conn.execute(
        "INSERT INTO keypairs VALUES (?,?,?,?,?,?,?,?)",
        (cmd.id, cmd.user_id, cmd.project_id, cmd.name, cmd.public_key, cmd.fingerprint, cmd.key_type,
         cmd.created_at),
    )
    return {"id": cmd.id}


@handles(KeypairDelete)
def keypair_delete(conn: sqlite3.Connection, cmd: KeypairDelete) -> Result:
    cur = conn.execute("DELETE FROM keypairs WHERE user_id=? AND name=?", (cmd.user_id, cmd.name))
    if cur.rowcount == 0:
        raise NotFound(f"Keypair {cmd.name} could not be found")
    return {}


@handles(ServerGroupCreate)
def server_group_create(conn: sqlite3.Connection, cmd: ServerGroupCreate) -> Result:
    require(conn, "projects", "id", cmd.project_id, "Project")
    in_use = conn.execute(
        "SELECT COUNT(*) FROM server_groups WHERE project_id=?", (cmd.project_id,)
    ).fetchone()[0]
    quota.check(conn, cmd.project_id, "server_groups", 1, in_use)
    conn.execute(
        "INSERT INTO server_groups VALUES (?,?,?,?,?,?)",
        (cmd.id, cmd.project_id, cmd.user_id, cmd.name, cmd.policy, cmd.created_at),
    )
    return {"id": cmd.id}


@handles(ServerGroupDelete)
def server_group_delete(conn: sqlite3.Connection, cmd: ServerGroupDelete) -> Result:
    require(conn, "server_groups", "id", cmd.id, "Server group")
    conn.execute("DELETE FROM server_groups WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(QuotaSet)
def quota_set(conn: sqlite3.Connection, cmd: QuotaSet) -> Result:
    require(conn, "projects", "id", cmd.project_id, "Project")
    for resource, limit in cmd.limits.items():
        if resource not in quota.DEFAULT_LIMITS:
            raise BadRequest(f"unknown quota resource '{resource}'")
        if limit < -1:
            raise BadRequest(f"quota limit for {resource} must be -1 (unlimited) or more, got {limit}")
    for resource, limit in cmd.limits.items():
        conn.execute(
            "INSERT INTO quotas VALUES (?,?,?) ON CONFLICT(project_id, resource) DO UPDATE SET hard_limit=?",
            (cmd.project_id, resource, limit, limit),
        )
    return {"project_id": cmd.project_id}
