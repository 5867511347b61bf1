"""The leader's placement service: pick a host, claim on it, ask it to build; the ONLY owner of
retries (scheduler_max_attempts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from hvd.catalog.cmd_hosts import ClaimResources, ReleaseClaim, capacity
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_all
from hvd.config import Config
from hvd.errors import CapacityExceeded, HvdError, InvalidState, NotFound, NoValidHost
from hvd.identity.service import now_iso
from hvd.scheduler.model import HostState, RequestSpec
from hvd.scheduler.select import Weights, select

log = logging.getLogger(__name__)

Build = Callable[[str], Awaitable[None]]


def read_host_states(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every host with its capacity and claimed usage: two queries whatever the number of hosts."""
    usage = {
        row[0]: {"vcpus": row[1], "memory_mb": row[2], "disk_gb": row[3], "count": row[4]}
        for row in conn.execute("SELECT host, SUM(vcpus), SUM(memory_mb), SUM(disk_gb), COUNT(*) FROM claims"
                                " GROUP BY host")
    }
    idle = {"vcpus": 0, "memory_mb": 0, "disk_gb": 0, "count": 0}
    zones: dict[str, str] = {}
    metadata: dict[str, dict[str, set[str]]] = {}
    for host, zone, meta in conn.execute("SELECT h.host, a.availability_zone, a.metadata FROM aggregate_hosts h"
                                         " JOIN aggregates a ON a.id=h.aggregate_id ORDER BY a.name"):
        if zone:
            zones.setdefault(host, zone)
        for key, value in json.loads(meta).items():
            metadata.setdefault(host, {}).setdefault(key, set()).add(str(value))
    return [{**host, "availability_zone": zones.get(host["name"], host["availability_zone"]),
             "aggregate_metadata": {k: frozenset(v) for k, v in metadata.get(host["name"], {}).items()},
             "capacity": capacity(host), "claimed": usage.get(host["name"], idle)}
            for host in fetch_all(conn, "SELECT * FROM hosts ORDER BY name")]


def group_hosts(conn: sqlite3.Connection, group_id: str, instance_id: str) -> tuple[str, frozenset[str]]:
    """(policy, hosts of the group's other live members)."""
    row = conn.execute("SELECT policy FROM server_groups WHERE id=?", (group_id,)).fetchone()
    if row is None:
        return "", frozenset()
    # claims too: a member claimed on a host is there before its build records the host
    hosts = conn.execute(
        "SELECT i.host FROM server_group_members m JOIN instances i ON i.id=m.instance_id"
        " WHERE m.group_id=? AND i.id != ? AND i.host IS NOT NULL AND i.deleted_at IS NULL"
        " UNION SELECT c.host FROM server_group_members m JOIN claims c ON c.instance_id=m.instance_id"
        " WHERE m.group_id=? AND c.instance_id != ?",
        (group_id, instance_id, group_id, instance_id),
    ).fetchall()
    return str(row[0]), frozenset(h[0] for h in hosts)


class Placement:
    """Filter/weigh over host records and the claim ledger; claim atomically; build; retry."""

    def __init__(self, config: Config, catalog: Catalog, is_up: Callable[[str], bool]) -> None:
        self.config = config
        self.catalog = catalog
        self.is_up = is_up
        self._deciding = asyncio.Lock()
        s = config.scheduler
        self.weights = Weights(s.ram_weight_multiplier, s.disk_weight_multiplier, s.vcpu_weight_multiplier,
                               s.instance_count_weight_multiplier)

    async def host_states(self) -> list[HostState]:
        rows = await self.catalog.read(read_host_states)
        return [
            HostState(
                name=r["name"], availability_zone=r["availability_zone"], enabled=r["enabled"],
                up=self.is_up(r["name"]),
                vcpus_capacity=r["capacity"]["vcpus"], vcpus_claimed=r["claimed"]["vcpus"],
                memory_capacity_mb=r["capacity"]["memory_mb"], memory_claimed_mb=r["claimed"]["memory_mb"],
                disk_capacity_gb=r["capacity"]["disk_gb"], disk_claimed_gb=r["claimed"]["disk_gb"],
                instance_count=r["claimed"]["count"], hypervisor_type=r["hypervisor_type"], arch=r["arch"],
                capabilities=r["capabilities"], aggregate_metadata=r["aggregate_metadata"],
            )
            for r in rows
        ]

    async def request_for(self, inst: dict[str, Any], flavor: dict[str, Any] | None = None,
                          **overrides: Any) -> RequestSpec:
        flavor = flavor or inst["flavor"]
        image = await self.catalog.read(
            lambda c: c.execute("SELECT properties FROM images WHERE id=?", (inst["image_id"],)).fetchone()
        )
        props = json.loads(image[0]) if image else {}
        policy, hosts = ("", frozenset[str]())
        if inst.get("server_group_id"):
            policy, hosts = await self.catalog.read(group_hosts, inst["server_group_id"], inst["id"])
        spec = RequestSpec(
            instance_id=inst["id"],
            vcpus=int(flavor["vcpus"]),
            memory_mb=int(flavor["ram_mb"]),
            disk_gb=int(flavor["disk_gb"]) + int(flavor.get("ephemeral_gb", 0)),
            availability_zone=inst.get("availability_zone"),
            extra_specs=dict(flavor.get("extra_specs", {})),
            image_properties={k: str(v) for k, v in props.items()},
            group_policy=policy or None,
            group_hosts=hosts,
        )
        return replace(spec, **overrides)

    async def refresh_group(self, req: RequestSpec) -> RequestSpec:
        """``req`` with its server group's hosts as the catalog has them now (placements before
        this one may have added hosts)."""
        if not req.group_policy:
            return req
        group = await self.catalog.read(
            lambda c: c.execute("SELECT group_id FROM server_group_members WHERE instance_id=?",
                                (req.instance_id,)).fetchone()
        )
        if group is None:
            return req
        _, hosts = await self.catalog.read(group_hosts, group[0], req.instance_id)
        return replace(req, group_hosts=hosts)

    async def place(self, req: RequestSpec, build: Build, kind: str = "instance") -> str:
        """Claim `req` on the best host and run `build(host)`; on failure release the claim and
        try the next host, up to max_attempts. Returns the host that built it.

        Raises NoValidHost (naming every host's reason) when no host is left; InvalidState /
        NotFound from `build` (the instance was deleted meanwhile) stop at once.
        """
        tried: set[str] = set(req.tried_hosts)
        failures: list[str] = []
        for _ in range(self.config.scheduler.max_attempts):
            # select + claim one placement at a time: parallel creates each see the claims before them
            # (so they spread under the weighers, and group policies hold); builds run in parallel
            async with self._deciding:
                req = await self.refresh_group(req)
                hosts = await self.host_states()
                selection = select(hosts, replace(req, tried_hosts=frozenset(tried)), self.config.scheduler.filters,
                                   self.weights)
                if not selection.ranked:
                    raise NoValidHost(
                        "No valid host was found. " + "; ".join([*failures, selection.explain()]),
                        rejected=selection.rejected,
                    )
                host = selection.ranked[0][0].name
                try:
                    await self.catalog.propose(
                        ClaimResources(instance_id=req.instance_id, kind=kind,
                                       host=host, vcpus=req.vcpus, memory_mb=req.memory_mb, disk_gb=req.disk_gb,
                                       created_at=now_iso())
                    )
                except CapacityExceeded as exc:
                    tried.add(host)
                    failures.append(f"{host}: {exc.message}")
                    continue

            try:
                await build(host)
            except (InvalidState, NotFound):
                await self.release(req.instance_id, kind)
                raise
            except HvdError as exc:
                log.warning("build of %s on %s failed: %s", req.instance_id, host, exc.message)
                await self.release(req.instance_id, kind)
                tried.add(host)
                failures.append(f"{host}: {exc.message}")
                continue
            return host
        raise NoValidHost(
            f"Exceeded maximum number of retries ({self.config.scheduler.max_attempts}). " + "; ".join(failures)
        )

    async def release(self, instance_id: str, kind: str | None = None) -> None:
        with contextlib.suppress(NotFound):  # already released: release is idempotent
            await self.catalog.propose(ReleaseClaim(instance_id=instance_id, kind=kind))
