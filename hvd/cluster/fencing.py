"""Fencing: one server never runs twice, even when a host dies or is cut off.

- The **leader** fences a host that gossip has declared dead for ``fence_delay_s`` (after running
  the optional fence agent, e.g. an IPMI power-off): it commits a fence record at its term. Only
  a fenced host's servers may be rebuilt elsewhere (``evacuate``; automatically with
  ``auto_evacuate``, rate-limited).
- **Every host** checks its contact with a Raft quorum (a read-index round) every second; out of
  touch for ``self_fence_s`` (shorter than the fence delay) it powers its guests off itself, so a
  partitioned host has stopped them before anything of it is rebuilt elsewhere.
- A host that **returns** (contact again, or a restart) first removes the domains and files of
  servers the catalog moved away, then lifts its own fence; guests it stopped itself and that are
  still its own are started again.

The decisions are pure functions (``track_dead``, ``due_for_fencing``, ``Budget``); ``Fencer`` is the
loop around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvd import spawn
from hvd.catalog.cmd_hosts import HostFence, HostUnfence, fenced_hosts
from hvd.compute.lifecycle import PowerState, VmState
from hvd.config import Config
from hvd.errors import Conflict, HvdError, NotFound
from hvd.identity.service import now_iso

if TYPE_CHECKING:
    from hvd.cluster.gossip.service import GossipService
    from hvd.compute.reconcile import Reconciler
    from hvd.compute.service import ComputeService

log = logging.getLogger(__name__)

ROUND_S = 1.0  # how often contact is checked and fencing decided
QUORUM_PROBE_S = 2.0  # a read-index round slower than this counts as no contact
AGENT_TIMEOUT_S = 60.0
SELF_FENCED_FILE = "self-fenced.json"


def _own_row(conn: Any, uuid: str) -> tuple[Any, ...] | None:
    row = conn.execute("SELECT host, vm_state, task_state FROM instances WHERE id=? AND deleted_at IS NULL",
                       (uuid,)).fetchone()
    return None if row is None else tuple(row)


def track_dead(dead_since: dict[str, float], states: dict[str, str], now: float) -> dict[str, float]:
    """When each host was first seen dead, as long as it stays dead (a host seen alive, suspect or
    gone from gossip starts over)."""
    return {host: dead_since.get(host, now) for host, state in states.items() if state == "dead"}


def due_for_fencing(dead_since: dict[str, float], fenced: set[str], now: float, delay: float,
                    me: str) -> list[str]:
    """Hosts dead for ``delay`` seconds and not fenced yet (never this host)."""
    return sorted(h for h, since in dead_since.items() if h != me and h not in fenced and now - since >= delay)


@dataclass
class Budget:
    """A token bucket: at most ``per_minute`` evacuations a minute."""

    per_minute: int
    tokens: float = 0.0
    at: float = 0.0
    started: bool = field(default=False)

    def take(self, now: float) -> bool:
        if not self.started:
            self.tokens, self.at, self.started = float(self.per_minute), now, True
        self.tokens = min(float(self.per_minute), self.tokens + (now - self.at) * self.per_minute / 60.0)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Fencer:
    """The fencing loop of one host (leader duties included when it leads)."""

    def __init__(self, config: Config, service: ComputeService, reconciler: Reconciler,
                 gossip: GossipService | None) -> None:
        self.config = config
        self.svc = service
        self.reconciler = reconciler
        self.gossip = gossip
        self.host = config.host_name
        self.last_contact = time.monotonic()
        self.dead_since: dict[str, float] = {}
        self.budget = Budget(config.fencing.evacuations_per_minute)
        self.state_file = Path(config.host.data_dir) / SELF_FENCED_FILE
        self.self_fenced = self.state_file.exists()  # a restart keeps the promise to restart them

    async def run(self) -> None:
        while True:
            await asyncio.sleep(ROUND_S)
            try:
                await self.round()
            except Exception:  # one bad round must not end fencing; the next one retries
                log.exception("fencing round failed")

    async def round(self) -> None:
        now = time.monotonic()
        coordinator = self.svc.catalog.coordinator
        if await self._quorum_contact():
            self.last_contact = now
            fenced = await self.svc.catalog.read(fenced_hosts)
            if self.host in fenced or self.self_fenced:
                await self.returned(self.host in fenced)
            if coordinator.is_leader and self.gossip is not None:
                await self.lead(now, set(fenced))
        elif now - self.last_contact >= self.config.fencing.self_fence_s and not self.self_fenced:
            await self.fence_self(now - self.last_contact)

    async def _quorum_contact(self) -> bool:
        try:
            async with asyncio.timeout(QUORUM_PROBE_S):
                await self.svc.catalog.coordinator.read_barrier()
            return True
        except (TimeoutError, HvdError):
            return False

    # --- this host ----------------------------------------------------------------------------

    async def fence_self(self, silent_s: float) -> None:
        """Out of touch with a quorum: power every guest off (they may be rebuilt elsewhere soon)."""
        driver = self.svc.manager.driver
        domains = await driver.list_domains()
        running = sorted(u for u, p in domains.items() if p in (PowerState.RUNNING, PowerState.PAUSED))
        await asyncio.to_thread(self.state_file.write_text, json.dumps(running))
        self.self_fenced = True
        log.critical("no contact with a Raft quorum for %.0f s: powering off %d guests (self-fence)", silent_s,
                     len(running))
        for uuid in running:
            with contextlib.suppress(HvdError):
                await driver.power_off(uuid, 0)
        self.svc.events.publish("host.self_fenced", host=self.host, guests=running)

    async def returned(self, fenced: bool) -> None:
        """Contact again: remove what moved away, lift our fence, restart what we stopped ourselves."""
        if fenced:
            log.warning("this host was fenced: removing the servers the catalog moved elsewhere")
            await self.reconciler.remove_orphans()
            with contextlib.suppress(NotFound):
                await self.svc.catalog.propose(HostUnfence(host=self.host))
            self.svc.events.publish("host.unfenced", host=self.host)
        if self.self_fenced:
            await self._restart_own()
            self.state_file.unlink(missing_ok=True)
            self.self_fenced = False

    async def _restart_own(self) -> None:
        try:
            stopped = set(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            stopped = set()
        for uuid in sorted(stopped):
            inst = await self.svc.catalog.read(_own_row, uuid)
            if inst is None or inst[0] != self.host or inst[1] != VmState.ACTIVE or inst[2] is not None:
                continue  # moved, deleted, stopped meanwhile or busy: not ours to start
            try:
                await self.svc.manager.start(await self.svc.instance(uuid))
                await self.svc.update(uuid, power_state=int(PowerState.RUNNING))
                log.warning("started %s again after the self-fence", uuid)
            except HvdError as exc:
                log.error("could not start %s again after the self-fence: %s", uuid, exc.message)

    # --- the leader ---------------------------------------------------------------------------

    async def lead(self, now: float, fenced: set[str]) -> None:
        assert self.gossip is not None
        known = set(await self.svc.catalog.read(lambda c: [r[0] for r in c.execute("SELECT name FROM hosts")]))
        states = {m.name: m.state for m in self.gossip.members() if m.name in known}
        self.dead_since = track_dead(self.dead_since, states, now)
        for host in due_for_fencing(self.dead_since, fenced, now, self.config.fencing.fence_delay_s, self.host):
            if await self._run_agent(host):
                await self._fence(host, now - self.dead_since[host])
                fenced.add(host)
        if self.config.fencing.auto_evacuate and fenced:
            await self._evacuate_all(sorted(fenced), now)

    async def _run_agent(self, host: str) -> bool:
        argv: Sequence[str] = [a.replace("{host}", host) for a in self.config.fencing.fence_agent]
        if not argv:
            return True
        try:  # a hung agent is killed at the timeout (it would otherwise outlive the round)
            done = await spawn.run(argv, timeout=AGENT_TIMEOUT_S, merge_stderr=True)
        except TimeoutError:  # before OSError, of which it is a subclass
            log.error("fence agent for %s gave no answer within %.0f s: killed (retrying next round)", host,
                      AGENT_TIMEOUT_S)
            return False
        except OSError as exc:
            log.error("fence agent for %s failed to run: %s (retrying next round)", host, exc)
            return False
        if done.returncode != 0:
            log.error("fence agent for %s exited %s: %s (retrying next round)", host, done.returncode,
                      done.stdout.decode(errors="replace")[-500:])
            return False
        return True

    async def _fence(self, host: str, dead_s: float) -> None:
        term = int(self.svc.catalog.coordinator.term)
        reason = f"dead in gossip for {dead_s:.0f} s" + (" (fence agent ran)" if self.config.fencing.fence_agent
                                                          else "")
        try:
            await self.svc.catalog.propose(HostFence(host=host, term=term, reason=reason, fenced_at=now_iso()))
        except Conflict:
            return
        log.critical("fenced host %s at term %d: %s", host, term, reason)
        self.svc.events.publish("host.fenced", host=host, term=term, reason=reason)

    async def _evacuate_all(self, hosts: list[str], now: float) -> None:
        rows: list[Any] = await self.svc.catalog.read(
            lambda c: c.execute(f"SELECT id FROM instances WHERE deleted_at IS NULL AND task_state IS NULL"
                                f" AND vm_state IN ('active','stopped','error')"
                                f" AND host IN ({','.join('?' * len(hosts))}) ORDER BY created_at", hosts).fetchall())
        for (inst_id,) in rows:
            if not self.budget.take(now):
                return  # the rest next round
            try:
                await self.svc.evacuate(None, await self.svc.instance(inst_id), None)
            except HvdError as exc:
                log.warning("automatic evacuation of %s refused: %s", inst_id, exc.message)
