"""Apply handlers: host records and resource claims (the ledger the scheduler trusts)."""

from __future__ import annotations

import math
import sqlite3
from typing import Any, Literal

from pydantic import Field

from hvd.bounds import Int64
from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import dumps, fetch_all, fetch_one, require
from hvd.errors import BadRequest, CapacityExceeded, Conflict, NotFound


class HostRegister(Command):
    """A host reports itself (at start-up and when its resources change); keeps enabled state."""

    type: Literal["host.register"] = "host.register"
    name: str
    node_id: str
    availability_zone: str
    vcpus: Int64
    memory_mb: Int64
    disk_gb: Int64
    reserved_vcpus: Int64
    reserved_memory_mb: Int64
    reserved_disk_gb: Int64
    cpu_ratio: float
    ram_ratio: float
    disk_ratio: float
    hypervisor_type: str
    hypervisor_version: str
    arch: str
    cpu_model: str
    capabilities: dict[str, Any] = Field(default_factory=dict)
    api_url: str
    updated_at: str


class HostSetEnabled(Command):
    type: Literal["host.set_enabled"] = "host.set_enabled"
    name: str
    enabled: bool
    reason: str = ""


class ClaimResources(Command):
    """Reserve a flavor's resources on a host for an instance; refused beyond capacity × ratio."""

    type: Literal["claim.create"] = "claim.create"
    instance_id: str
    kind: Literal["instance", "resize"] = "instance"
    host: str
    vcpus: Int64
    memory_mb: Int64
    disk_gb: Int64
    created_at: str


class ReleaseClaim(Command):
    type: Literal["claim.release"] = "claim.release"
    instance_id: str
    kind: Literal["instance", "resize"] | None = None  # None = every claim of the instance


def capacity(host: dict[str, Any]) -> dict[str, int]:
    """What the scheduler may hand out on `host`: (total - reserved) × ratio, per resource."""
    return {
        "vcpus": math.floor((host["vcpus"] - host["reserved_vcpus"]) * host["cpu_ratio"]),
        "memory_mb": math.floor((host["memory_mb"] - host["reserved_memory_mb"]) * host["ram_ratio"]),
        "disk_gb": math.floor((host["disk_gb"] - host["reserved_disk_gb"]) * host["disk_ratio"]),
    }


def claimed(conn: sqlite3.Connection, host: str) -> dict[str, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(vcpus),0), COALESCE(SUM(memory_mb),0), COALESCE(SUM(disk_gb),0), COUNT(*)"
        " FROM claims WHERE host=?",
        (host,),
    ).fetchone()
    return {"vcpus": row[0], "memory_mb": row[1], "disk_gb": row[2], "count": row[3]}


@handles(HostRegister)
def host_register(conn: sqlite3.Connection, cmd: HostRegister) -> Result:
    values = cmd.model_dump(exclude={"type"})
    values["capabilities"] = dumps(cmd.capabilities)
    cols = list(values)
    conn.execute(
        f"INSERT INTO hosts ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        f" ON CONFLICT(name) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in cols if c != 'name')}",
        tuple(values[c] for c in cols),
    )
    return {"name": cmd.name}


@handles(HostSetEnabled)
def host_set_enabled(conn: sqlite3.Connection, cmd: HostSetEnabled) -> Result:
    require(conn, "hosts", "name", cmd.name, "Host")
    conn.execute(
        "UPDATE hosts SET enabled=?, disabled_reason=? WHERE name=?",
        (int(cmd.enabled), "" if cmd.enabled else cmd.reason, cmd.name),
    )
    return {"name": cmd.name, "enabled": cmd.enabled}


@handles(ClaimResources)
def claim_create(conn: sqlite3.Connection, cmd: ClaimResources) -> Result:
    host = require(conn, "hosts", "name", cmd.host, "Host")
    if fetch_one(conn, "SELECT host FROM claims WHERE instance_id=? AND kind=?", (cmd.instance_id, cmd.kind)):
        raise Conflict(f"instance {cmd.instance_id} already holds a {cmd.kind} claim")
    cap = capacity(host)
    used = claimed(conn, cmd.host)
    for resource, want in (("vcpus", cmd.vcpus), ("memory_mb", cmd.memory_mb), ("disk_gb", cmd.disk_gb)):
        if used[resource] + want > cap[resource]:
            raise CapacityExceeded(
                f"host {cmd.host} lacks {resource}: requested {want}, claimed {used[resource]},"
                f" capacity {cap[resource]}",
                host=cmd.host,
                resource=resource,
            )
    conn.execute(
        "INSERT INTO claims VALUES (?,?,?,?,?,?,?)",
        (cmd.instance_id, cmd.kind, cmd.host, cmd.vcpus, cmd.memory_mb, cmd.disk_gb, cmd.created_at),
    )
    return {"instance_id": cmd.instance_id, "host": cmd.host}


@handles(ReleaseClaim)
def claim_release(conn: sqlite3.Connection, cmd: ReleaseClaim) -> Result:
    if cmd.kind is None:
        cur = conn.execute("DELETE FROM claims WHERE instance_id=?", (cmd.instance_id,))
    else:
        cur = conn.execute("DELETE FROM claims WHERE instance_id=? AND kind=?", (cmd.instance_id, cmd.kind))
    if cur.rowcount == 0 and cmd.kind is not None:
        raise NotFound(f"instance {cmd.instance_id} holds no {cmd.kind} claim")
    return {"released": cur.rowcount}


class HostFence(Command):
    """The leader (at ``term``) declares ``host`` fenced: nothing of it runs any more, its servers
    may be rebuilt elsewhere. Refused while the host is fenced already."""

    type: Literal["host.fence"] = "host.fence"
    host: str
    term: Int64
    reason: str
    fenced_at: str


class HostUnfence(Command):
    """A fenced host came back and removed what the catalog moved away: it may run servers again."""

    type: Literal["host.unfence"] = "host.unfence"
    host: str


@handles(HostFence)
def host_fence(conn: sqlite3.Connection, cmd: HostFence) -> Result:
    require(conn, "hosts", "name", cmd.host, "Host")
    if fetch_one(conn, "SELECT host FROM host_fences WHERE host=?", (cmd.host,)):
        raise Conflict(f"host {cmd.host} is fenced already")
    conn.execute("INSERT INTO host_fences VALUES (?,?,?,?)", (cmd.host, cmd.term, cmd.reason, cmd.fenced_at))
    return {"host": cmd.host, "term": cmd.term}


@handles(HostUnfence)
def host_unfence(conn: sqlite3.Connection, cmd: HostUnfence) -> Result:
    if conn.execute("DELETE FROM host_fences WHERE host=?", (cmd.host,)).rowcount == 0:
        raise NotFound(f"host {cmd.host} is not fenced")
    return {"host": cmd.host}


def fenced_hosts(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    return {r["host"]: r for r in fetch_all(conn, "SELECT * FROM host_fences")}


class ClaimPromote(Command):
    """Confirm a resize: the resize claim becomes the instance's only claim."""

    type: Literal["claim.promote"] = "claim.promote"
    instance_id: str


@handles(ClaimPromote)
def claim_promote(conn: sqlite3.Connection, cmd: ClaimPromote) -> Result:
    if fetch_one(conn, "SELECT host FROM claims WHERE instance_id=? AND kind='resize'", (cmd.instance_id,)) is None:
        raise NotFound(f"instance {cmd.instance_id} holds no resize claim")
    conn.execute("DELETE FROM claims WHERE instance_id=? AND kind='instance'", (cmd.instance_id,))
    conn.execute("UPDATE claims SET kind='instance' WHERE instance_id=? AND kind='resize'", (cmd.instance_id,))
    return {"instance_id": cmd.instance_id}


class JoinTokenUse(Command):
    """A member is about to sign a joining host's certificate with join token ``token_id``: the use
    is committed first, so each token admits one host, on every member (hvd/cluster/join_token.py).
    Uses of tokens expired by ``now`` are forgotten (an expired token is refused before this)."""

    since = 2  # catalog protocol level (hvd/catalog/protocol.py): new in hvd 0.2.0
    type: Literal["cluster.join_token_use"] = "cluster.join_token_use"
    token_id: str = Field(min_length=1, max_length=64)
    expires: Int64
    node_id: str = Field(max_length=255)
    now: Int64


@handles(JoinTokenUse)
def join_token_use(conn: sqlite3.Connection, cmd: JoinTokenUse) -> Result:
    key = f"join-token:{cmd.token_id}"
    if fetch_one(conn, "SELECT key FROM meta WHERE key=?", (key,)):
        raise Conflict("join token already used: ask a member for a new one (hvd cluster join-token)")
    conn.execute("DELETE FROM meta WHERE key LIKE 'join-token:%' AND CAST(value AS INTEGER) < ?", (cmd.now,))
    conn.execute("INSERT INTO meta VALUES (?, ?)", (key, str(cmd.expires)))
    return {"token_id": cmd.token_id, "node_id": cmd.node_id}


class CertRevoke(Command):
    """Refuse cluster certificates on peer routes (hvd/cluster/cert_trust.py): every certificate of
    ``node`` issued at or before ``before`` (unix seconds; set when a member is removed), or the one
    certificate with ``serial`` (lower-case hex). Exactly one of ``node`` and ``serial``."""

    since = 2  # catalog protocol level (hvd/catalog/protocol.py): new in hvd 0.2.0
    type: Literal["cluster.cert_revoke"] = "cluster.cert_revoke"
    node: str = Field("", max_length=255)
    serial: str = Field("", max_length=64, pattern=r"^[0-9a-f]*$")
    before: Int64


@handles(CertRevoke)
def cert_revoke(conn: sqlite3.Connection, cmd: CertRevoke) -> Result:
    if bool(cmd.node) == bool(cmd.serial):
        raise BadRequest("a certificate revocation names either a node or a serial")
    if cmd.node:
        key = f"cert-floor:{cmd.node}"
        row = fetch_one(conn, "SELECT value FROM meta WHERE key=?", (key,))
        # a floor only rises: revoking again never re-admits a certificate refused before
        floor = max(cmd.before, int(row["value"]) if row else cmd.before)
    else:
        key, floor = f"cert-serial:{cmd.serial}", cmd.before
    conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                 (key, str(floor)))
    return {"node": cmd.node or None, "serial": cmd.serial or None, "before": floor}
