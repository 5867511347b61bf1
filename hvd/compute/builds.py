"""Builds across hosts: placement on the Raft leader, the build on the chosen host.

Any host accepts a create and hands the placement to the leader (``schedule``). The leader
(``place``) claims on the best host (the claim is atomic in apply), records the host on the
instance, and calls that host's daemon with the instance id and its Raft term; a host refuses a
stale term. The host (``build_here``) reads the spec from its own catalog replica, builds, and
reports the outcome through catalog commands; on failure the leader releases the claim and tries
the next host (placement owns the retries).

The catalog is the source of truth, the call only a wake-up: ``recover`` runs periodically on
every host and builds (or fails, with a reason) an instance claimed for it whose call never came,
and on the leader re-places instances whose placement was interrupted (a leader crash). One
build per instance is guaranteed by the compare-and-swap that starts it: task_state must still be
``scheduling`` and the instance must still be placed on this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from hvd.catalog.sql import fetch_all, fetch_one
from hvd.cluster.peers import PeerCaller, PeerUnreachable
from hvd.compute.lifecycle import PowerState, TaskState, VmState
from hvd.errors import Conflict, DriverError, HvdError, InvalidState, NotFound, NotLeader, ServiceUnavailable
from hvd.identity.service import now_iso, seconds_since

if TYPE_CHECKING:
    from hvd.compute.service import ComputeService

log = logging.getLogger(__name__)

PLACE_PATH = "/internal/v1/compute/place"
BUILD_PATH = "/internal/v1/compute/build"
UNSHELVE_PATH = "/internal/v1/compute/unshelve"
BUILD_TASKS = [TaskState.SCHEDULING, TaskState.NETWORKING, TaskState.BLOCK_DEVICE_MAPPING, TaskState.SPAWNING]
RECOVER_GRACE_S = 15.0  # a create younger than this still has its placement or build call in flight
HANDOFF_TIMEOUT_S = 30.0  # how long a host tries to hand a placement to a leader before recovery takes over


class PlaceRequest(BaseModel):
    """Leader: place this newly recorded instance (its create action is ``action_id``)."""

    instance_id: str = Field(max_length=64)
    action_id: str = Field(max_length=64)
    force_host: str | None = Field(None, max_length=255)


class PlaceAnswer(BaseModel):
    accepted: bool


class BuildRequest(BaseModel):
    """Chosen host: build this instance, which the leader (at ``term``) claimed for you."""

    instance_id: str = Field(max_length=64)
    action_id: str = Field(max_length=64)
    term: int = Field(ge=0, le=2**62)
    leader: str = Field(max_length=255)


class BuildAnswer(BaseModel):
    host: str


class UnshelveRequest(BaseModel):
    """Chosen host: boot this shelved instance from its shelved image (the unshelve runs on the host
    that took the request; the boot happens here)."""

    instance_id: str = Field(max_length=64)
    image_id: str = Field(max_length=64)


def _open_create_action(conn: Any, instance_id: str) -> str | None:
    row = fetch_one(conn, "SELECT id FROM instance_actions WHERE instance_id=? AND action='create'"
                          " AND finish_time IS NULL ORDER BY start_time DESC LIMIT 1", (instance_id,))
    return str(row["id"]) if row else None


class ClusterBuilds:
    """Placement hand-off, leader placement with remote builds, the host's build, recovery."""

    def __init__(self, service: ComputeService, peers: PeerCaller | None, build_timeout_s: float) -> None:
        self.svc = service
        self.peers = peers
        self.build_timeout_s = build_timeout_s
        self.host = service.host
        self._placing: set[str] = set()
        self._building: dict[str, asyncio.Task[None]] = {}

    @property
    def coordinator(self) -> Any:
        return self.svc.catalog.coordinator

    # --- any host: hand the placement to the leader -----------------------------------------

    async def schedule(self, inst_id: str, action_id: str, force_host: str | None) -> None:
        """Run the placement here when this host leads, else hand it to the leader (retrying
        while leadership moves). Past the hand-off timeout the leader's recovery takes over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOFF_TIMEOUT_S
        delay = 0.05
        while True:
            if self.coordinator.is_leader:
                await self.place(inst_id, action_id, force_host)
                return
            leader = self.coordinator.leader_id
            if leader is not None and self.peers is not None:
                try:
                    await self.peers.call("", PLACE_PATH, PlaceRequest(instance_id=inst_id, action_id=action_id,
                                                                       force_host=force_host),
                                          PlaceAnswer, timeout=10.0, node_id=leader)
                    return
                except (NotLeader, PeerUnreachable):
                    pass
                except HvdError as exc:
                    await self.fail(inst_id, action_id, exc)
                    return
            if loop.time() + delay > deadline:
                log.warning("could not hand the placement of %s to a leader; the leader's recovery will place it",
                            inst_id)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def accept_placement(self, req: PlaceRequest) -> None:
        """Leader side of ``schedule``: start the placement in the background."""
        if not self.coordinator.is_leader:
            raise NotLeader(f"{self.svc.config.node_id} is not the leader", leader_id=self.coordinator.leader_id)
        self.svc.background(self.place(req.instance_id, req.action_id, req.force_host))

    # --- leader: place, build on the chosen host, retry -------------------------------------

    async def place(self, inst_id: str, action_id: str, force_host: str | None) -> None:
        if inst_id in self._placing:
            return  # a hand-off and the recovery found the same instance
        self._placing.add(inst_id)
        try:
            inst = await self.svc.instance(inst_id)
            if inst["task_state"] != TaskState.SCHEDULING or inst["host"] is not None:
                return  # placed already (or deleted, failed): nothing to do
            req = await self.svc.placement.request_for(inst, force_host=force_host)
            await self.svc.placement.place(req, lambda host: self.build_on(inst_id, action_id, host))
        except (InvalidState, NotFound) as exc:
            # deleted while building: the delete owns the cleanup and the final state
            log.info("build of %s stopped: %s", inst_id, exc.message)
            await self.svc.finish_action(inst_id, action_id, "create", f"build aborted: {exc.message}")
        except Exception as exc:
            await self.fail(inst_id, action_id, exc)
        finally:
            self._placing.discard(inst_id)

    async def fail(self, inst_id: str, action_id: str, exc: BaseException) -> None:
        """The create failed for good: ERROR with the reason, claim released, action finished."""
        message = exc.message if isinstance(exc, HvdError) else f"unexpected error: {exc!r}"
        log.warning("build of %s failed: %s", inst_id, message)
        with contextlib.suppress(InvalidState, NotFound):  # a delete took over
            await self.svc.update(inst_id, expect_task_state=list(BUILD_TASKS), vm_state=VmState.ERROR,
                                  task_state=None, host=None,
                                  fault={"code": getattr(exc, "status", 500), "message": message,
                                         "created": now_iso()})
            await self.svc.placement.release(inst_id)
        await self.svc.finish_action(inst_id, action_id, "create", message)

    async def build_on(self, inst_id: str, action_id: str, host: str) -> None:
        """Record ``host`` on the instance and have it build there (placement's build step)."""
        await self.svc.update(inst_id, expect_task_state=list(BUILD_TASKS), task_state=TaskState.SCHEDULING,
                              host=host)
        if host == self.host:
            await self.build_here(inst_id, action_id)
            return
        if self.peers is None:
            raise ServiceUnavailable(f"host {host} is remote and this host has no cluster key to call it")
        call = BuildRequest(instance_id=inst_id, action_id=action_id, term=int(self.coordinator.term),
                            leader=self.svc.config.node_id)
        try:
            await self.peers.call(host, BUILD_PATH, call, BuildAnswer, timeout=self.build_timeout_s)
        except PeerUnreachable:
            if await self._host_took_it(inst_id, host):
                return  # the host's own build decides the outcome (and reports it)
            raise

    async def _host_took_it(self, inst_id: str, host: str) -> bool:
        """After a lost build call: take the instance back from ``host`` unless it started the
        build. True when the host started it (its outcome is final: no second build)."""
        try:
            await self.svc.update(inst_id, expect_task_state=[TaskState.SCHEDULING], expect_host=[host], host=None)
            return False
        except InvalidState:
            pass
        row = await self.svc.instance(inst_id)
        if row["host"] != host:
            return False
        log.info("build call to %s was lost, but %s is building %s: its outcome stands", host, host, inst_id)
        return True

    # --- the chosen host --------------------------------------------------------------------

    async def accept_build(self, req: BuildRequest) -> BuildAnswer:
        """Host side of ``build_on``: refuse a deposed leader, then build (once) and report."""
        term = int(self.coordinator.term)
        if req.term < term:
            raise Conflict(f"build request from {req.leader} carries term {req.term}; the current term is {term}")
        await self.build_here(req.instance_id, req.action_id)
        return BuildAnswer(host=self.host)

    async def build_here(self, inst_id: str, action_id: str) -> None:
        """Build the instance placed on this host; concurrent callers share one build."""
        task = self._building.get(inst_id)
        if task is None:
            task = asyncio.ensure_future(self._build(inst_id, action_id))
            self._building[inst_id] = task
            task.add_done_callback(lambda _t: self._building.pop(inst_id, None))
        await asyncio.shield(task)

    async def _build(self, inst_id: str, action_id: str) -> None:
        inst = await self.svc.instance(inst_id)
        if inst["host"] != self.host:
            raise InvalidState(f"Instance {inst_id} is placed on host {inst['host']}, not on {self.host}")
        if inst["task_state"] is None and inst["vm_state"] == VmState.ACTIVE:
            return  # built already (a repeated call)
        try:
            await self.svc.manager.build(inst)
        except (InvalidState, NotFound):
            raise
        except Exception as exc:
            # this host removed what it made: the leader may place the instance elsewhere
            with contextlib.suppress(HvdError):
                await self.svc.update(inst_id, expect_task_state=list(BUILD_TASKS), expect_host=[self.host],
                                      task_state=TaskState.SCHEDULING)
            if isinstance(exc, HvdError):
                raise
            # typed, so it crosses to the leader like any build failure (and placement retries)
            raise DriverError(f"build failed on host {self.host}: {type(exc).__name__}: {exc}") from exc
        await self.svc.update(inst_id, expect_task_state=[TaskState.SPAWNING], vm_state=VmState.ACTIVE,
                              task_state=None, power_state=PowerState.RUNNING, launched_at=now_iso(), fault=None)
        await self.svc.finish_action(inst_id, action_id, "create")

    async def unshelve_on(self, host: str, inst_id: str, image_id: str) -> None:
        """Have ``host`` boot the shelved instance (placement's build step of an unshelve)."""
        if self.peers is None:
            raise ServiceUnavailable(f"host {host} is remote and this host has no cluster key to call it")
        await self.peers.call(host, UNSHELVE_PATH, UnshelveRequest(instance_id=inst_id, image_id=image_id),
                              BuildAnswer, timeout=self.build_timeout_s)

    async def accept_unshelve(self, req: UnshelveRequest) -> BuildAnswer:
        inst = await self.svc.instance(req.instance_id)
        if inst["host"] != self.host or inst["task_state"] != TaskState.UNSHELVING:
            raise InvalidState(f"Instance {req.instance_id} is not being unshelved onto {self.host}")
        await self.svc.manager.unshelve(inst, req.image_id)
        return BuildAnswer(host=self.host)

    # --- recovery (periodic, every host) ----------------------------------------------------

    async def recover(self) -> None:
        """Finish what lost calls left: on this host, build instances claimed for it whose call
        never came; on the leader, place instances whose placement was interrupted."""
        rows = await self.svc.catalog.read(
            fetch_all, "SELECT id, host, updated_at FROM instances WHERE deleted_at IS NULL AND vm_state=?"
                       " AND task_state=?", (VmState.BUILDING.value, TaskState.SCHEDULING.value))
        for row in rows:
            if seconds_since(row["updated_at"]) < RECOVER_GRACE_S:
                continue
            inst_id = row["id"]
            action_id = await self.svc.catalog.read(_open_create_action, inst_id) or ""
            if row["host"] == self.host and inst_id not in self._building:
                log.info("building %s: it was placed on this host but its build call never came", inst_id)
                self.svc.background(self._recovered_build(inst_id, action_id))
            elif row["host"] is None and self.coordinator.is_leader and inst_id not in self._placing:
                log.info("placing %s: its placement was interrupted", inst_id)
                self.svc.background(self.place(inst_id, action_id, None))

    async def _recovered_build(self, inst_id: str, action_id: str) -> None:
        try:
            await self.build_here(inst_id, action_id)
        except (InvalidState, NotFound):
            pass  # deleted or re-placed meanwhile
        except Exception as exc:
            await self.fail(inst_id, action_id, exc)
