"""The libvirt compute driver (QEMU/KVM, or QEMU TCG with ``virt_type = "qemu"``).

Disks are made with qemu-img (async subprocesses), domains with libvirt calls in LibvirtHost's
worker threads; the loop only awaits. Contract and postconditions: ``hvd.drivers.base``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import platform
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from hvd.compute.lifecycle import PowerState
from hvd.drivers.base import (
    CONSOLE_LOG,
    DISK,
    DISK_EPH0,
    DISK_RESCUE,
    DISK_SWAP,
    DOMAIN_PREFIX,
    DOMAIN_XML,
    GIB,
    MIB,
    Capabilities,
    ComputeDriver,
    EventHub,
    EventStream,
    HostResources,
    InstanceSpec,
    MigrationParams,
    MigrationProgress,
    Nic,
)
from hvd.drivers.console import read_console_tail
from hvd.drivers.libvirt import consoles, guest, volume_ops
from hvd.drivers.libvirt.access import instances_path_problem
from hvd.drivers.libvirt.host import LibvirtHost, translate
from hvd.drivers.libvirt.volume_xml import disk_xml
from hvd.drivers.libvirt.xml import VirtType, domain_xml, interface_xml
from hvd.drivers.remote_console import SERIAL, VNC, SerialSession
from hvd.drivers.volumes import VolumeDisk, next_device
from hvd.errors import BadRequest, ConfigError, Conflict, DriverError, HvdError, InvalidState, NotFound
from hvd.storage import qemu_img

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1  # power-state polling while waiting for a guest to stop
DETACH_TIMEOUT_S = 30.0  # a guest that never acknowledges the unplug keeps the NIC
MIGRATION_POLL_S = 0.5  # progress readings of a running live migration


def supports_o_direct(directory: Path) -> bool:
    """Can QEMU open files in ``directory`` with O_DIRECT (needed by cache='none')? Nova's probe."""
    probe = directory / f".directio.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    probe.unlink(missing_ok=True)
    return True


class LibvirtDriver(ComputeDriver):
    """ComputeDriver over one libvirt connection (``uri``) and one ``instances_path``."""

    def __init__(
        self, instances_path: Path, uri: str = "qemu:///system", virt_type: VirtType = "kvm", workers: int = 4,
        vnc_listen: str | None = None,
    ) -> None:
        self.instances_path = Path(instances_path)
        self.virt_type: VirtType = virt_type
        self.vnc_listen = vnc_listen  # None: domains get no display
        self.host = LibvirtHost(uri, workers)
        self.disk_cache = "none"
        self._o_direct: dict[Path, bool] = {}  # directory of file volumes → O_DIRECT works there
        self._hub = EventHub()
        self.host.on_lifecycle(self._on_lifecycle)

    # --- plumbing ---------------------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, retry: bool = False) -> Any:
        try:
            return await self.host.call(fn, *args, retry=retry)
        except libvirt.libvirtError as exc:
            raise translate(exc, what) from exc

    def _on_lifecycle(self, uuid: str, name: str, event: int, detail: int) -> None:
        power = guest.event_power(event, detail)
        if power is not None and name.startswith(DOMAIN_PREFIX):
            self._hub.publish(uuid, power)

    def _dir(self, uuid: str) -> Path:
        return self.instances_path / uuid

    def _xml(self, spec: InstanceSpec) -> str:
        volumes = tuple(self._with_cache(v) for v in spec.volumes)
        return domain_xml(dataclasses.replace(spec, volumes=volumes), self.virt_type, self.disk_cache,
                          self.vnc_listen)

    def _with_cache(self, vol: VolumeDisk) -> VolumeDisk:
        """The volume with a cache mode its storage supports (a file volume's directory may not
        allow O_DIRECT, e.g. tmpfs, where cache='none' would fail at open)."""
        if vol.kind != "file":
            return dataclasses.replace(vol, cache="none")
        directory = Path(vol.path).parent
        if directory not in self._o_direct:
            try:
                self._o_direct[directory] = supports_o_direct(directory)
            except OSError:  # not writable here: let QEMU report what it cannot open
                return dataclasses.replace(vol, cache="none")
        return dataclasses.replace(vol, cache="none" if self._o_direct[directory] else "writethrough")

    def _write_xml(self, spec: InstanceSpec) -> str:
        """The domain XML of ``spec``, saved to ``libvirt.xml`` first (what is defined is on disk)."""
        xml = self._xml(spec)
        spec.path(DOMAIN_XML).write_text(xml)
        return xml

    async def _wait_power(self, uuid: str, wanted: set[PowerState], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if await self._call(f"state of {uuid}", guest.get_power, uuid, retry=True) in wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL_S)

    # --- ComputeDriver ------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        kinds = frozenset({SERIAL, VNC} if self.vnc_listen is not None else {SERIAL})
        return Capabilities(supports_live_migration=True, supports_attach_interface=True, supports_volumes=True,
                            remote_consoles=kinds)

    async def start(self) -> None:
        if not self.instances_path.is_dir():
            self.instances_path.mkdir(parents=True)
            # libvirt-qemu must traverse it; the unit's UMask=0077 would leave a new directory 0700
            self.instances_path.chmod(0o755)
        problem = await asyncio.to_thread(instances_path_problem, self.instances_path)
        if problem is not None:  # refuse to start rather than fail every create with "Permission denied"
            raise ConfigError(problem)
        if not await asyncio.to_thread(supports_o_direct, self.instances_path):
            self.disk_cache = "writethrough"
            log.info("%s does not support O_DIRECT; disks use cache=writethrough", self.instances_path)
        await self.host.start()

    async def close(self) -> None:
        self._hub.close()
        await self.host.close()

    async def host_resources(self) -> HostResources:
        facts = await self._call("host info", guest.host_facts, retry=True)
        caps = ET.fromstring(facts["capabilities"])
        usage = await asyncio.to_thread(shutil.disk_usage, self.instances_path)
        return HostResources(
            vcpus=int(facts["cpus"]),
            memory_mib=int(facts["memory_mib"]),
            disk_gb=usage.total // GIB,
            hypervisor_type=self.virt_type,
            hypervisor_version=int(facts["version"]),
            arch=caps.findtext("host/cpu/arch") or platform.machine(),
            cpu_model=caps.findtext("host/cpu/model") or str(facts["model"]),
            hostname=str(facts["hostname"]),
        )

    async def _root_size(self, spec: InstanceSpec) -> int:
        info = await qemu_img.info(spec.image_path, spec.image_format, force_share=True)
        if spec.root_gb == 0:
            return info.virtual_size
        wanted = spec.root_gb * GIB
        if info.virtual_size > wanted:
            raise BadRequest(
                f"image {spec.image_id} ({info.virtual_size} bytes) is larger than the "
                f"flavor's {spec.root_gb} GB root disk"
            )
        return wanted

    async def _make_disks(self, spec: InstanceSpec) -> None:
        def wanted(name: str) -> bool:
            return not (spec.reuse_disks and spec.path(name).exists())

        if spec.boots_from_volume:
            pass  # the boot volume is the root disk
        elif wanted(DISK):
            size = await self._root_size(spec)
            await qemu_img.create_overlay(spec.image_path, spec.path(DISK), size, spec.image_format)
        elif spec.root_gb:
            # a kept disk (resize) grows to the flavor's root size; it never shrinks
            info = await qemu_img.info(spec.path(DISK), force_share=True)
            if spec.root_gb * GIB > info.virtual_size:
                await qemu_img.resize(spec.path(DISK), spec.root_gb * GIB)
        if spec.ephemeral_gb > 0 and wanted(DISK_EPH0):
            await qemu_img.create(spec.path(DISK_EPH0), "qcow2", spec.ephemeral_gb * GIB)
        if spec.swap_mb > 0 and wanted(DISK_SWAP):
            await qemu_img.create(spec.path(DISK_SWAP), "qcow2", spec.swap_mb * MIB)

    async def spawn(self, spec: InstanceSpec) -> None:
        if await self._call(f"look up {spec.uuid}", guest.lookup_or_none, spec.uuid, retry=True) is not None:
            raise Conflict(f"a domain for instance {spec.uuid} already exists on this host")
        if not spec.boots_from_volume and not spec.image_path.is_file():
            raise DriverError(f"image {spec.image_path} is not in the cache")
        started = time.monotonic()
        try:
            spec.instance_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            spec.instance_dir.chmod(0o755)
            await self._make_disks(spec)
            xml = self._write_xml(spec)
            await self._call(f"define {spec.domain_name}", guest.define, xml)
            await self._call(f"start {spec.domain_name}", lambda conn: guest.lookup(conn, spec.uuid).create())
        except (HvdError, OSError, asyncio.CancelledError) as exc:
            log.warning("spawn of %s failed (%s); cleaning up", spec.uuid, exc)
            with contextlib.suppress(HvdError, OSError):
                # Kept disks (resize, revert) are the user's data: never delete them here.
                await asyncio.shield(self.destroy(spec, keep_disks=spec.reuse_disks))
            raise
        log.info("spawned %s as %s in %.2f s", spec.uuid, spec.domain_name, time.monotonic() - started)

    async def prepare_incoming(self, spec: InstanceSpec) -> None:
        if await self._call(f"look up {spec.uuid}", guest.lookup_or_none, spec.uuid, retry=True) is not None:
            raise Conflict(f"a domain for instance {spec.uuid} already exists on this host")
        if not spec.image_path.is_file():
            raise DriverError(f"image {spec.image_path} is not in the cache")
        try:
            spec.instance_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            spec.instance_dir.chmod(0o755)
            await self._make_disks(spec)
        except (HvdError, OSError, asyncio.CancelledError):
            with contextlib.suppress(OSError):
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, spec.instance_dir, True))
            raise

    async def live_migrate(self, uuid: str, dest_uri: str, params: MigrationParams,
                           progress: Callable[[MigrationProgress], None] | None = None) -> None:
        flags = guest.migration_flags(params.block, params.auto_converge, params.tls, bool(params.network_volumes))
        # migrateToURI3 blocks for the whole copy: its own thread, so progress can be read meanwhile
        job = asyncio.ensure_future(self._call(f"live-migrate {uuid} to {dest_uri}", guest.migrate, uuid, dest_uri,
                                               flags, params.migrate_disks if params.block else (),
                                               tuple(self._with_cache(v) for v in params.network_volumes),
                                               self.disk_cache))
        downtime_set = False
        deadline = time.monotonic() + params.timeout_s
        try:
            while not job.done():
                await asyncio.wait({job}, timeout=MIGRATION_POLL_S)
                if job.done():
                    break
                try:
                    stats = await self._call(f"job of {uuid}", guest.migration_job, uuid)
                    if stats is not None and not downtime_set:
                        await self._call(f"max downtime of {uuid}", guest.set_max_downtime, uuid,
                                         params.max_downtime_ms)
                        downtime_set = True
                except (InvalidState, NotFound):  # the job is ending (the guest left): its result decides
                    continue
                if stats is None:
                    continue
                if progress is not None:
                    progress(MigrationProgress(int(stats.get("data_total", 0)), int(stats.get("data_processed", 0)),
                                               int(stats.get("data_remaining", 0))))
                if time.monotonic() > deadline:
                    log.warning("live migration of %s passed %.0f s: aborting it", uuid, params.timeout_s)
                    await self.abort_live_migration(uuid)
            await job
        except BaseException:
            if not job.done():  # cancelled: the domain must stay here
                await asyncio.shield(self.abort_live_migration(uuid))
                with contextlib.suppress(HvdError):
                    await asyncio.shield(job)
            raise

    async def abort_live_migration(self, uuid: str) -> None:
        await self._call(f"abort migration of {uuid}", guest.abort_job, uuid)

    async def finish_incoming(self, spec: InstanceSpec) -> None:
        power = await self._call(f"state of {spec.uuid}", guest.get_power, spec.uuid, retry=True)
        if power not in (PowerState.RUNNING, PowerState.PAUSED):
            raise DriverError(f"instance {spec.uuid} arrived but is {power.name.lower()}")
        await asyncio.to_thread(spec.path(DOMAIN_XML).write_text, self._xml(spec))

    async def destroy(self, target: InstanceSpec | str, keep_disks: bool = False) -> None:
        uuid = target.uuid if isinstance(target, InstanceSpec) else target
        directory = target.instance_dir if isinstance(target, InstanceSpec) else self._dir(uuid)
        await self._call(f"destroy {uuid}", guest.destroy_and_undefine, uuid, retry=True)
        if not keep_disks:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def power_off(self, uuid: str, timeout: float) -> None:
        power = await self._call(f"state of {uuid}", guest.get_power, uuid, retry=True)
        if power == PowerState.RUNNING and timeout > 0:
            await self._call(f"shutdown {uuid}", guest.acpi_shutdown, uuid)
            if await self._wait_power(uuid, {PowerState.SHUTDOWN}, timeout):
                return
            log.info("instance %s ignored ACPI shutdown for %.0f s; powering off", uuid, timeout)

        def off(conn: Any) -> None:
            dom = guest.lookup(conn, uuid)
            guest.force_off(dom)
            guest.discard_saved_state(dom)

        await self._call(f"power off {uuid}", off, retry=True)

    async def power_on(self, spec: InstanceSpec) -> None:
        power = await self._call(f"state of {spec.uuid}", guest.get_power, spec.uuid, retry=True)
        if power == PowerState.RUNNING:
            return
        if power in (PowerState.PAUSED, PowerState.SUSPENDED):
            raise InvalidState(f"instance {spec.uuid} is {power.name.lower()}; unpause or resume it")
        xml = self._write_xml(spec)
        await self._call(f"power on {spec.uuid}", guest.redefine_and_start, spec.uuid, xml)

    async def reboot(self, target: InstanceSpec | str, hard: bool, timeout: float) -> None:
        uuid = target.uuid if isinstance(target, InstanceSpec) else target
        if not hard:
            power = await self._call(f"state of {uuid}", guest.get_power, uuid, retry=True)
            if power != PowerState.RUNNING:
                raise InvalidState(f"cannot soft reboot instance {uuid}: it is not running")
            # Nova's soft reboot: a clean shutdown, then a boot; the guest keeps its definition.
            await self._call(f"shutdown {uuid}", guest.acpi_shutdown, uuid)
            if await self._wait_power(uuid, {PowerState.SHUTDOWN}, timeout):
                await self._call(f"start {uuid}", lambda conn: guest.lookup(conn, uuid).create())
                return
            log.info("instance %s did not shut down in %.0f s; rebooting hard", uuid, timeout)
        xml = self._write_xml(target) if isinstance(target, InstanceSpec) else None
        await self._call(f"reboot {uuid}", guest.redefine_and_start, uuid, xml)

    async def _transition(
        self,
        uuid: str,
        what: str,
        done: PowerState,
        allowed: set[PowerState],
        action: Callable[[Any], None],
    ) -> None:
        """Run ``action(dom)`` if the domain is in ``allowed``; no-op when already ``done``."""

        def run(conn: Any) -> None:
            dom = guest.lookup(conn, uuid)
            power = guest.power_of(dom)
            if power == done:
                return
            if power not in allowed:
                raise InvalidState(f"cannot {what} instance {uuid}: it is {power.name.lower()}")
            action(dom)

        await self._call(f"{what} {uuid}", run)

    async def pause(self, uuid: str) -> None:
        await self._transition(uuid, "pause", PowerState.PAUSED, {PowerState.RUNNING}, lambda d: d.suspend())

    async def unpause(self, uuid: str) -> None:
        await self._transition(uuid, "unpause", PowerState.RUNNING, {PowerState.PAUSED}, lambda d: d.resume())

    async def suspend(self, uuid: str) -> None:
        await self._transition(
            uuid,
            "suspend",
            PowerState.SUSPENDED,
            {PowerState.RUNNING, PowerState.PAUSED},
            # RUNNING: a resume gives a running guest even if it was paused when saved.
            lambda d: d.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING),
        )

    async def resume(self, uuid: str) -> None:
        await self._transition(uuid, "resume", PowerState.RUNNING, {PowerState.SUSPENDED}, lambda d: d.create())

    async def rescue(
        self, spec: InstanceSpec, rescue_image: Path | None = None, rescue_format: str | None = None
    ) -> None:
        rescue_disk = str(spec.path(DISK_RESCUE))
        sources = await self._call(f"disks of {spec.uuid}", guest.disk_sources, spec.uuid, retry=True)
        power = await self._call(f"state of {spec.uuid}", guest.get_power, spec.uuid, retry=True)
        if sources and sources[0] == rescue_disk and power == PowerState.RUNNING:
            return
        image = rescue_image or spec.image_path
        image_format = rescue_format or spec.image_format
        rescue_spec = dataclasses.replace(spec, rescue=True)
        normal_spec = dataclasses.replace(spec, rescue=False)
        # Stop first: the guest must not write its disk while the rescue system mounts it.
        await self._call(f"power off {spec.uuid}", lambda conn: guest.force_off(guest.lookup(conn, spec.uuid)))
        try:
            spec.path(DISK_RESCUE).unlink(missing_ok=True)
            await qemu_img.create_overlay(image, spec.path(DISK_RESCUE), None, image_format)
            xml = self._write_xml(rescue_spec)
            await self._call(f"rescue {spec.uuid}", guest.redefine_and_start, spec.uuid, xml)
        except (HvdError, OSError) as exc:
            log.warning("rescue of %s failed (%s); restoring its definition", spec.uuid, exc)
            with contextlib.suppress(HvdError, OSError):
                normal_xml = self._write_xml(normal_spec)
                await self._call(f"restore {spec.uuid}", guest.define, normal_xml)
                spec.path(DISK_RESCUE).unlink(missing_ok=True)
            raise

    async def unrescue(self, spec: InstanceSpec) -> None:
        normal_spec = dataclasses.replace(spec, rescue=False)
        sources = await self._call(f"disks of {spec.uuid}", guest.disk_sources, spec.uuid, retry=True)
        power = await self._call(f"state of {spec.uuid}", guest.get_power, spec.uuid, retry=True)
        rescued = str(spec.path(DISK_RESCUE)) in sources
        if not rescued and power == PowerState.RUNNING:
            spec.path(DISK_RESCUE).unlink(missing_ok=True)
            return
        await self._call(f"power off {spec.uuid}", lambda conn: guest.force_off(guest.lookup(conn, spec.uuid)))
        xml = self._write_xml(normal_spec)
        await self._call(f"unrescue {spec.uuid}", guest.define, xml)
        spec.path(DISK_RESCUE).unlink(missing_ok=True)
        await self._call(f"start {spec.uuid}", guest.redefine_and_start, spec.uuid, None)

    async def snapshot(self, uuid: str, dest_path: Path) -> None:
        disk = self._dir(uuid) / DISK
        tmp = dest_path.with_name(f".{dest_path.name}.part")
        power = await self._call(f"state of {uuid}", guest.get_power, uuid, retry=True)
        paused_here = power == PowerState.RUNNING
        if paused_here:
            # QEMU flushes the disk when it stops the vCPUs: the copy is consistent.
            await self._call(f"pause {uuid}", lambda conn: guest.lookup(conn, uuid).suspend())
        try:
            await qemu_img.run(qemu_img.snapshot_argv(disk, tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if paused_here:
                await asyncio.shield(self._call(f"resume {uuid}", lambda conn: guest.lookup(conn, uuid).resume()))
        tmp.chmod(0o644)
        tmp.rename(dest_path)

    async def get_power_state(self, uuid: str) -> PowerState:
        power: PowerState = await self._call(f"state of {uuid}", guest.get_power, uuid, retry=True)
        return power

    async def list_domains(self) -> dict[str, PowerState]:
        domains: dict[str, PowerState] = await self._call(
            "list domains", guest.list_power, str(self.instances_path), retry=True
        )
        return domains

    async def console_log(self, uuid: str, lines: int | None = None) -> str:
        await self._call(f"look up {uuid}", guest.lookup, uuid, retry=True)  # NotFound when absent
        return await asyncio.to_thread(read_console_tail, self._dir(uuid) / CONSOLE_LOG, lines)

    async def open_serial_console(self, uuid: str) -> SerialSession:
        return await consoles.open_serial(self.host, uuid)

    async def vnc_address(self, uuid: str) -> tuple[str, int]:
        address: tuple[str, int] = await self._call(f"display of {uuid}", consoles.vnc_address, uuid, retry=True)
        return address

    async def screenshot(self, uuid: str) -> bytes:
        png: bytes = await self._call(f"screenshot of {uuid}", consoles.screenshot, uuid, retry=True)
        return png

    async def attach_interface(self, uuid: str, nic: Nic) -> None:
        xml = interface_xml(nic)
        await self._call(f"attach interface to {uuid}", guest.change_interface, uuid, nic.mac, xml, True)

    async def detach_interface(self, uuid: str, nic: Nic) -> None:
        xml = interface_xml(nic)
        if not await self._call(f"detach interface from {uuid}", guest.change_interface, uuid, nic.mac, xml, False):
            return
        # The guest acknowledges a PCI unplug on its own time (libvirt waits only 5 s).
        deadline = time.monotonic() + DETACH_TIMEOUT_S
        while nic.mac in await self._call(f"interfaces of {uuid}", guest.macs, uuid, retry=True):
            if time.monotonic() >= deadline:
                raise DriverError(f"instance {uuid} did not release interface {nic.mac} in {DETACH_TIMEOUT_S} s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def attach_volume(self, uuid: str, volume: VolumeDisk) -> str:
        used = await self._call(f"disks of {uuid}", volume_ops.targets_in_use, uuid, retry=True)
        current = await self._call(f"disks of {uuid}", volume_ops.live_disk_xml, uuid, volume.volume_id)
        if current is None:  # a new device only for a volume not yet there (idempotent retry)
            volume = dataclasses.replace(volume, dev=next_device(used, volume.dev))
        xml = disk_xml(await asyncio.to_thread(self._with_cache, volume), self.disk_cache)
        dev: str = await self._call(f"attach volume {volume.volume_id} to {uuid}", volume_ops.attach, uuid,
                                    volume.volume_id, xml)
        return dev

    async def detach_volume(self, uuid: str, volume_id: str, timeout: float) -> None:
        what = f"detach volume {volume_id} from {uuid}"
        xml = await self._call(what, volume_ops.live_disk_xml, uuid, volume_id, retry=True)
        if xml is not None:
            await self._call(what, volume_ops.request_live_detach, uuid, xml)
            # the guest acknowledges the unplug on its own time (libvirt itself waits only 5 s)
            deadline = time.monotonic() + timeout
            while await self._call(what, volume_ops.live_disk_xml, uuid, volume_id, retry=True) is not None:
                if time.monotonic() >= deadline:
                    raise DriverError(f"instance {uuid} did not release volume {volume_id} in {timeout:.0f} s;"
                                      " it stays attached (is the disk mounted in the guest?)")
                await asyncio.sleep(POLL_INTERVAL_S)
        await self._call(what, volume_ops.detach_config, uuid, volume_id, retry=True)

    async def extend_volume(self, uuid: str, volume_id: str, new_size: int) -> None:
        await self._call(f"resize volume {volume_id} of {uuid}", volume_ops.block_resize, uuid, volume_id, new_size)

    async def attached_volumes(self, uuid: str) -> dict[str, str]:
        found: dict[str, str] = await self._call(f"volumes of {uuid}", volume_ops.persistent_volumes, uuid,
                                                 retry=True)
        return found

    def events(self) -> EventStream:
        return self._hub.subscribe()
