"""Live migration between hosts: libvirt peer to peer, the destination prepared before the switch.

The source host runs the operation (it owns the instance): placement claims the destination
(a second, "resize" kind claim, so the source keeps its own until the end), the destination
prepares (image base fetched, directory, config drive, disk overlays, ports plugged) and says
whether it sees the source's instances_path (shared storage: no block copy needed), then the
source's hypervisor moves the guest. After the switch-over the destination adopts the domain,
the catalog names the destination, the destination's claim becomes the instance's only claim and
the source removes what is left of the instance. A failure before the switch-over leaves the guest
running on the source, the destination cleaned and its claim released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from hvd.catalog.cmd_hosts import ClaimPromote
from hvd.catalog.sql import fetch_one
from hvd.cluster.peers import PeerCaller
from hvd.compute import lifecycle
from hvd.compute.lifecycle import Op, PowerState, TaskState, VmState
from hvd.compute.progress import ActionReporter, mib
from hvd.drivers.base import MigrationParams, MigrationProgress
from hvd.errors import BadRequest, Conflict, HvdError, NotFound
from hvd.faults import checkpoint
from hvd.identity.service import now_iso

if TYPE_CHECKING:
    from hvd.compute.service import ComputeService

log = logging.getLogger(__name__)

PREPARE_PATH = "/internal/v1/compute/migration/prepare"
FINISH_PATH = "/internal/v1/compute/migration/finish"
ABORT_PATH = "/internal/v1/compute/migration/abort"
PREPARE_TIMEOUT_S = 900.0  # includes fetching the image base from another host
BlockMigration = bool | Literal["auto"]


class MigrationCall(BaseModel):
    """Destination: prepare for, adopt, or forget the incoming instance ``instance_id``."""

    instance_id: str = Field(max_length=64)
    source: str = Field(max_length=255)
    probe: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9._-]*$",
                       description="a file the source made in its instances_path: seen here = shared storage")


class PrepareAnswer(BaseModel):
    shared_storage: bool


class Done(BaseModel):
    ok: bool = True


class LiveMigrations:
    """Both sides of a live migration (this host is the source of some, the destination of others)."""

    def __init__(self, service: ComputeService) -> None:
        self.svc = service
        self.peers: PeerCaller | None = None  # set by the daemon in a cluster
        self.progress: dict[str, MigrationProgress] = {}  # instance -> last reading, while it moves
        self._incoming_shared: dict[str, bool] = {}  # destination: prepared instances -> shared storage?

    @property
    def host(self) -> str:
        return self.svc.host

    # --- source -----------------------------------------------------------------------------

    def check(self, inst: dict[str, Any], block: BlockMigration) -> None:
        """What can be refused before the operation starts (a 4xx that changes nothing)."""
        lifecycle.check_allowed(Op.LIVE_MIGRATE, VmState(inst["vm_state"]),
                                TaskState(inst["task_state"]) if inst["task_state"] else None, inst["id"])
        if not self.svc.manager.driver.capabilities.supports_live_migration:
            raise Conflict(f"the compute driver of host {self.host} cannot live-migrate")
        if self.peers is None:
            raise Conflict(f"host {self.host} runs alone (no cluster key): there is no host to migrate to")
        if block not in (True, False, "auto"):
            raise BadRequest("block_migration must be true, false or \"auto\"")

    def run(self, host: str | None, block: BlockMigration) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(inst: dict[str, Any]) -> dict[str, Any]:
            return await self._migrate(inst, host, block)

        return run

    async def _migrate(self, inst: dict[str, Any], host: str | None, block: BlockMigration) -> dict[str, Any]:
        assert self.peers is not None
        peers = self.peers
        svc = self.svc
        inst_id = inst["id"]
        req = await svc.placement.request_for(inst, ignore_hosts=frozenset({self.host}), force_host=host)
        probe = svc.manager.instances_path / f".migration-probe-{uuid.uuid4().hex}"
        await asyncio.to_thread(probe.touch)
        answers: dict[str, PrepareAnswer] = {}

        async def prepare(dest: str) -> None:
            call = MigrationCall(instance_id=inst_id, source=self.host, probe=probe.name)
            answers[dest] = await peers.call(dest, PREPARE_PATH, call, PrepareAnswer, timeout=PREPARE_TIMEOUT_S)
            if not answers[dest].shared_storage and block is False:
                await self._abort_destination(dest, inst_id)
                raise BadRequest(f"host {dest} does not share {svc.manager.instances_path} with {self.host}:"
                                 " block_migration=false would lose the disks (use true or \"auto\")")

        try:
            dest = await svc.placement.place(req, prepare, kind="resize")
        finally:
            probe.unlink(missing_ok=True)
        shared = answers[dest].shared_storage
        cfg = svc.config.libvirt
        # attached volumes are network disks (hvd.storage.volumes.nbd): only the server's own disks are copied
        own = tuple(svc.volumes.local_devices(inst)) if await svc.volumes.of_server(inst_id) else ()
        uri = await self.migration_uri(dest)
        # where the guest may be: a restart of either host in the middle finds its way from this
        await svc.update(inst_id, extra={"migration": {"dest": dest, "shared": shared}})
        try:  # volumes opened directly here: the destination reaches them over NBD from this host
            moving = await svc.volumes.prepare_move(inst, dest)
        except BaseException:
            await asyncio.shield(self._undo(dest, inst))
            raise
        params = MigrationParams(block=not shared, max_downtime_ms=cfg.migration_max_downtime_ms,
                                 auto_converge=cfg.migration_auto_converge, timeout_s=cfg.migration_timeout_s,
                                 migrate_disks=own, tls=svc.config.tls.enabled and cfg.migration_tls,
                                 network_volumes=tuple(mv.disk for mv in moving))
        log.info("live-migrating %s to %s (%s, block copy %s, TLS %s)", inst_id, dest, uri, params.block, params.tls)

        reporter = ActionReporter(svc.catalog, inst_id)

        def progress(reading: MigrationProgress) -> None:
            self.progress[inst_id] = reading
            reporter.report(f"live migration to {dest}: {mib(reading.data_processed)} of {mib(reading.data_total)}"
                            f" copied, {mib(reading.data_remaining)} remaining")
            svc.events.publish("instance.migration.progress", instance_id=inst_id, project_id=inst["project_id"],
                               destination=dest, data_total=reading.data_total,
                               data_remaining=reading.data_remaining)

        try:
            await svc.manager.driver.live_migrate(inst_id, uri, params, progress)
        except Exception as exc:
            if await self._still_here(inst_id):
                # the guest still runs here: the destination forgets it, its claim goes, our ports come back
                await asyncio.shield(self._undo(dest, inst, moving))
                raise
            log.warning("live migration of %s reported %s, but the guest has left this host: finishing it", inst_id,
                        exc.message if isinstance(exc, HvdError) else repr(exc))
        except BaseException:
            await asyncio.shield(self._undo(dest, inst, moving))
            raise
        finally:
            self.progress.pop(inst_id, None)
            await reporter.flush()
        # the switch-over happened: from here on the guest lives on the destination
        checkpoint("live_migrate.switched")
        try:
            await svc.volumes.finish_move(inst_id, moving, dest)
        except HvdError as exc:  # the guest uses the exports all the same; its next definition would not
            log.error("attachments of %s could not follow it to %s: %s", inst_id, dest, exc.message)
        try:
            await peers.call(dest, FINISH_PATH, MigrationCall(instance_id=inst_id, source=self.host), Done,
                             timeout=120.0)
        except HvdError as exc:  # it runs there all the same; the destination's power sync will tell
            log.error("destination %s could not confirm %s after the switch-over: %s", dest, inst_id, exc.message)
        with contextlib.suppress(NotFound):
            await svc.catalog.propose(ClaimPromote(instance_id=inst_id))
        if not shared:  # with shared storage the files are the destination's now
            await svc.manager.cleanup_host({**inst, "host": self.host})
        power = PowerState.PAUSED if int(inst["power_state"]) == PowerState.PAUSED else PowerState.RUNNING
        return {"vm_state": inst["vm_state"], "host": dest, "power_state": int(power), "extra": {"migration": None}}

    async def recover(self, inst: dict[str, Any]) -> None:
        """Start-up repair of a live migration this host was running when it stopped: finish it
        if the guest runs on the destination now, else undo it (the guest is still here)."""
        svc = self.svc
        moving = inst["extra"].get("migration") or {}
        dest = moving.get("dest")
        here = await self._still_here(inst["id"])
        done: dict[str, Any] = {"task_state": None, "extra": {"migration": None}}
        if here or not dest:
            log.warning("live migration of %s was interrupted before the switch-over: it stays here", inst["id"])
            if dest:
                await self._undo(dest, inst)
            power = await svc.manager.driver.get_power_state(inst["id"]) if here else PowerState.NOSTATE
            await svc.update(inst["id"], power_state=int(power), **done)
            return
        try:
            assert self.peers is not None
            await self.peers.call(dest, FINISH_PATH, MigrationCall(instance_id=inst["id"], source=self.host), Done,
                                  timeout=120.0)
        except (HvdError, AssertionError) as exc:
            log.error("instance %s is on neither host after an interrupted live migration: %s", inst["id"], exc)
            await svc.update(inst["id"], vm_state="error", power_state=int(PowerState.NOSTATE), **done,
                             fault={"code": 500, "message": f"lost during a live migration to {dest}: {exc}",
                                    "created": now_iso()})
            return
        log.warning("live migration of %s to %s completed while this host was down: finishing it", inst["id"], dest)
        try:  # its volumes opened directly here are reached from there over NBD (the export is running)
            await svc.volumes.finish_move(inst["id"], await svc.volumes.prepare_move(inst, dest), dest)
        except HvdError as exc:
            log.error("attachments of %s could not follow it to %s: %s", inst["id"], dest, exc.message)
        with contextlib.suppress(NotFound):
            await svc.catalog.propose(ClaimPromote(instance_id=inst["id"]))
        if not moving.get("shared"):
            await svc.manager.cleanup_host(inst)
        await svc.update(inst["id"], host=dest, power_state=int(PowerState.RUNNING), **done)

    async def _still_here(self, inst_id: str) -> bool:
        try:
            await self.svc.manager.driver.get_power_state(inst_id)
        except NotFound:
            return False
        except HvdError:
            return True  # cannot tell: assume it is still here (the safe side for an undo)
        return True

    async def _undo(self, dest: str, inst: dict[str, Any], moving: list[Any] | None = None) -> None:
        await self._abort_destination(dest, inst["id"])
        if moving:
            await self.svc.volumes.abandon_move(moving, dest)
        await self.svc.placement.release(inst["id"], "resize")
        with contextlib.suppress(HvdError):
            await self.svc.update(inst["id"], extra={"migration": None})
        if self.svc.manager.network is not None:
            with contextlib.suppress(HvdError):
                await self.svc.manager.network.plug_instance(inst)  # the destination unbound the ports

    async def _abort_destination(self, dest: str, inst_id: str) -> None:
        assert self.peers is not None
        try:
            await self.peers.call(dest, ABORT_PATH, MigrationCall(instance_id=inst_id, source=self.host), Done,
                                  timeout=120.0)
        except HvdError as exc:  # its restart repair removes what it prepared (the catalog names us)
            log.warning("destination %s could not clean up after %s: %s", dest, inst_id, exc.message)

    async def migration_uri(self, dest: str) -> str:
        row = await self.svc.catalog.read(fetch_one, "SELECT api_url FROM hosts WHERE name=?", (dest,))
        if row is None:
            raise NotFound(f"Host {dest} could not be found")
        address = urlsplit(row["api_url"]).hostname or dest
        return self.svc.config.libvirt.migration_uri.format(address=address, host=dest)

    async def abort(self, inst: dict[str, Any]) -> None:
        """Cancel the running live migration of ``inst`` (the operation then fails, and undoes)."""
        if inst["task_state"] != "migrating":
            raise Conflict(f"instance {inst['id']} is not being live-migrated")
        await self.svc.manager.driver.abort_live_migration(inst["id"])

    # --- destination ------------------------------------------------------------------------

    async def _incoming(self, call: MigrationCall) -> dict[str, Any]:
        inst = await self.svc.instance(call.instance_id)
        if inst["host"] != call.source or inst["task_state"] != "migrating":
            raise Conflict(f"instance {call.instance_id} is not migrating from {call.source}"
                           f" (host {inst['host']}, task {inst['task_state']})")
        return inst

    async def prepare(self, call: MigrationCall) -> PrepareAnswer:
        inst = await self._incoming(call)
        manager = self.svc.manager
        if not manager.driver.capabilities.supports_live_migration:
            raise Conflict(f"the compute driver of host {self.host} cannot receive live migrations")
        shared = bool(call.probe) and (manager.instances_path / call.probe).exists()
        spec = await manager.spec_of(inst)  # fetches the image base when this host lacks it
        try:
            if manager.network is not None:
                await manager.network.plug_instance(inst)  # the bridges must exist when the guest arrives
            if not shared:
                spec.instance_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
                await manager.write_config_drive(inst, spec)
                await manager.driver.prepare_incoming(spec)
        except BaseException:
            await asyncio.shield(self._forget(inst, shared))
            raise
        self._incoming_shared[inst["id"]] = shared
        return PrepareAnswer(shared_storage=shared)

    async def finish(self, call: MigrationCall) -> Done:
        """Adopt the arrived guest; NotFound-like DriverError when it is not here (did not arrive)."""
        self._incoming_shared.pop(call.instance_id, None)
        inst = await self.svc.instance(call.instance_id)
        await self.svc.manager.driver.finish_incoming(await self.svc.manager.spec_of(inst))
        return Done()

    async def abort_incoming(self, call: MigrationCall) -> Done:
        inst = await self.svc.instance(call.instance_id)
        if inst["host"] == self.host:
            raise Conflict(f"instance {call.instance_id} lives here now: nothing to abort")
        domains = await self.svc.manager.driver.list_domains()
        if call.instance_id in domains:
            raise Conflict(f"instance {call.instance_id} has a domain on {self.host}: it arrived")
        # files of an instance this host did not prepare (or on shared storage) are not ours to remove
        await self._forget(inst, self._incoming_shared.pop(call.instance_id, True))
        return Done()

    async def _forget(self, inst: dict[str, Any], shared: bool) -> None:
        manager = self.svc.manager
        if not shared:
            await asyncio.to_thread(_rmtree, manager.instances_path / inst["id"])
        if manager.network is not None:
            with contextlib.suppress(HvdError):
                await manager.network.unplug_instance({**inst, "host": self.host})


def _rmtree(path: Any) -> None:
    shutil.rmtree(path, ignore_errors=True)
