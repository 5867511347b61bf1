"""Volumes on servers, the compute side of Cinder's attach: attach, detach, online extend, the
volumes of a domain definition, the volumes of a deleted server, and crash repair of attachments.

Everything here runs on the server's host (the API forwards requests there). Each step is one
catalog command of hvd.catalog.cmd_volumes, CAS-guarded (the contract is in
hvd/storage/volumes/__init__.py): reserve → attaching (with the connection info) → hypervisor
attach → attached (with the device), and attached → detaching → hypervisor detach → removed, or
back to attached with the guest's refusal as the error. A volume on another host is reached over
NBD (hvd.storage.volumes.nbd): the volume's host exports it, this host's libvirt connects to it.
A server that moves keeps its attachments: a live migration's source says how the destination
reaches them (``prepare_move``); a host that boots a server that ran elsewhere or nowhere (cold
move, its revert, unshelve) reconnects them itself (``connect_here``, decided by
hvd.compute.volume_reach); a shelve-offload leaves them with no connection (``offload``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hvd.catalog.cmd_volume_moves import AttachmentMoved
from hvd.catalog.cmd_volumes import (
    AttachmentAttaching,
    AttachmentBeginDetach,
    AttachmentComplete,
    AttachmentDetachFailed,
    AttachmentRemove,
    AttachmentReserve,
    VolumeBegin,
    VolumeFinish,
)
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.compute.lifecycle import PowerState, VmState
from hvd.compute.volume_reach import OFFLOADED, reach, reconnect, reconnect_blocker, recorded
from hvd.drivers.volumes import BOOT_DEV, VolumeDisk, device_name, disk_from_connection, next_device
from hvd.errors import BadRequest, Conflict, DriverError, HvdError, InvalidState, NotFound, ServiceUnavailable
from hvd.faults import checkpoint
from hvd.identity.service import now_iso
from hvd.storage.volumes import states as st

if TYPE_CHECKING:
    from hvd.compute.service import ComputeService

log = logging.getLogger(__name__)

DETACH_TIMEOUT_S = 30.0  # a guest that does not release a disk in this time keeps it (clear error)
GIB = 1 << 30
# server states in which volumes may be attached or detached (Nova also allows shelved: not here)
ATTACHABLE_VM_STATES = (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED)
# attachments that are in the domain definition (attaching ones are added by the attach itself)
IN_DOMAIN = (st.ATT_ATTACHED, st.ATT_DETACHING)


class VolumeHost(Protocol):
    """What the compute side needs from this host's volume service (hvd.storage.volumes.service)."""

    def connection_info(self, volume: dict[str, Any]) -> dict[str, Any]:
        """How this host's hypervisor opens a volume of this host's backends."""

    async def grow_data(self, volume: dict[str, Any], new_size_gb: int) -> None:
        """The volume's data is ``new_size_gb`` long (the backend's extend)."""


def attachments_of(conn: Any, instance_id: str) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT * FROM volume_attachments WHERE instance_id=? ORDER BY created_at, id",
                     (instance_id,))


def attachment_of(conn: Any, instance_id: str, volume_id: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM volume_attachments WHERE instance_id=? AND volume_id=?",
                     (instance_id, volume_id))


def volume_row(conn: Any, volume_id: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM volumes WHERE id=?", (volume_id,))


def busy_attachments(conn: Any, host: str) -> list[dict[str, Any]]:
    """Attachments of this host's servers left half-way (a crash between two steps)."""
    return fetch_all(conn, "SELECT a.* FROM volume_attachments a JOIN instances i ON i.id=a.instance_id"
                           " WHERE i.host=? AND i.deleted_at IS NULL AND a.status IN (?,?,?)",
                     (host, st.ATT_RESERVED, st.ATT_ATTACHING, st.ATT_DETACHING))


def move_blocker(connection_info: dict[str, Any], volume_id: str) -> str | None:
    """Why a volume the server opens directly cannot follow it to another host live, or None.

    The destination reaches it over NBD through a qemu-storage-daemon that opens the data while the
    source's QEMU still runs on it: safe for raw data (no cache of its own), not for qcow2, whose
    metadata the daemon would cache while the source still allocates clusters.
    """
    if connection_info.get("type") == "file" and connection_info.get("format", "raw") != "raw":
        return (f"volume {volume_id} is a {connection_info['format']} file opened directly on its host: only raw"
                " volumes follow a live migration (detach it first)")
    return None


@dataclass(frozen=True)
class MovingVolume:
    """An attached volume this host opens directly, reached over NBD from the move's destination."""

    attachment_id: str
    volume_id: str
    info: dict[str, Any]  # the NBD connection info at the destination
    disk: VolumeDisk  # its network disk, at the attachment's device


@dataclass(frozen=True)
class Reconnected:
    """An attachment ``connect_here`` changed: where and how it was, how this host reaches it now."""

    attachment_id: str
    volume_id: str
    host: str  # the host the attachment named before
    before: dict[str, Any]
    after: dict[str, Any]
    release_export: bool  # the export ``before`` names was let go of (this host opens the volume directly)


def device_of(requested: str | None) -> str | None:
    """``/dev/vdb`` or ``vdb`` → ``vdb``; None stays None (the host picks)."""
    if requested is None:
        return None
    return requested.removeprefix("/dev/")


class ComputeVolumes:
    """Attach, detach and extend volumes of this host's servers; the volumes of their definitions."""

    def __init__(self, service: ComputeService) -> None:
        self.svc = service
        self.catalog = service.catalog
        self.host = service.host
        self.volume_host: VolumeHost | None = None  # this host's volume service, set by the daemon
        self.exports: Any = None  # NBD exports of volumes of other hosts (hvd.storage.volumes.nbd), if any
        self.detach_timeout_s = DETACH_TIMEOUT_S

    @property
    def driver(self) -> Any:
        return self.svc.manager.driver

    def nbd_server(self) -> Any:
        """This host's NBD exports (peer routes of the volume's host); 503 when it serves none."""
        if self.exports is None:
            raise ServiceUnavailable(f"host {self.host} serves no NBD exports (no cluster or no volume service)")
        return self.exports

    async def _volume(self, volume_id: str) -> dict[str, Any]:
        row = await self.catalog.read(volume_row, volume_id)
        if row is None:
            raise NotFound(f"Volume {volume_id} could not be found")
        return row

    async def connection(self, volume: dict[str, Any]) -> dict[str, Any]:
        """How this host's hypervisor opens ``volume``: directly when its data is here, else over
        NBD from the volume's host."""
        return await self._open(volume, reach(volume["host"], self.host) == "nbd")

    async def _open(self, volume: dict[str, Any], export: bool) -> dict[str, Any]:
        if not export:
            if self.volume_host is None:
                raise Conflict(f"volume {volume['id']} is on host {self.host}, which runs no volume service")
            return self.volume_host.connection_info(volume)
        if self.exports is None:
            raise Conflict(f"volume {volume['id']} lives on host {volume['host']} and this server on {self.host}:"
                           " reaching a volume of another host needs an NBD export, not available here")
        info: dict[str, Any] = await self.exports.connect(volume, self.host)
        return info

    async def disconnect(self, volume_id: str, info: dict[str, Any]) -> None:
        """Drop what ``connection`` set up for this host (the NBD export of a remote volume)."""
        if info.get("type") == "nbd" and self.exports is not None:
            try:
                await self.exports.disconnect(volume_id, self.host)
            except HvdError as exc:  # the volume's host removes stale exports itself
                log.warning("could not drop the export of volume %s: %s", volume_id, exc.message)

    # --- moves to another host --------------------------------------------------------------------

    async def direct_attachments(self, instance_id: str) -> list[dict[str, Any]]:
        """The server's attachments it opens directly on this host (not over NBD)."""
        return [a for a in await self.catalog.read(attachments_of, instance_id)
                if a["connection_info"].get("type") != "nbd"]

    async def prepare_move(self, inst: dict[str, Any], dest: str) -> list[MovingVolume]:
        """Before ``inst`` live-migrates from this host to ``dest``: export the volumes it opens
        directly here (without the image lock its running QEMU holds) and say how ``dest`` reaches
        them; the exports of those it reaches over NBD admit ``dest`` too (nbd_authz). Undone by
        ``abandon_move``; made final by ``finish_move`` once the server runs on ``dest``. (A cold
        move's destination reconnects them itself: ``connect_here``.)"""
        moving: list[MovingVolume] = []
        try:
            for att in await self.direct_attachments(inst["id"]):
                if reason := reconnect_blocker(att) or move_blocker(att["connection_info"], att["volume_id"]):
                    raise Conflict(reason)
                volume = await self._volume(att["volume_id"])
                if reach(volume["host"], dest) != "nbd" or self.exports is None:
                    raise Conflict(f"volume {volume['id']} cannot be reached from host {dest} (no NBD exports here)")
                info: dict[str, Any] = await self.exports.connect(volume, dest, unlocked=True)
                disk = disk_from_connection(volume["id"], att["device"], info, read_only=att["attach_mode"] == "ro",
                                            shareable=bool(volume["multiattach"]))
                moving.append(MovingVolume(att["id"], volume["id"], info, disk))
            for att in await self.catalog.read(attachments_of, inst["id"]):
                if att["connection_info"].get("type") == "nbd" and self.exports is not None:
                    # the destination's QEMU opens the same export: its host must be admitted first
                    await self.exports.connect(await self._volume(att["volume_id"]), dest)
        except BaseException:
            await self.abandon_move(moving, dest)
            raise
        return moving

    async def abandon_move(self, moving: list[MovingVolume], dest: str) -> None:
        """The move did not happen: the exports made for ``dest`` stop (the catalog names no user)."""
        for mv in moving:
            await self.disconnect(mv.volume_id, mv.info)

    async def finish_move(self, instance_id: str, moving: list[MovingVolume], dest: str) -> None:
        """The server runs on ``dest`` now: its attachments name ``dest``, those it opened directly
        here with the NBD connection ``prepare_move`` made (a later regenerated definition keeps the
        network disk, and the export has its user), those it already reached over NBD unchanged."""
        for mv in moving:
            await self.catalog.propose(AttachmentMoved(id=mv.attachment_id, from_host=self.host, host=dest,
                                                       connection_info=mv.info, updated_at=now_iso()))
        for att in await self.catalog.read(attachments_of, instance_id):
            if att["connection_info"].get("type") == "nbd" and att["host"] == self.host and att["status"] == "attached":
                await self.catalog.propose(AttachmentMoved(id=att["id"], from_host=self.host, host=dest,
                                                           connection_info=att["connection_info"],
                                                           updated_at=now_iso()))

    # --- a server defined on this host after it ran elsewhere or nowhere ---------------------

    async def connect_here(self, inst: dict[str, Any]) -> list[Reconnected]:
        """Before this host defines ``inst``'s domain after the server ran on another host or on
        none (a cold move's destination, the source of a reverted cold move, an unshelve), its
        previous domain gone: each attachment names this host and the connection this host uses
        (hvd.compute.volume_reach): the volume opened directly on its own host, else over NBD from
        its host's export. The export of a volume this host now opens directly is let go of first
        (it holds QEMU's image lock). On failure nothing is changed; undone by ``restore``."""
        done: list[Reconnected] = []
        try:
            for att in await self.catalog.read(attachments_of, inst["id"]):
                if reason := reconnect_blocker(att):
                    raise Conflict(reason)
                volume = await self._volume(att["volume_id"])
                was = recorded(att["connection_info"])
                step = reconnect(volume["host"], self.host, was)
                info = await self._open(volume, step.export)
                if info == att["connection_info"] and att["host"] == self.host:
                    continue
                try:
                    await self.catalog.propose(AttachmentMoved(id=att["id"], from_host=att["host"], host=self.host,
                                                               connection_info=info, updated_at=now_iso()))
                except BaseException:
                    if was != "nbd":  # the export just made has no user
                        await self.disconnect(volume["id"], info)
                    raise
                done.append(Reconnected(att["id"], volume["id"], att["host"], att["connection_info"], info,
                                        step.release_export))
                if step.release_export:  # no attachment names it now: it stops, unless another server uses it
                    await self.disconnect(volume["id"], att["connection_info"])
                if step.reach != was:
                    log.info("volume %s of %s: reached %s from %s now (was %s)", volume["id"], inst["id"],
                             step.reach, self.host, was)
        except BaseException:
            await self.restore(done)
            raise
        return done

    async def restore(self, done: list[Reconnected]) -> None:
        """Undo ``connect_here``: the attachments as they were (an export it stopped starts again,
        on whatever port it gets); an export started for this host that the old record does not
        name stops (its volume's host counts the catalog's users)."""
        for rc in reversed(done):
            try:
                before = rc.before
                if rc.release_export:
                    volume = await self._volume(rc.volume_id)
                    before = await self.exports.connect(volume, rc.host)
                await self.catalog.propose(AttachmentMoved(id=rc.attachment_id, from_host=self.host, host=rc.host,
                                                           connection_info=before, updated_at=now_iso()))
            except HvdError as exc:
                log.error("attachment %s could not go back to %s: %s", rc.attachment_id, rc.host, exc.message)
                continue
            if recorded(rc.before) != "nbd":
                await self.disconnect(rc.volume_id, rc.after)

    async def offload(self, inst: dict[str, Any]) -> None:
        """The server left this host without going to another (shelve-offload; its domain is
        gone): its attachments stay, with no connection, and the exports they used stop.
        Idempotent (a restart repeats it)."""
        for att in await self.catalog.read(attachments_of, inst["id"]):
            if recorded(att["connection_info"]) == "none":
                continue
            try:
                await self.catalog.propose(AttachmentMoved(id=att["id"], from_host=att["host"], host=att["host"],
                                                           connection_info=OFFLOADED, updated_at=now_iso()))
            except HvdError as exc:  # not attached: it was half-way (its repair decides)
                log.warning("attachment %s of shelved %s keeps its connection: %s", att["id"], inst["id"],
                            exc.message)
                continue
            await self.disconnect(att["volume_id"], att["connection_info"])

    # --- what a domain definition holds ----------------------------------------------------------

    async def disks_of(self, inst: dict[str, Any]) -> tuple[VolumeDisk, ...]:
        """The volumes in ``inst``'s domain definition: its attached (and detaching) volumes."""
        disks = []
        for att in await self.catalog.read(attachments_of, inst["id"]):
            if att["status"] not in IN_DOMAIN or not att["device"]:
                continue
            volume = await self.catalog.read(volume_row, att["volume_id"])
            if volume is None:
                continue
            disks.append(disk_from_connection(att["volume_id"], att["device"], att["connection_info"],
                                              read_only=att["attach_mode"] == "ro",
                                              shareable=bool(volume["multiattach"])))
        return tuple(disks)

    async def of_server(self, instance_id: str) -> list[dict[str, Any]]:
        return await self.catalog.read(attachments_of, instance_id)

    # --- attach ----------------------------------------------------------------------------------

    def check_server(self, inst: dict[str, Any], what: str) -> None:
        """Volumes change only on a server at rest on this host (409 naming its state otherwise)."""
        if inst["task_state"] is not None or inst["vm_state"] not in ATTACHABLE_VM_STATES:
            raise InvalidState(f"Cannot {what} instance {inst['id']} while it is {inst['vm_state']}"
                               f"/{inst['task_state']}", vm_state=inst["vm_state"])
        if inst["host"] != self.host:
            raise Conflict(f"instance {inst['id']} is not on this host")
        if not self.driver.capabilities.supports_volumes:
            raise Conflict("this host's compute driver cannot attach volumes")

    async def attach(self, inst: dict[str, Any], volume_id: str, device: str | None = None,
                     mode: str = "rw") -> dict[str, Any]:
        """Attach the volume to the server (hot-plugged when it runs); the attachment record.

        Refused with 409 unless the volume is available (or in-use and multi-attach); on any
        failure the volume is as before and the server unchanged.
        """
        self.check_server(inst, "attach a volume to")
        volume = await self._volume(volume_id)
        if volume["project_id"] != inst["project_id"]:
            raise NotFound(f"Volume {volume_id} could not be found")
        wanted = device_of(device)
        if wanted is not None and wanted == "vda":
            raise BadRequest("device vda is the server's root disk; name another (vdb, vdc, ...) or none")
        self.svc.locks.acquire(inst["id"], "volume_attach")
        try:
            return await self._attach(inst, volume, wanted, mode)
        finally:
            self.svc.locks.release(inst["id"])

    async def _attach(self, inst: dict[str, Any], volume: dict[str, Any], wanted: str | None,
                      mode: str) -> dict[str, Any]:
        att_id = str(uuid.uuid4())
        await self.catalog.propose(AttachmentReserve(id=att_id, volume_id=volume["id"], instance_id=inst["id"],
                                                     attach_mode=mode, created_at=now_iso()))
        self._event(volume["id"], inst["id"], st.ATT_RESERVED)
        info: dict[str, Any] | None = None
        attached = False
        try:
            info = await self.connection(volume)
            await self.catalog.propose(AttachmentAttaching(id=att_id, host=self.host, connection_info=info,
                                                           updated_at=now_iso()))
            checkpoint("volume_attach.attaching")
            disk = disk_from_connection(volume["id"], wanted or "vdb", info, read_only=mode == "ro",
                                        shareable=bool(volume["multiattach"]))
            dev = await self.driver.attach_volume(inst["id"], disk)
            attached = True
            checkpoint("volume_attach.attached")
            await self.catalog.propose(AttachmentComplete(id=att_id, device=dev, updated_at=now_iso()))
        except BaseException as exc:
            log.warning("attach of volume %s to %s failed: %s", volume["id"], inst["id"], exc)
            if attached:
                try:
                    await self.driver.detach_volume(inst["id"], volume["id"], self.detach_timeout_s)
                except HvdError as undo_exc:
                    log.warning("could not take volume %s back from %s: %s", volume["id"], inst["id"],
                                undo_exc.message)
            try:
                await self.catalog.propose(AttachmentRemove(id=att_id, expect=[st.ATT_RESERVED, st.ATT_ATTACHING],
                                                            updated_at=now_iso()))
            except HvdError as undo_exc:
                log.warning("could not roll back attachment %s: %s", att_id, undo_exc.message)
            if info is not None:  # after the removal: an export stops only when no attachment names it
                await self.disconnect(volume["id"], info)
            self._event(volume["id"], inst["id"], "removed")
            raise
        self._event(volume["id"], inst["id"], st.ATT_ATTACHED)
        log.info("volume %s attached to %s as %s", volume["id"], inst["id"], dev)
        row = await self.catalog.read(attachment_of, inst["id"], volume["id"])
        assert row is not None
        return row

    # --- detach ----------------------------------------------------------------------------------

    async def detach(self, inst: dict[str, Any], volume_id: str) -> None:
        """Detach the volume: the guest must release it within ``detach_timeout_s``, else 409 with
        the reason and the volume stays attached (in-use)."""
        self.check_server(inst, "detach a volume from")
        att = await self.catalog.read(attachment_of, inst["id"], volume_id)
        if att is None:
            raise NotFound(f"Volume {volume_id} is not attached to instance {inst['id']}")
        if att["device"] == "vda":
            raise Conflict(f"volume {volume_id} is the boot volume of instance {inst['id']}: it cannot be detached")
        if att["status"] != st.ATT_ATTACHED:
            raise InvalidState(f"the attachment of volume {volume_id} to {inst['id']} is {att['status']}",
                               status=att["status"])
        self.svc.locks.acquire(inst["id"], "volume_detach")
        try:
            await self.catalog.propose(AttachmentBeginDetach(id=att["id"], updated_at=now_iso()))
            self._event(volume_id, inst["id"], st.ATT_DETACHING)
            checkpoint("volume_detach.detaching")
            try:
                await self.driver.detach_volume(inst["id"], volume_id, self.detach_timeout_s)
            except NotFound:
                pass  # no domain: nothing holds the volume
            except HvdError as exc:
                await self.catalog.propose(AttachmentDetachFailed(id=att["id"], error=exc.message,
                                                                  updated_at=now_iso()))
                self._event(volume_id, inst["id"], st.ATT_ATTACHED)
                raise Conflict(f"volume {volume_id} stays attached to instance {inst['id']}: {exc.message}") from exc
            await self.disconnect(volume_id, att["connection_info"])
            await self.catalog.propose(AttachmentRemove(id=att["id"], expect=[st.ATT_DETACHING],
                                                        updated_at=now_iso()))
            self._event(volume_id, inst["id"], "removed")
            log.info("volume %s detached from %s", volume_id, inst["id"])
        finally:
            self.svc.locks.release(inst["id"])

    # --- online extend ---------------------------------------------------------------------------

    async def extend_online(self, volume_id: str, new_size_gb: int) -> dict[str, Any]:
        """Grow an in-use volume attached to a server of this host and tell the running guest.

        A file that a running QEMU holds (raw or qcow2) is grown by QEMU itself (libvirt block
        resize: qemu-img cannot take its lock); a logical volume, or any volume of a stopped server,
        by its backend first, then the running guest is told. Multi-attached volumes are refused
        (as Cinder does). The volume ends in-use with the new size, or the old one with the error.
        """
        volume = await self._volume(volume_id)
        atts = [a for a in await self.catalog.read(
            fetch_all, "SELECT * FROM volume_attachments WHERE volume_id=?", (volume_id,))]
        if len(atts) != 1:
            raise Conflict(f"volume {volume_id} is attached {len(atts)} times: online extend needs exactly one")
        att = atts[0]
        inst = await self.svc.instance(att["instance_id"])
        if inst["host"] != self.host:
            raise Conflict(f"volume {volume_id} is attached to a server on host {inst['host']}, not {self.host}")
        await self.catalog.propose(VolumeBegin(id=volume_id, op="extend_online", new_size_gb=new_size_gb,
                                               updated_at=now_iso()))
        self._event(volume_id, att["instance_id"], "extending")
        error: str | None = None
        try:
            power = await self.driver.get_power_state(att["instance_id"])
            live = power in (PowerState.RUNNING, PowerState.PAUSED)
            # a file a running QEMU holds is locked against qemu-img: QEMU grows it itself
            qemu_grows = live and att["connection_info"].get("type") == "file"
            if not qemu_grows:
                if self.volume_host is None or volume["host"] != self.host:
                    raise Conflict(f"volume {volume_id} is on host {volume['host']}: its data is grown there")
                await self.volume_host.grow_data(volume, new_size_gb)
            checkpoint("volume_extend.grown")
            if live:
                await self.driver.extend_volume(att["instance_id"], volume_id, new_size_gb * GIB)
        except HvdError as exc:
            error = exc.message
        except OSError as exc:
            error = str(exc)
        await self.catalog.propose(VolumeFinish(id=volume_id, op="extend_online", ok=error is None, error=error,
                                                updated_at=now_iso()))
        self._event(volume_id, att["instance_id"], "extended" if error is None else "extend_failed")
        if error is not None:
            raise DriverError(f"online extend of volume {volume_id} failed: {error}")
        return await self._volume(volume_id)

    # --- block device mapping at build ----------------------------------------------------------

    @staticmethod
    def local_devices(inst: dict[str, Any]) -> list[str]:
        """The guest devices the server's own disks take: vda (root, or the boot volume), then
        ephemeral, swap and config drive (the order of hvd.drivers.libvirt.xml.disk_layout)."""
        flavor = inst["flavor"]
        count = 1 + (int(flavor.get("ephemeral_gb", 0)) > 0) + (int(flavor.get("swap_mb", 0)) > 0) \
            + bool(inst["config_drive"])
        return [device_name(i) for i in range(count)]

    async def connect_at_build(self, inst: dict[str, Any]) -> None:
        """Record the server's block_device_mapping volumes as attached before its domain exists,
        so they are in its definition from the first boot: the boot_index 0 one as vda (the root
        disk), the others after the local disks. Idempotent (a repeated build keeps what it made);
        undone by ``release_server``."""
        used = self.local_devices(inst)
        for entry in (inst.get("extra") or {}).get("block_device_mapping") or []:
            volume = await self._volume(entry["volume_id"])
            existing = await self.catalog.read(attachment_of, inst["id"], volume["id"])
            if existing is not None and existing["status"] == st.ATT_ATTACHED:
                used.append(existing["device"])
                continue
            if existing is not None:  # a build cut half-way: start this one again
                await self.catalog.propose(AttachmentRemove(id=existing["id"], updated_at=now_iso()))
            dev = BOOT_DEV if entry.get("boot_index") == 0 else next_device(used)
            used.append(dev)
            att_id = str(uuid.uuid4())
            await self.catalog.propose(AttachmentReserve(id=att_id, volume_id=volume["id"], instance_id=inst["id"],
                                                         created_at=now_iso()))
            info = await self.connection(volume)
            await self.catalog.propose(AttachmentAttaching(id=att_id, host=self.host, connection_info=info,
                                                           updated_at=now_iso()))
            await self.catalog.propose(AttachmentComplete(id=att_id, device=dev, updated_at=now_iso()))
            self._event(volume["id"], inst["id"], st.ATT_ATTACHED)

    # --- server delete ---------------------------------------------------------------------------

    async def release_server(self, inst: dict[str, Any], deleting: bool = True) -> None:
        """After the server's domain is gone: remove its attachments (whatever their state) and
        drop its exports; when ``deleting``, its delete_on_termination volumes go too."""
        for att in await self.catalog.read(attachments_of, inst["id"]):
            with contextlib.suppress(NotFound):  # removed meanwhile
                await self.catalog.propose(AttachmentRemove(id=att["id"], updated_at=now_iso()))
            # after the removal: the volume's host stops an export only when no attachment names it
            await self.disconnect(att["volume_id"], att["connection_info"])
            self._event(att["volume_id"], inst["id"], "removed")
        if not deleting:
            return
        for volume_id in (inst.get("extra") or {}).get("delete_on_termination") or []:
            try:  # the volume's host deletes the data (its volume service picks the deleting volume up)
                await self.catalog.propose(VolumeBegin(id=volume_id, op="delete", updated_at=now_iso()))
            except NotFound:
                continue  # deleted already
            except HvdError as exc:
                log.warning("volume %s of deleted server %s is kept: %s", volume_id, inst["id"], exc.message)
                continue
            wake = getattr(self.volume_host, "wake", None)
            if wake is not None:
                wake()

    # --- crash repair ----------------------------------------------------------------------------

    async def repair(self) -> None:
        """Attachments of this host's servers left between two steps by a crash: finished or
        rolled back from what the hypervisor has (libvirt's definition is the truth)."""
        for att in await self.catalog.read(busy_attachments, self.host):
            try:
                await self._repair(att)
            except HvdError as exc:
                log.warning("could not repair attachment %s: %s", att["id"], exc.message)

    async def _repair(self, att: dict[str, Any]) -> None:
        try:
            present = await self.driver.attached_volumes(att["instance_id"])
        except NotFound:
            present = {}
        dev = present.get(att["volume_id"][:20])
        now = now_iso()
        if att["status"] == st.ATT_ATTACHING and dev is not None:
            log.warning("attachment %s: the crash came after the hypervisor attach; completing it", att["id"])
            await self.catalog.propose(AttachmentComplete(id=att["id"], device=dev, updated_at=now))
        elif att["status"] == st.ATT_DETACHING and dev is not None:
            log.warning("attachment %s: the crash came before the guest released it; it stays attached", att["id"])
            await self.catalog.propose(AttachmentDetachFailed(id=att["id"], updated_at=now,
                                                              error="detach interrupted by a restart; detach again"))
        else:
            log.warning("attachment %s (%s): not in the domain; removing it", att["id"], att["status"])
            await self.catalog.propose(AttachmentRemove(id=att["id"], updated_at=now))
            await self.disconnect(att["volume_id"], att["connection_info"])
        self._event(att["volume_id"], att["instance_id"], "repaired")

    def _event(self, volume_id: str, instance_id: str, status: str) -> None:
        self.svc.events.publish("volume.attachment", volume_id=volume_id, instance_id=instance_id, status=status)
