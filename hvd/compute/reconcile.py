"""Hypervisor truth → catalog. The only writer of observed state (power_state), and crash repair.

At start-up: every instance of this host left with a task_state is finished or rolled back
(per lifecycle.rollback_of), and domains, instance dirs and claims the catalog does not know
are removed. Then periodically, and on hypervisor events, power_state follows the hypervisor
without fighting an operation in flight (instances with a task_state or an operation lock are
skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from hvd.catalog.cmd_compute import ImageSetStatus, InstanceUpdate
from hvd.catalog.cmd_hosts import ReleaseClaim
from hvd.catalog.sql import fetch_all
from hvd.compute import lifecycle
from hvd.compute.builds import BUILD_TASKS
from hvd.compute.lifecycle import PowerState, RepairKind, TaskState, VmState
from hvd.compute.manager import RESIZE_SUFFIX
from hvd.compute.service import ComputeService
from hvd.errors import HvdError, NotFound
from hvd.health import OK, State, Status
from hvd.identity.service import now_iso
from hvd.iofaults import backoff_s, describe
from hvd.storage.image_cache import BASE_DIR_NAME

log = logging.getLogger(__name__)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, HvdError) else describe(exc)


def instances_of_host(conn: sqlite3.Connection, host: str) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT * FROM instances WHERE host=? AND deleted_at IS NULL", (host,))


def bases_in_use(conn: sqlite3.Connection, host: str) -> set[str]:
    """Images whose cached base ``host`` must keep: its instances' (and rescue images'), and those
    of instances that left it in a cold move not yet confirmed (their kept copy on this host is an
    overlay on the base, which a revert boots again)."""
    rows = fetch_all(conn, "SELECT image_id, extra FROM instances WHERE deleted_at IS NULL AND (host=?"
                           " OR (vm_state=? AND json_extract(extra, '$.old_host')=?))",
                     (host, VmState.RESIZED.value, host))
    return {r["image_id"] for r in rows if r["image_id"]} | {
        r["extra"]["rescue_image_id"] for r in rows if r["extra"].get("rescue_image_id")}


def hostless_busy(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Instances with a task_state but no host yet (a crash during scheduling)."""
    return fetch_all(conn, "SELECT * FROM instances WHERE host IS NULL AND deleted_at IS NULL"
                           " AND task_state IS NOT NULL")


def incoming_migrations(conn: sqlite3.Connection, host: str) -> list[str]:
    """Instances being live-migrated to ``host`` (their source names it in extra.migration)."""
    return [r["id"] for r in fetch_all(conn, "SELECT id, extra FROM instances WHERE task_state='migrating'"
                                             " AND deleted_at IS NULL")
            if (r["extra"].get("migration") or {}).get("dest") == host]


def moved_from(conn: sqlite3.Connection, host: str) -> list[str]:
    """Instances resized or cold-migrated away from ``host`` and not confirmed yet (its copy stays)."""
    return [r["id"] for r in fetch_all(conn, "SELECT id, extra FROM instances WHERE vm_state='resized'"
                                             " AND deleted_at IS NULL")
            if r["extra"].get("old_host") == host]


def known_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM instances WHERE deleted_at IS NULL")}


def stray_claims(conn: sqlite3.Connection, host: str) -> list[str]:
    """Claims on `host` whose instance is gone, elsewhere, or holds no resources (shelved)."""
    rows = conn.execute(
        "SELECT c.instance_id FROM claims c LEFT JOIN instances i ON i.id=c.instance_id WHERE c.host=? AND"
        " (i.id IS NULL OR i.deleted_at IS NOT NULL OR i.vm_state='shelved_offloaded'"
        "  OR (i.host IS NULL AND i.task_state IS NULL))",
        (host,),
    ).fetchall()
    return sorted({r[0] for r in rows})


def pending_images(conn: sqlite3.Connection, instance_id: str) -> list[str]:
    return [
        r["id"]
        for r in fetch_all(conn, "SELECT id, properties FROM images WHERE status IN ('queued', 'saving')")
        if r["properties"].get("instance_uuid") == instance_id
    ]


class Reconciler:
    """Repairs after a crash and keeps power_state in line with the hypervisor."""

    def __init__(self, service: ComputeService) -> None:
        self.service = service
        self.manager = service.manager
        self.catalog = service.catalog
        self.driver = service.manager.driver
        self.host = service.host
        self.status: Status = OK  # of the periodic power sync (for /healthz)

    async def startup(self) -> None:
        """Repair interrupted operations, then remove orphans, then sync power states."""
        for inst in await self.catalog.read(hostless_busy):
            if inst["task_state"] != TaskState.SCHEDULING:  # a placement not done: the leader's recovery
                await self._repair(inst)
        for inst in await self.catalog.read(instances_of_host, self.host):
            # scheduling here = claimed for this host, build not started: the build recovery builds it
            if inst["task_state"] not in (None, TaskState.SCHEDULING):
                await self._repair(inst)
        await self.service.volumes.repair()  # attachments a crash left half-way (the domain is the truth)
        await self.remove_orphans()
        await self.sync_power_states()

    # --- crash repair -----------------------------------------------------------------------

    async def _repair(self, inst: dict[str, Any]) -> None:
        task = TaskState(inst["task_state"])
        vm_state = VmState(inst["vm_state"])
        repair = lifecycle.rollback_of(task, vm_state)
        log.warning("repairing instance %s found %s/%s: %s", inst["id"], vm_state, task, repair.reason)
        try:
            await self._apply_repair(inst, task, vm_state, repair.kind)
        except HvdError as exc:
            log.error("repair of %s failed (%s); marking it error", inst["id"], exc.message)
            await self._set(inst, vm_state=VmState.ERROR, fault=self._fault(f"crash repair failed: {exc.message}"))

    def _fault(self, message: str) -> dict[str, Any]:
        return {"code": 500, "message": message, "created": now_iso()}

    async def _set(self, inst: dict[str, Any], **fields: Any) -> None:
        await self.catalog.propose(InstanceUpdate(id=inst["id"], task_state=None, updated_at=now_iso(), **fields))

    async def _power(self, inst_id: str) -> PowerState:
        try:
            return await self.driver.get_power_state(inst_id)
        except NotFound:
            return PowerState.NOSTATE

    async def _apply_repair(self, inst: dict[str, Any], task: TaskState, vm_state: VmState,
                            kind: RepairKind) -> None:
        m = self.manager
        if task is TaskState.MIGRATING:  # the guest may be on either host: ask them
            await self.service.migrations.recover(inst)
            return
        if kind is RepairKind.FINISH and task is TaskState.DELETING:
            await self.service.finish_delete(inst)
            return
        if kind is RepairKind.SET_ERROR:
            if task in BUILD_TASKS:
                # a half-built instance holds nothing worth keeping: clean the host, free the claim
                if inst["host"] is not None:
                    await m.cleanup_host(inst)
                await self.catalog.propose(ReleaseClaim(instance_id=inst["id"]))
                await self._set(inst, vm_state=VmState.ERROR, host=None, power_state=int(PowerState.NOSTATE),
                                fault=self._fault("the build was interrupted by a restart of the compute host"))
            else:
                await self._set(inst, vm_state=VmState.ERROR, power_state=int(await self._power(inst["id"])),
                                fault=self._fault(f"{task.value} was interrupted by a restart"))
            return
        if kind is RepairKind.RETRY:
            if task is TaskState.UNRESCUING:
                await m.unrescue(inst)
            else:
                await m.reboot(inst, hard=True)
            await self._set(inst, vm_state=VmState.ACTIVE, power_state=int(PowerState.RUNNING))
            return
        if kind is RepairKind.REVERT_RESIZE or task is TaskState.RESIZE_REVERTING:
            old = inst["extra"].get("old_flavor") or inst["flavor"]
            previous = VmState(inst["extra"].get("old_vm_state") or "active")
            await self.service.volumes.connect_here(inst)  # a cross-host move's destination may have reconnected them
            power = await m.revert_resize(inst, old, previous == VmState.ACTIVE)
            with contextlib.suppress(NotFound):
                await self.catalog.propose(ReleaseClaim(instance_id=inst["id"], kind="resize"))
            await self._set(inst, vm_state=previous, power_state=int(power), flavor=old, flavor_id=old["id"],
                            extra={"old_flavor": None, "old_vm_state": None})
            return
        if task is TaskState.RESIZE_CONFIRMING:
            await m.confirm_resize(inst)
            from hvd.catalog.cmd_hosts import ClaimPromote

            with contextlib.suppress(NotFound):
                await self.catalog.propose(ClaimPromote(instance_id=inst["id"]))
            previous = VmState(inst["extra"].get("old_vm_state") or "active")
            await self._set(inst, vm_state=previous, extra={"old_flavor": None, "old_vm_state": None})
            return
        if task is TaskState.SHELVING_OFFLOADING:
            await self.service.offload(inst)
            await self._set(inst, vm_state=VmState.SHELVED_OFFLOADED, power_state=int(PowerState.SHUTDOWN), host=None)
            return
        if task is TaskState.UNSHELVING:
            if inst["host"] is not None:
                await m.cleanup_host(inst)
            await self.service.volumes.offload(inst)  # what the interrupted unshelve connected (exports)
            await self.catalog.propose(ReleaseClaim(instance_id=inst["id"]))
            await self._set(inst, vm_state=VmState.SHELVED_OFFLOADED, host=None)
            return
        # snapshot/shelve aborted, resize_prep, power tasks: kill half images, trust the hypervisor
        for image_id in await self.catalog.read(pending_images, inst["id"]):
            await asyncio.to_thread(self.manager.store.delete, image_id)  # a big file: off the loop
            await self.catalog.propose(
                ImageSetStatus(id=image_id, status="killed", expect=["queued", "saving"], updated_at=now_iso())
            )
        power = await self._power(inst["id"])
        if task in (TaskState.IMAGE_SNAPSHOT, TaskState.IMAGE_PENDING_UPLOAD, TaskState.IMAGE_UPLOADING) \
                and vm_state == VmState.ACTIVE and power == PowerState.PAUSED:
            await self.driver.unpause(inst["id"])  # the snapshot paused it
            power = PowerState.RUNNING
        await self._set(inst, vm_state=lifecycle.finish_of(task, vm_state, power), power_state=int(power))

    # --- orphans ----------------------------------------------------------------------------

    async def remove_orphans(self) -> None:
        """Remove domains, instance dirs and claims of this host that the catalog does not know."""
        known = await self.catalog.read(known_ids)
        # an instance arriving by live migration is ours too: its source finishes or undoes the move
        mine = {i["id"] for i in await self.catalog.read(instances_of_host, self.host)} | set(
            await self.catalog.read(incoming_migrations, self.host))
        root = Path(self.service.config.host.instances_path)
        sent = set(await self.catalog.read(moved_from, self.host))
        for uuid in await self.driver.list_domains():
            if uuid in mine:
                continue
            if not (root / uuid).exists() and not (root / (uuid + RESIZE_SUFFIX)).exists():
                # not built under our instances_path: another hvd (or a person) shares this libvirtd
                log.info("leaving domain of instance %s alone: its files are not under %s", uuid, root)
                continue
            log.warning("removing orphan domain of instance %s", uuid)
            await self.driver.destroy(uuid, keep_disks=uuid in known)
        loop = asyncio.get_running_loop()
        for entry in await loop.run_in_executor(None, lambda: list(root.iterdir()) if root.exists() else []):
            name = entry.name
            if not entry.is_dir() or name == BASE_DIR_NAME or name.startswith("."):
                continue
            owner = name.removesuffix(RESIZE_SUFFIX)
            resized = name.endswith(RESIZE_SUFFIX)
            if owner in mine and not resized:
                continue
            if resized and (owner in mine or owner in sent):
                continue  # kept until the resize (here, or to another host) is confirmed or reverted
            if len(owner) != 36 or owner.count("-") != 4:
                continue  # not an instance dir of ours
            log.warning("removing orphan instance dir %s", entry)
            await loop.run_in_executor(None, lambda p=entry: shutil.rmtree(p, ignore_errors=True))  # type: ignore[misc]
        for instance_id in await self.catalog.read(stray_claims, self.host):
            log.warning("releasing stray claim of %s", instance_id)
            await self.catalog.propose(ReleaseClaim(instance_id=instance_id))

    # --- power state ------------------------------------------------------------------------

    async def sync_power_states(self) -> None:
        """Nova's _sync_power_states: record what the hypervisor shows; a guest that powered
        itself off is stopped; a domain that vanished makes the instance error."""
        domains = await self.driver.list_domains()
        for inst in await self.catalog.read(instances_of_host, self.host):
            await self.sync_one(inst, domains.get(inst["id"]))

    async def sync_one(self, inst: dict[str, Any], hint: PowerState | None) -> None:
        """Bring one instance's power_state (and vm_state, Nova-style) in line with the domain.

        `hint` is what a listing or an event said; when it disagrees with the catalog the
        domain is asked again and the instance re-read, so an operation that finished in
        between is not mistaken for drift.
        """
        if self._busy(inst):
            return
        if hint is not None and int(hint) == inst["power_state"]:
            return
        try:
            power: PowerState | None = await self.driver.get_power_state(inst["id"])
        except NotFound:
            power = None
        inst = await self.service.instance(inst["id"])
        if self._busy(inst) or inst["deleted_at"] is not None or inst["host"] != self.host:
            return  # busy, gone, or moved to another host meanwhile (its domain left with it)
        vm_state = VmState(inst["vm_state"])
        if vm_state in (VmState.SHELVED_OFFLOADED, VmState.ERROR, VmState.DELETED, VmState.BUILDING):
            return
        if power is None:
            with contextlib.suppress(HvdError):
                await self.catalog.propose(InstanceUpdate(
                    id=inst["id"], expect_task_state=[None], vm_state=VmState.ERROR,
                    power_state=int(PowerState.NOSTATE), updated_at=now_iso(),
                    fault=self._fault("the domain disappeared from the hypervisor")))
            return
        changes: dict[str, Any] = {}
        if int(power) != inst["power_state"]:
            changes["power_state"] = int(power)
        if vm_state == VmState.ACTIVE and power in (PowerState.SHUTDOWN, PowerState.CRASHED):
            changes["vm_state"] = VmState.STOPPED  # the guest shut itself down
        elif vm_state == VmState.STOPPED and power == PowerState.RUNNING:
            changes["vm_state"] = VmState.ACTIVE  # started behind our back
        if changes:
            log.info("power sync of %s: %s", inst["id"], changes)
            with contextlib.suppress(HvdError):
                await self.catalog.propose(
                    InstanceUpdate(id=inst["id"], expect_task_state=[None], updated_at=now_iso(), **changes)
                )

    def _busy(self, inst: dict[str, Any]) -> bool:
        """An operation owns the instance now (task_state set or operation lock held)."""
        return inst["task_state"] is not None or self.service.locks.holder(inst["id"]) is not None

    async def on_event(self, uuid: str, power: PowerState) -> None:
        row = await self.service.catalog.read(
            lambda c: c.execute("SELECT id FROM instances WHERE id=? AND host=?", (uuid, self.host)).fetchone()
        )
        if row is None:
            return
        # events arrive mid-operation too; let it settle, then compare with current truth
        await asyncio.sleep(0.5)
        inst = await self.service.instance(uuid)
        if inst["deleted_at"] is None:
            await self.sync_one(inst, None)

    async def run(self, interval: float) -> None:
        """The periodic sync plus the driver's event stream, until cancelled."""

        async def events() -> None:
            async for uuid, power in self.driver.events():
                try:
                    await self.on_event(uuid, power)
                except Exception as exc:  # one event's failure must not end the event stream
                    log.warning("event handling for %s failed: %s", uuid, _reason(exc))

        watcher = asyncio.create_task(events())
        failures = 0
        try:
            while True:
                # after failures, back off (up to the interval) so a broken hypervisor is not hammered
                await asyncio.sleep(interval + (min(backoff_s(failures) * 20, interval) if failures else 0))
                if watcher.done():  # the hypervisor's event stream ended (a lost connection): follow it again
                    ended = None if watcher.cancelled() else watcher.exception()
                    log.warning("the hypervisor event stream ended (%s); following it again",
                                describe(ended) if ended is not None else "closed")
                    watcher = asyncio.create_task(events())
                try:
                    await self.sync_power_states()
                    await self.auto_confirm_resizes()
                    await self.clean_image_cache()
                except Exception as exc:  # any failure (a bug, libvirt, the disk): log, report, go on
                    failures += 1
                    log.log(logging.ERROR if failures == 1 else logging.WARNING,
                            "power sync failed (%d in a row): %s", failures, _reason(exc),
                            exc_info=not isinstance(exc, HvdError))
                    self.status = Status(State.DEGRADED, f"power sync failing ({failures} in a row): {_reason(exc)}")
                else:
                    failures = 0
                    self.status = OK
        finally:
            watcher.cancel()

    async def clean_image_cache(self) -> None:
        """Remove cached bases no instance of this host uses and nobody touched for a while."""
        max_age = self.service.config.compute.image_cache_max_age_s
        if not max_age:
            return
        in_use = await self.catalog.read(bases_in_use, self.host)
        try:
            removed = await asyncio.get_running_loop().run_in_executor(
                None, self.manager.cache.remove_unused, in_use, float(max_age)
            )
        except OSError as exc:  # a disk problem must not end the power-sync loop that calls this
            log.warning("image cache cleanup failed: %s", exc)
            return
        for path in removed:
            log.info("removed unused cached image %s", path.name)

    async def auto_confirm_resizes(self) -> None:
        window = self.service.config.compute.resize_confirm_window_s
        if not window:
            return
        from datetime import UTC, datetime, timedelta

        cutoff = (datetime.now(UTC) - timedelta(seconds=window)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for inst in await self.catalog.read(instances_of_host, self.host):
            resized_at = inst["extra"].get("resized_at") or ""
            if inst["vm_state"] == VmState.RESIZED and inst["task_state"] is None and resized_at < cutoff:
                log.info("auto-confirming the resize of %s", inst["id"])
                with contextlib.suppress(HvdError):
                    from hvd.compute.lifecycle import Op

                    await self.service.begin(None, inst, Op.CONFIRM_RESIZE, self.service.confirm_resize())
