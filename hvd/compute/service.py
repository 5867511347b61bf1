"""Compute as the API sees it: check → operation lock → task_state CAS → run in the background.

Every operation records an instance action (request id, start/finish, error) and publishes
events. Checks that a user must hear about (state, lock, policy, bad references) happen before
the 202, so they come back as 4xx and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from hvd.api.context import RequestContext
from hvd.catalog.cmd_compute import (
    BOOT_VOLUME_KEY,
    ActionFinish,
    ActionStart,
    ImageDelete,
    InstanceCreate,
    InstanceDestroy,
    InstanceLock,
    InstanceUpdate,
)
from hvd.catalog.cmd_hosts import ClaimPromote, ReleaseClaim, fenced_hosts
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_one
from hvd.compute import lifecycle
from hvd.compute.builds import ClusterBuilds
from hvd.compute.coldmove import ColdMoves
from hvd.compute.drain import Drains
from hvd.compute.lifecycle import Op, PowerState, TaskState, VmState
from hvd.compute.manager import NEW_GUEST, ComputeManager
from hvd.compute.migration import LiveMigrations
from hvd.compute.oplock import OperationLocks
from hvd.compute.volumes import ComputeVolumes
from hvd.config import Config
from hvd.errors import (
    Conflict,
    HvdError,
    InstanceLocked,
    InvalidState,
    NotFound,
    NoValidHost,
    Timeout,
)
from hvd.events import EventBus
from hvd.faults import checkpoint
from hvd.identity.policy import Policy
from hvd.identity.service import now_iso
from hvd.log import request_id_var
from hvd.scheduler.placement import Placement

log = logging.getLogger(__name__)

BUILD_CALL_TIMEOUT_S = 900.0  # a build call waits for the whole build (image fetch included)
RESULT_STATE: dict[Op, tuple[VmState, PowerState]] = {
    Op.STOP: (VmState.STOPPED, PowerState.SHUTDOWN),
    Op.START: (VmState.ACTIVE, PowerState.RUNNING),
    Op.REBOOT: (VmState.ACTIVE, PowerState.RUNNING),
    Op.REBOOT_HARD: (VmState.ACTIVE, PowerState.RUNNING),
    Op.PAUSE: (VmState.PAUSED, PowerState.PAUSED),
    Op.UNPAUSE: (VmState.ACTIVE, PowerState.RUNNING),
    Op.SUSPEND: (VmState.SUSPENDED, PowerState.SHUTDOWN),
    Op.RESUME: (VmState.ACTIVE, PowerState.RUNNING),
    Op.RESCUE: (VmState.RESCUED, PowerState.RUNNING),
    Op.UNRESCUE: (VmState.ACTIVE, PowerState.RUNNING),
    Op.REBUILD: (VmState.ACTIVE, PowerState.RUNNING),
}
# after a failure of these, the domain or disk may be half-made: the instance goes to ERROR
ERROR_ON_FAILURE = {Op.REBUILD, Op.RESCUE, Op.UNRESCUE, Op.RESIZE, Op.REVERT_RESIZE, Op.UNSHELVE}


def evacuated_extra(inst: dict[str, Any], source: str) -> dict[str, Any]:
    """What an evacuation merges into the server's extra: where it came from; and no password when
    it is rebuilt from its image (the new guest posts its own), while a server booted from a volume
    keeps its disk, its guest and so its password."""
    return {"evacuated_from": source, **({} if inst["extra"].get(BOOT_VOLUME_KEY) else NEW_GUEST)}


def get_instance(conn: Any, instance_id: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM instances WHERE id=?", (instance_id,))


class ComputeService:
    """Server operations for the API (this host is the owner of every instance it builds)."""

    def __init__(self, config: Config, catalog: Catalog, policy: Policy, manager: ComputeManager,
                 placement: Placement, events: EventBus) -> None:
        self.config = config
        self.catalog = catalog
        self.policy = policy
        self.manager = manager
        self.placement = placement
        self.events = events
        self.locks = OperationLocks()
        self.host = config.host_name
        self._tasks: set[asyncio.Task[None]] = set()
        self._settled = asyncio.Condition()  # notified whenever an operation finishes
        self._finished = 0  # how many operations finished: a waiter that saw N misses no wake-up
        self.builds = ClusterBuilds(self, None, BUILD_CALL_TIMEOUT_S)  # peers set by the daemon in a cluster
        self.migrations = LiveMigrations(self)
        self.moves = ColdMoves(self)
        self.drains = Drains(self)
        self.volumes = ComputeVolumes(self)
        manager.volumes = self.volumes

    # --- plumbing ---------------------------------------------------------------------------

    def background(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a tracked background task (``drain`` waits for it)."""
        self._background(coro)

    def _background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for background operations (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def instance(self, instance_id: str) -> dict[str, Any]:
        row = await self.catalog.read(get_instance, instance_id)
        if row is None:
            raise NotFound(f"Instance {instance_id} could not be found")
        return row

    async def update(self, instance_id: str, **fields: Any) -> None:
        await self.catalog.propose(InstanceUpdate(id=instance_id, updated_at=now_iso(), **fields))

    async def start_action(self, ctx: RequestContext | None, inst: dict[str, Any], action: str) -> str:
        action_id = str(uuid.uuid4())
        await self.catalog.propose(
            ActionStart(id=action_id, instance_id=inst["id"], action=action, request_id=request_id_var.get(),
                        user_id=ctx.user_id if ctx else "hvd", project_id=ctx.project_id if ctx else inst["project_id"],
                        start_time=now_iso())
        )
        self.events.publish("instance.action.start", instance_id=inst["id"], project_id=inst["project_id"],
                            action=action,
                            request_id=request_id_var.get())
        return action_id

    async def finish_action(self, inst_id: str, action_id: str, action: str, error: str = "",
                            project_id: str | None = None) -> None:
        await self.catalog.propose(
            ActionFinish(id=action_id, finish_time=now_iso(), result="error" if error else "success", message=error)
        )
        if project_id is None:
            row = await self.catalog.read(get_instance, inst_id)
            project_id = row["project_id"] if row else None
        async with self._settled:
            self._finished += 1
            self._settled.notify_all()
        self.events.publish("instance.action.finish", instance_id=inst_id, project_id=project_id, action=action,
                            result="error" if error else "success", message=error)

    def check_lock(self, ctx: RequestContext, inst: dict[str, Any]) -> None:
        if inst["locked"] and not self.policy.allowed(ctx.roles, "compute:ignore_lock"):
            raise InstanceLocked(
                f"Instance {inst['id']} is locked (by {inst['locked_by'] or 'owner'}); unlock it first"
            )

    # --- create -----------------------------------------------------------------------------

    async def create(self, ctx: RequestContext, records: list[InstanceCreate], force_host: str | None) -> list[str]:
        """Record the servers (quota checked atomically per server) and start their builds."""
        created: list[str] = []
        for cmd in records:
            await self.catalog.propose(cmd)
            inst = await self.instance(cmd.id)
            action_id = await self.start_action(ctx, inst, "create")
            self.events.publish("instance.create", instance_id=cmd.id, project_id=cmd.project_id)
            self._background(self.builds.schedule(cmd.id, action_id, force_host))
            created.append(cmd.id)
        return created

    # --- generic operations -----------------------------------------------------------------

    async def lock(self, ctx: RequestContext, inst: dict[str, Any], locked: bool) -> None:
        if not locked and inst["locked"] and inst["locked_by"] == "admin":
            self.policy.enforce(ctx.roles, "compute:unlock_override")
        self.policy.enforce(ctx.roles, "compute:unlock" if not locked else "compute:action")
        await self.catalog.propose(
            InstanceLock(id=inst["id"], locked=locked, locked_by="admin" if ctx.is_admin else "owner",
                         updated_at=now_iso())
        )
        action_id = await self.start_action(ctx, inst, "lock" if locked else "unlock")
        await self.finish_action(inst["id"], action_id, "lock" if locked else "unlock")

    async def begin(self, ctx: RequestContext | None, inst: dict[str, Any], op: Op,
                    run: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        """Check, lock, CAS the first task_state, then run `run(inst)` in the background; its
        result are the final fields (vm_state, power_state, ...). `ctx` None = hvd itself
        (e.g. the automatic resize confirmation), which the instance lock does not stop."""
        if ctx is not None:
            self.check_lock(ctx, inst)
        lifecycle.check_allowed(op, VmState(inst["vm_state"]),
                                TaskState(inst["task_state"]) if inst["task_state"] else None, inst["id"])
        self.locks.acquire(inst["id"], op.value)
        try:
            await self.update(inst["id"], expect_task_state=[None], expect_vm_state=[inst["vm_state"]],
                              task_state=lifecycle.next_task(op, None))
            action_id = await self.start_action(ctx, inst, op.value)
        except BaseException:
            self.locks.release(inst["id"])
            raise
        self._background(self._run(op, inst, run, action_id))

    async def _run(self, op: Op, inst: dict[str, Any], run: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                   action_id: str) -> None:
        try:
            fields = await run(inst)
            await self.update(inst["id"], task_state=None, fault=None, **fields)
            await self.finish_action(inst["id"], action_id, op.value)
        except Exception as exc:
            message = exc.message if isinstance(exc, HvdError) else f"unexpected error: {exc!r}"
            log.warning("%s of %s failed: %s", op.value, inst["id"], message)
            # no host for a resize/migration: nothing was touched, the server stays as it was (as Nova)
            fields = {"vm_state": VmState.ERROR} if op in ERROR_ON_FAILURE and not isinstance(exc, NoValidHost) else {}
            try:
                power = await self.manager.driver.get_power_state(inst["id"])
            except HvdError:
                power = PowerState.NOSTATE
            with contextlib.suppress(InvalidState, NotFound):  # deleted meanwhile
                await self.update(inst["id"], task_state=None, power_state=int(power),
                                  fault={"code": getattr(exc, "status", 500), "message": message,
                                         "created": now_iso()}, **fields)
            await self.finish_action(inst["id"], action_id, op.value, message)
        finally:
            self.locks.release(inst["id"])

    def simple(self, op: Op) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        """The runner of an operation whose whole job is one manager call."""
        vm_state, _ = RESULT_STATE[op]
        calls: dict[Op, Callable[[dict[str, Any]], Awaitable[PowerState]]] = {
            Op.STOP: self.manager.stop,
            Op.START: self.manager.start,
            Op.REBOOT: lambda i: self.manager.reboot(i, hard=False),
            Op.REBOOT_HARD: lambda i: self.manager.reboot(i, hard=True),
            Op.PAUSE: self.manager.pause,
            Op.UNPAUSE: self.manager.unpause,
            Op.SUSPEND: self.manager.suspend,
            Op.RESUME: self.manager.resume,
            Op.UNRESCUE: self.manager.unrescue,
        }

        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            power = await calls[op](inst)
            fields: dict[str, Any] = {"vm_state": vm_state, "power_state": int(power)}
            if op == Op.UNRESCUE:
                fields["extra"] = {"rescue_image_id": None}  # its base may go from the cache now
            return fields

        return run

    # --- operations with more than one step -------------------------------------------------

    def rescue(self, image_id: str | None) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            power = await self.manager.rescue(inst, image_id)
            # recorded, so the image cache keeps the rescue disk's base while the server is rescued
            return {"vm_state": VmState.RESCUED, "power_state": int(power),
                    "extra": {"rescue_image_id": image_id or inst["image_id"]}}

        return run

    def rebuild(self, image_id: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            await self.manager.set_task(inst["id"], TaskState.REBUILDING, TaskState.REBUILD_SPAWNING)
            power = await self.manager.rebuild(inst, image_id)
            return {"vm_state": VmState.ACTIVE, "power_state": int(power), "image_id": image_id}

        return run

    def snapshot(self, image_id: str, name: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            tasks = (TaskState.IMAGE_SNAPSHOT, TaskState.IMAGE_PENDING_UPLOAD, TaskState.IMAGE_UPLOADING)
            await self.manager.snapshot_to_image(
                inst, image_id, name, tasks,
                {"image_type": "snapshot", "instance_uuid": inst["id"], "base_image_ref": inst["image_id"]},
            )
            return {}

        return run

    def resize(self, flavor: dict[str, Any], *, migrate: bool = False,
               host: str | None = None) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        """Resize to ``flavor`` (on this host or another, as placement decides), or with ``migrate``
        a cold migration: the same flavor on another host (``host`` forces one)."""
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            was_running = int(inst["power_state"]) == PowerState.RUNNING
            req = await self.placement.request_for(inst, flavor=flavor, force_host=host,
                                                   ignore_hosts=frozenset({self.host}) if migrate else frozenset())

            async def build_on(dest: str) -> None:
                if dest != self.host:
                    await self.moves.send(inst, dest, flavor, was_running)
                    return
                await self.manager.set_task(inst["id"], TaskState.RESIZE_PREP, TaskState.RESIZE_MIGRATING)
                await self.manager.set_task(inst["id"], TaskState.RESIZE_MIGRATING, TaskState.RESIZE_MIGRATED)
                await self.manager.set_task(inst["id"], TaskState.RESIZE_MIGRATED, TaskState.RESIZE_FINISH)
                await self.manager.resize_same_host(inst, flavor)
                if not was_running:
                    await self.manager.driver.power_off(inst["id"], 0)

            dest = await self.placement.place(req, build_on, kind="resize")
            return {
                "vm_state": VmState.RESIZED,
                "power_state": int(PowerState.RUNNING if was_running else PowerState.SHUTDOWN),
                "flavor": flavor,
                "flavor_id": flavor["id"],
                "host": dest,
                "extra": {"old_flavor": inst["flavor"], "old_vm_state": inst["vm_state"], "resized_at": now_iso(),
                          "old_host": self.host},
            }

        return run

    def confirm_resize(self) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            await self.manager.confirm_resize(inst)
            try:  # a move from another host: its kept copy goes (its restart repair removes it otherwise)
                await self.moves.confirm_at_source(inst)
            except HvdError as exc:
                log.warning("source of %s could not drop its copy now: %s", inst["id"], exc.message)
            await self.catalog.propose(ClaimPromote(instance_id=inst["id"]))
            previous = VmState(inst["extra"].get("old_vm_state", "active"))
            return {"vm_state": lifecycle.result_of(Op.CONFIRM_RESIZE, VmState.RESIZED, previous),
                    "extra": {"old_flavor": None, "old_vm_state": None, "old_host": None}}

        return run

    def revert_resize(self) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            old_flavor = inst["extra"]["old_flavor"]
            previous = VmState(inst["extra"].get("old_vm_state", "active"))
            source = inst["extra"].get("old_host") or self.host
            if source != self.host:  # it came from another host: it goes back there
                await self.moves.revert_to_source(inst, old_flavor, previous == VmState.ACTIVE)
                power = PowerState.RUNNING if previous == VmState.ACTIVE else PowerState.SHUTDOWN
            else:
                power = await self.manager.revert_resize(inst, old_flavor, previous == VmState.ACTIVE)
            await self.placement.release(inst["id"], "resize")
            return {"vm_state": lifecycle.result_of(Op.REVERT_RESIZE, VmState.RESIZED, previous),
                    "power_state": int(power), "flavor": old_flavor, "flavor_id": old_flavor["id"], "host": source,
                    "extra": {"old_flavor": None, "old_vm_state": None, "old_host": None}}

        return run

    def shelve(self, image_id: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            if int(inst["power_state"]) in (PowerState.PAUSED, PowerState.SUSPENDED):
                await self.manager.driver.destroy(inst["id"], keep_disks=True)
            else:
                await self.manager.driver.power_off(inst["id"], self.config.compute.shutdown_timeout_s)
            await self.manager.snapshot_to_image(
                inst, image_id, f"{inst['name']}-shelved",
                (TaskState.SHELVING, TaskState.SHELVING_IMAGE_UPLOADING),
                {"image_type": "snapshot", "instance_uuid": inst["id"], "shelved": "true"},
            )
            await self.manager.set_task(inst["id"], TaskState.SHELVING_IMAGE_UPLOADING, TaskState.SHELVING_OFFLOADING)
            checkpoint("shelve.offloading")
            await self.offload(inst)
            return {"vm_state": VmState.SHELVED_OFFLOADED, "power_state": int(PowerState.SHUTDOWN), "host": None,
                    "extra": {"shelved_image_id": image_id}}

        return run

    async def offload(self, inst: dict[str, Any]) -> None:
        """Remove the instance from its host and free its resources (shelve's last step); its
        volumes stay attached with no connection (their exports stop) until the unshelve."""
        await self.manager.cleanup_host(inst)
        await self.volumes.offload(inst)
        await self.placement.release(inst["id"])

    def unshelve(self) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            image_id = inst["extra"].get("shelved_image_id")
            if not image_id:
                raise InvalidState(f"instance {inst['id']} has no shelved image")
            req = await self.placement.request_for({**inst, "image_id": image_id})

            async def build_on(host: str) -> None:
                await self.update(inst["id"], host=host)
                if host != self.host:  # the chosen host boots it (fetching the shelved image from a holder)
                    await self.builds.unshelve_on(host, inst["id"], image_id)
                    return
                await self.manager.unshelve({**inst, "host": host}, image_id)

            host = await self.placement.place(req, build_on)
            try:
                await self.catalog.propose(ImageDelete(id=image_id, updated_at=now_iso()))
                await asyncio.to_thread(self.manager.store.delete, image_id)  # a big file: off the loop
            except HvdError as exc:
                log.warning("could not delete shelved image %s: %s", image_id, exc.message)
            return {"vm_state": VmState.ACTIVE, "power_state": int(PowerState.RUNNING), "host": host,
                    "image_id": image_id, "extra": {"shelved_image_id": None}}

        return run

    # --- delete -----------------------------------------------------------------------------

    async def delete(self, ctx: RequestContext, inst: dict[str, Any], run_here: bool = True) -> None:
        """Mark deleting (from any state, also mid-operation) and clean up in the background.

        ``run_here=False`` (the owning host is down) only records the delete: the owner finishes
        it when it returns (its start-up repair finishes every ``deleting`` instance of its own).
        """
        self.policy.enforce(ctx.roles, "compute:delete")
        self.check_lock(ctx, inst)
        if inst["task_state"] == TaskState.DELETING:
            return  # already being deleted: idempotent
        await self.update(inst["id"], task_state=TaskState.DELETING)
        action_id = await self.start_action(ctx, inst, "delete")
        if run_here:
            self._background(self._delete(inst["id"], action_id))

    async def _delete(self, inst_id: str, action_id: str) -> None:
        # wait for a running operation to notice the CAS failure and undo its own work: as long as
        # it takes (every operation ends, each bounded by its own timeouts), so a delete never sticks
        waited = 0
        while (holder := self.locks.holder(inst_id)) is not None:
            if waited and waited % 600 == 0:
                log.warning("delete of %s still waits for its running %s", inst_id, holder)
            await asyncio.sleep(0.1)
            waited += 1
        self.locks.acquire(inst_id, "delete")
        try:
            await self.finish_delete(await self.instance(inst_id))
            await self.finish_action(inst_id, action_id, "delete")
        except Exception as exc:
            message = exc.message if isinstance(exc, HvdError) else repr(exc)
            log.error("delete of %s failed: %s (reconcile retries at restart)", inst_id, message)
            await self.finish_action(inst_id, action_id, "delete", message)
        finally:
            self.locks.release(inst_id)

    async def finish_delete(self, inst: dict[str, Any]) -> None:
        """Remove the instance from this host and the catalog (idempotent; used by reconcile)."""
        await self.manager.cleanup_host(inst)
        checkpoint("delete.cleaned")
        await self.volumes.release_server(inst)  # its attachments go; delete_on_termination volumes too
        if self.manager.network is not None:  # its own ports go, ports the user passed in are unbound
            await self.manager.network.release_instance(inst)
        shelved = inst["extra"].get("shelved_image_id")
        if shelved:
            with contextlib.suppress(NotFound):
                await self.catalog.propose(ImageDelete(id=shelved, updated_at=now_iso()))
            await asyncio.to_thread(self.manager.store.delete, shelved)  # a big file: off the loop
        await self.catalog.propose(InstanceDestroy(id=inst["id"], deleted_at=now_iso()))
        self.events.publish("instance.delete", instance_id=inst["id"], project_id=inst["project_id"])

    # --- waiting ----------------------------------------------------------------------------

    async def wait_stable(self, instance_id: str, timeout: float) -> dict[str, Any]:
        """Return once the instance has no task_state (or is deleted); Timeout after `timeout`.

        Wakes when an operation finishes (and re-checks every 0.5 s for changes made elsewhere).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self._finished
            row = await self.instance(instance_id)
            if row["task_state"] is None or row["deleted_at"] is not None:
                return row
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"instance {instance_id} is still {row['task_state']} after {timeout:.0f} s")
            async with self._settled:
                if self._finished == seen:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._settled.wait(), min(remaining, 0.5))

    # --- evacuation -------------------------------------------------------------------------

    async def evacuate(self, ctx: RequestContext | None, inst: dict[str, Any], host: str | None) -> None:
        """Rebuild a server of a fenced host on another host (from its image, keeping its id, ports
        and addresses): recorded as a new placement, so the leader places it and the chosen host
        builds it like a create. Refused unless the server's host is fenced (one server never runs
        twice). ``ctx`` None = automatic evacuation by the leader."""
        source = inst["host"]
        if ctx is not None:
            self.check_lock(ctx, inst)
        lifecycle.check_allowed(Op.EVACUATE, VmState(inst["vm_state"]),
                                TaskState(inst["task_state"]) if inst["task_state"] else None, inst["id"])
        fenced = await self.catalog.read(fenced_hosts)
        if source is None or source not in fenced:
            state = "up" if source and self.placement.is_up(source) else "down but not fenced yet"
            raise Conflict(f"Cannot evacuate instance {inst['id']}: its host {source} is {state}; only servers of a"
                           " fenced host are rebuilt elsewhere (see [fencing] fence_delay_s)", host=source)
        self.locks.acquire(inst["id"], "evacuate")
        try:
            await self.update(inst["id"], expect_task_state=[None], expect_host=[source], host=None,
                              vm_state=VmState.BUILDING, task_state=TaskState.SCHEDULING,
                              power_state=int(PowerState.NOSTATE), fault=None,
                              extra=evacuated_extra(inst, source))
            with contextlib.suppress(NotFound):  # the fenced host's claim goes: its resources are free
                await self.catalog.propose(ReleaseClaim(instance_id=inst["id"]))
            action_id = await self.start_action(ctx, inst, "evacuate")
        finally:
            self.locks.release(inst["id"])
        self.events.publish("instance.evacuate", instance_id=inst["id"], project_id=inst["project_id"],
                            source=source)
        self._background(self.builds.schedule(inst["id"], action_id, host))

