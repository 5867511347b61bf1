"""The leader's placement service: pick a host, claim on it, ask it to build; the ONLY owner of
retries (scheduler_max_attempts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from hvd.catalog.cmd_hosts import ClaimResources, ReleaseClaim, capacity
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_all
from hvd.config import Config
from hvd.errors import CapacityExceeded, HvdError, InvalidState, NotFound, NoValidHost
from hvd.identity.service import now_iso
from hvd.scheduler.model import HostState, RequestSpec, boots_from_volume, claim_disk_gb
from hvd.scheduler.select import Selection, Weights, select

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
    fenced = {r[0] for r in conn.execute("SELECT host FROM host_fences")}
    return [{**host, "availability_zone": zones.get(host["name"], host["availability_zone"]),
             "fenced": host["name"] in fenced,
             "aggregate_metadata": {k: frozenset(v) for k, v in metadata.get(host["name"], {}).items()},
             "capacity": capacity(host), "claimed": usage.get(host["name"], idle)}
            for host in fetch_all(conn, "SELECT * FROM hosts ORDER BY name")]


def _group_hosts_of(conn: sqlite3.Connection, reqs: list[RequestSpec]) -> dict[str, frozenset[str]]:
    """instance id -> hosts of its group's other members (claims included), for group requests."""
    return {r.instance_id: group_hosts(conn, r.group_id, r.instance_id)[1] for r in reqs if r.group_id}


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


@dataclass
class _Pending:
    """A placement waiting for the decider: its request, claim kind and the caller's answer."""

    req: RequestSpec
    kind: str
    answer: asyncio.Future[str]


class _NoCandidate(Exception):
    """No host passed the filters for one request (the selection says why)."""

    def __init__(self, selection: Selection) -> None:
        super().__init__(selection.explain())
        self.selection = selection


class Placement:
    """Filter/weigh over host records and the claim ledger; claim atomically; build; retry.

    Decisions are made in batches by one decider task: it reads every host's state once per batch
    (plus the claims it decided that are not committed yet), decides each waiting request in turn
    against that snapshot (a decision adds its claim to it, so the next one sees it: parallel creates
    spread and group policies hold), then commits the batch's claims together (one Raft round
    carries them all) while it decides the next batch. The claim command re-checks capacity
    atomically, so a stale snapshot can cost a retry, never an overbooking.
    """

    MAX_BATCH = 512
    MAX_INFLIGHT = 4  # batches whose claims are being committed while the next is decided

    def __init__(self, config: Config, catalog: Catalog, is_up: Callable[[str], bool]) -> None:
        self.config = config
        self.catalog = catalog
        self.is_up = is_up
        s = config.scheduler
        self.weights = Weights(s.ram_weight_multiplier, s.disk_weight_multiplier, s.vcpu_weight_multiplier,
                               s.instance_count_weight_multiplier)
        self._waiting: list[_Pending] = []
        self._decider: asyncio.Task[None] | None = None
        self._rotation = random.Random()  # where a limited evaluation starts: not replicated state
        self._pending_usage: dict[str, list[int]] = {}  # host -> [vcpus, memory, disk, count] decided, uncommitted
        self._pending_groups: dict[str, dict[str, int]] = {}  # server group -> host -> uncommitted members
        self._inflight = asyncio.Semaphore(self.MAX_INFLIGHT)
        self._commits: set[asyncio.Task[None]] = set()

    async def host_states(self) -> list[HostState]:
        rows = await self.catalog.read(read_host_states)
        return [
            HostState(
                name=r["name"], availability_zone=r["availability_zone"], enabled=r["enabled"],
                up=self.is_up(r["name"]) and not r["fenced"],  # a fenced host runs nothing until it is back
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
            disk_gb=claim_disk_gb(flavor, boots_from_volume(inst)),
            availability_zone=inst.get("availability_zone"),
            extra_specs=dict(flavor.get("extra_specs", {})),
            image_properties={k: str(v) for k, v in props.items()},
            group_id=inst.get("server_group_id") or None,
            group_policy=policy or None,
            group_hosts=hosts,
        )
        return replace(spec, **overrides)

    async def place(self, req: RequestSpec, build: Build, kind: str = "instance") -> str:
        """Claim `req` on the best host and run `build(host)`; on failure release the claim and
        try the next host, up to max_attempts. Returns the host that built it.

        Raises NoValidHost (naming every host's reason) when no host is left; InvalidState /
        NotFound from `build` (the instance was deleted meanwhile) stop at once.
        """
        tried: set[str] = set(req.tried_hosts)
        failures: list[str] = []
        for _ in range(self.config.scheduler.max_attempts):
            try:
                host = await self.claim(replace(req, tried_hosts=frozenset(tried)), kind)
            except _NoCandidate as exc:
                raise NoValidHost("No valid host was found. " + "; ".join([*failures, exc.selection.explain()]),
                                  rejected=exc.selection.rejected) from None
            except CapacityExceeded as exc:  # the snapshot was stale: the claim's own check refused
                host = str(exc.details.get("host", ""))
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

    async def claim(self, req: RequestSpec, kind: str) -> str:
        """Decide a host for ``req`` and commit its claim there; returns the host. Raises
        _NoCandidate when no host passes the filters, CapacityExceeded when the claim is refused."""
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(req, kind, answer))
        if self._decider is None or self._decider.done():
            self._decider = asyncio.ensure_future(self._decide_batches())
        return await answer

    async def _decide_batches(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self.MAX_BATCH], self._waiting[self.MAX_BATCH:]
            try:
                decided = await self._decide(batch)
            except Exception as exc:  # a failed read fails this batch only; the next one starts afresh
                for pending in batch:
                    if not pending.answer.done():
                        pending.answer.set_exception(exc)
                continue
            # the next batch is decided while this one commits: it sees these claims as pending
            await self._inflight.acquire()
            task = asyncio.ensure_future(self._commit(decided))
            self._commits.add(task)
            task.add_done_callback(self._committed)

    def _committed(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        self._inflight.release()

    async def _decide(self, batch: list[_Pending]) -> list[tuple[_Pending, str]]:
        hosts = [h.with_claim(*self._pending_usage[h.name]) if h.name in self._pending_usage else h
                 for h in await self.host_states()]
        position = {h.name: i for i, h in enumerate(hosts)}
        groups = await self.catalog.read(_group_hosts_of, [p.req for p in batch if p.req.group_id])
        decided: list[tuple[_Pending, str]] = []
        limit = self.config.scheduler.max_candidates
        for pending in batch:
            req = pending.req
            if req.group_id:  # members claimed, or decided and not committed yet, are there too
                extra = groups.get(req.instance_id, frozenset()) | set(self._pending_groups.get(req.group_id, {}))
                req = replace(req, group_hosts=req.group_hosts | extra)
            selection = select(hosts, req, self.config.scheduler.filters, self.weights, limit=limit,
                               start=self._rotation.randrange(len(hosts)) if limit and hosts else 0)
            if not selection.ranked:
                pending.answer.set_exception(_NoCandidate(selection))
                continue
            chosen = selection.ranked[0][0]
            hosts[position[chosen.name]] = chosen.with_claim(req.vcpus, req.memory_mb, req.disk_gb)
            self._hold(chosen.name, req, +1)
            decided.append((pending, chosen.name))
        return decided

    def _hold(self, host: str, req: RequestSpec, sign: int) -> None:
        """Count (or, with sign -1, forget) a decided claim not committed yet."""
        usage = self._pending_usage.setdefault(host, [0, 0, 0, 0])
        for i, amount in enumerate((req.vcpus, req.memory_mb, req.disk_gb, 1)):
            usage[i] += sign * amount
        if usage[3] <= 0:
            del self._pending_usage[host]
        if req.group_id:
            members = self._pending_groups.setdefault(req.group_id, {})
            members[host] = members.get(host, 0) + sign
            if members[host] <= 0:
                del members[host]
            if not members:
                del self._pending_groups[req.group_id]

    async def _commit(self, decided: list[tuple[_Pending, str]]) -> None:
        results = await asyncio.gather(*(
            self.catalog.propose(ClaimResources(instance_id=p.req.instance_id, kind=p.kind, host=host,
                                                vcpus=p.req.vcpus, memory_mb=p.req.memory_mb, disk_gb=p.req.disk_gb,
                                                created_at=now_iso()))
            for p, host in decided), return_exceptions=True)
        for (pending, host), result in zip(decided, results, strict=True):
            self._hold(host, pending.req, -1)  # committed (now in the ledger) or refused: no longer pending
            if isinstance(result, BaseException):
                pending.answer.set_exception(result)
            else:
                pending.answer.set_result(host)

    async def release(self, instance_id: str, kind: str | None = None) -> None:
        with contextlib.suppress(NotFound):  # already released: release is idempotent
            await self.catalog.propose(ReleaseClaim(instance_id=instance_id, kind=kind))
