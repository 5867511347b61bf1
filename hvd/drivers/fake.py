"""An in-process compute driver with the same contract as the libvirt driver.

For unit and functional tests (many daemons in one process) and scale benchmarks: every call is a
few dict operations, plus small files when ``instances_path`` is given (so tests of cleanup see the
same files as with libvirt). Failures are injected per method with ``fail(...)``; a guest that
ignores ACPI is simulated with ``set_acpi(uuid, False)``, one that never releases a hot-plugged
volume with ``set_volume_release(uuid, False)``.

What a test can observe, as with a real guest: every boot gets a new domain id (``dom_id``, like
libvirt's, -1 while shut off) and appends ``FAKE boot <n>`` to the console log, which is kept
across restarts; a guest that honours the ACPI button logs ``FAKE poweroff`` before it stops,
one that is forced off logs nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hvd.compute.lifecycle import PowerState
from hvd.drivers.base import (
    CONSOLE_LOG,
    DISK,
    DISK_EPH0,
    DISK_RESCUE,
    DISK_SWAP,
    DOMAIN_XML,
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
from hvd.drivers.fake_console import FakeSerialSession, FakeVncServer, black_screen_png
from hvd.drivers.libvirt.xml import disk_layout, domain_xml
from hvd.drivers.remote_console import SERIAL, VNC
from hvd.drivers.volumes import VolumeDisk, device_name, next_device
from hvd.errors import BadRequest, Conflict, DriverError, HvdError, InvalidState, NotFound
from hvd.storage import qemu_img

GIB = 1 << 30


@dataclass
class FakeDomain:
    """The fake hypervisor's view of one domain."""

    spec: InstanceSpec
    power: PowerState = PowerState.SHUTDOWN
    managed_save: bool = False
    acpi: bool = True  # does the guest power off on an ACPI power-button press?
    boots: int = 0
    dom_id: int = -1  # libvirt's domain id: new at every start, -1 while not running
    nics: list[Nic] = field(default_factory=list)
    volumes: dict[str, VolumeDisk] = field(default_factory=dict)  # volume id → disk, in attach order
    volume_sizes: dict[str, int] = field(default_factory=dict)  # what the guest was told by extend_volume
    releases_volumes: bool = True  # does the guest acknowledge a volume unplug?


class FakeDriver(ComputeDriver):
    """Fake hypervisor. ``image_sizes`` maps image paths to virtual sizes (for the root_gb check)."""

    def __init__(
        self,
        instances_path: Path | None = None,
        *,
        resources: HostResources | None = None,
        capabilities: Capabilities | None = None,
        image_sizes: dict[Path, int] | None = None,
    ) -> None:
        self.instances_path = instances_path
        self.domains: dict[str, FakeDomain] = {}
        self.image_sizes = image_sizes if image_sizes is not None else {}
        self.calls: dict[str, int] = defaultdict(int)
        self._caps = capabilities or Capabilities(supports_live_migration=True, supports_attach_interface=True,
                                                  supports_volumes=True,
                                                  remote_consoles=frozenset({SERIAL, VNC}))
        self._resources = resources or HostResources(
            vcpus=os.cpu_count() or 1,
            memory_mib=16384,
            disk_gb=500,
            hypervisor_type="fake",
            hypervisor_version=1000,
            arch="x86_64",
            cpu_model="fake",
            hostname=os.uname().nodename,
        )
        self._failures: dict[str, list[HvdError]] = defaultdict(list)
        self._hub = EventHub()
        self._next_dom_id = 1
        self.migrated_to: dict[str, str] = {}  # uuid -> destination URI of its live migration
        self._serial: dict[str, FakeSerialSession] = {}  # uuid -> the attached console session
        self._vnc: dict[str, FakeVncServer] = {}  # uuid -> its display (kept until destroy)

    # --- test hooks ---------------------------------------------------------------------------

    def fail(self, method: str, error: HvdError | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` (default DriverError).

        spawn fails after its disks and domain exist, so the cleanup postcondition is exercised.
        """
        for _ in range(times):
            self._failures[method].append(error or DriverError(f"injected failure in {method}"))

    def set_acpi(self, uuid: str, responds: bool) -> None:
        """Simulate a guest that ignores (or honours) the ACPI power button."""
        self._get(uuid).acpi = responds

    def set_volume_release(self, uuid: str, releases: bool) -> None:
        """Simulate a guest that never (or again) acknowledges a volume unplug."""
        self._get(uuid).releases_volumes = releases

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] += 1
        if self._failures.get(method):
            raise self._failures[method].pop(0)

    # --- helpers ----------------------------------------------------------------------------------

    def _get(self, uuid: str) -> FakeDomain:
        dom = self.domains.get(uuid)
        if dom is None:
            raise NotFound(f"no domain for instance {uuid} on this host", uuid=uuid)
        return dom

    def _set_power(self, dom: FakeDomain, power: PowerState) -> None:
        if dom.power == power:
            return
        dom.power = power
        if power in (PowerState.SHUTDOWN, PowerState.NOSTATE, PowerState.SUSPENDED):
            dom.dom_id = -1
            if dom.spec.uuid in self._serial:  # the QEMU process is gone: so is its console
                self._serial[dom.spec.uuid].end()
        elif dom.dom_id == -1:  # a QEMU process starts (boot, or restore of a saved state)
            dom.dom_id = self._next_dom_id
            self._next_dom_id += 1
        self._hub.publish(dom.spec.uuid, power)

    def _console(self, dom: FakeDomain, line: str) -> None:
        if self.instances_path is not None and dom.spec.instance_dir.is_dir():
            with dom.spec.path(CONSOLE_LOG).open("a") as f:
                f.write(line + "\n")

    def _shut_down(self, dom: FakeDomain, clean: bool) -> None:
        """Stop the guest: ``clean`` when it honoured the ACPI button (it says so on its console)."""
        if clean and dom.power == PowerState.RUNNING:
            self._console(dom, "FAKE poweroff")
        self._set_power(dom, PowerState.SHUTDOWN)

    def _boot(self, dom: FakeDomain) -> None:
        dom.boots += 1
        # as a Linux guest names them: vda, vdb, ... in probe order, whatever the definition's targets
        disks = " ".join(device_name(i) for i in range(len(disk_layout(dom.spec)) + len(dom.volumes)))
        self._console(dom, f"FAKE boot {dom.boots}")
        self._console(dom, f"FAKE disks={disks}")
        self._set_power(dom, PowerState.RUNNING)

    def _write_files(self, spec: InstanceSpec) -> None:
        if self.instances_path is None:
            return
        spec.instance_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not spec.boots_from_volume:
            spec.path(DISK).touch()
        if spec.ephemeral_gb:
            spec.path(DISK_EPH0).touch()
        if spec.swap_mb:
            spec.path(DISK_SWAP).touch()
        if spec.rescue:
            spec.path(DISK_RESCUE).touch()
        spec.path(DOMAIN_XML).write_text(domain_xml(spec, "qemu"))

    def _instance_dir(self, target: InstanceSpec | str) -> Path | None:
        if isinstance(target, InstanceSpec):
            return target.instance_dir
        return None if self.instances_path is None else self.instances_path / target

    # --- ComputeDriver --------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def close(self) -> None:
        self._hub.close()
        for display in list(self._vnc.values()):
            await display.close()
        self._vnc.clear()

    async def host_resources(self) -> HostResources:
        self._maybe_fail("host_resources")
        return self._resources

    async def spawn(self, spec: InstanceSpec) -> None:
        if spec.uuid in self.domains:
            raise Conflict(f"a domain for instance {spec.uuid} already exists on this host")
        if self.instances_path is not None and not spec.boots_from_volume and not spec.image_path.exists():
            raise DriverError(f"image {spec.image_path} is not in the cache")
        size = self.image_sizes.get(spec.image_path, 0)
        if spec.root_gb and size > spec.root_gb * GIB:
            raise BadRequest(f"image of {size} bytes does not fit in a {spec.root_gb} GB root disk")
        self._write_files(spec)
        dom = FakeDomain(spec=spec, nics=list(spec.nics), volumes={v.volume_id: v for v in spec.volumes})
        self.domains[spec.uuid] = dom
        try:
            self._maybe_fail("spawn")
        except HvdError:
            self.domains.pop(spec.uuid, None)
            if not spec.reuse_disks and spec.instance_dir.exists():
                shutil.rmtree(spec.instance_dir, ignore_errors=True)
            raise
        self._boot(dom)

    async def destroy(self, target: InstanceSpec | str, keep_disks: bool = False) -> None:
        self._maybe_fail("destroy")
        uuid = target.uuid if isinstance(target, InstanceSpec) else target
        dom = self.domains.pop(uuid, None)
        if dom is not None:
            self._set_power(dom, PowerState.NOSTATE)
        if uuid in self._vnc:
            await self._vnc.pop(uuid).close()
        directory = self._instance_dir(target)
        if not keep_disks and directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    async def power_off(self, uuid: str, timeout: float) -> None:
        self._maybe_fail("power_off")
        dom = self._get(uuid)
        dom.managed_save = False
        if dom.power in (PowerState.SHUTDOWN, PowerState.NOSTATE, PowerState.SUSPENDED):
            self._set_power(dom, PowerState.SHUTDOWN)
            return
        clean = timeout > 0 and dom.acpi and dom.power == PowerState.RUNNING
        if timeout > 0 and not clean:
            await asyncio.sleep(timeout)  # the guest ignores the button: wait, then pull the plug
        self._shut_down(dom, clean)

    async def power_on(self, spec: InstanceSpec) -> None:
        self._maybe_fail("power_on")
        dom = self._get(spec.uuid)
        if dom.power == PowerState.RUNNING:
            return
        if dom.power in (PowerState.PAUSED, PowerState.SUSPENDED):
            raise InvalidState(f"instance {spec.uuid} is {dom.power.name.lower()}; unpause/resume it")
        dom.spec = spec
        dom.volumes = {v.volume_id: v for v in spec.volumes}
        self._write_files(spec)
        self._boot(dom)

    async def reboot(self, target: InstanceSpec | str, hard: bool, timeout: float) -> None:
        self._maybe_fail("reboot")
        uuid = target.uuid if isinstance(target, InstanceSpec) else target
        dom = self._get(uuid)
        if not hard:
            if dom.power != PowerState.RUNNING:
                raise InvalidState(f"cannot soft reboot instance {uuid}: it is not running")
            if not dom.acpi:
                await asyncio.sleep(timeout)  # fall back to a hard reboot after the timeout
        self._shut_down(dom, clean=not hard and dom.acpi)
        dom.managed_save = False
        if isinstance(target, InstanceSpec):
            dom.spec = target
            dom.volumes = {v.volume_id: v for v in target.volumes}
            self._write_files(target)
        self._boot(dom)

    async def pause(self, uuid: str) -> None:
        self._maybe_fail("pause")
        dom = self._get(uuid)
        if dom.power == PowerState.PAUSED:
            return
        if dom.power != PowerState.RUNNING:
            raise InvalidState(f"cannot pause instance {uuid}: it is not running")
        self._set_power(dom, PowerState.PAUSED)

    async def unpause(self, uuid: str) -> None:
        self._maybe_fail("unpause")
        dom = self._get(uuid)
        if dom.power == PowerState.RUNNING:
            return
        if dom.power != PowerState.PAUSED:
            raise InvalidState(f"cannot unpause instance {uuid}: it is not paused")
        self._set_power(dom, PowerState.RUNNING)

    async def suspend(self, uuid: str) -> None:
        self._maybe_fail("suspend")
        dom = self._get(uuid)
        if dom.power == PowerState.SUSPENDED:
            return
        if dom.power not in (PowerState.RUNNING, PowerState.PAUSED):
            raise InvalidState(f"cannot suspend instance {uuid}: it is not running")
        dom.managed_save = True
        self._set_power(dom, PowerState.SUSPENDED)

    async def resume(self, uuid: str) -> None:
        self._maybe_fail("resume")
        dom = self._get(uuid)
        if dom.power == PowerState.RUNNING:
            return
        if not dom.managed_save:
            raise InvalidState(f"cannot resume instance {uuid}: it has no saved state")
        dom.managed_save = False
        self._set_power(dom, PowerState.RUNNING)

    async def rescue(
        self, spec: InstanceSpec, rescue_image: Path | None = None, rescue_format: str | None = None
    ) -> None:
        self._maybe_fail("rescue")
        dom = self._get(spec.uuid)
        if dom.spec.rescue and dom.power == PowerState.RUNNING:
            return
        rescue_spec = _replace(spec, rescue=True)
        self._set_power(dom, PowerState.SHUTDOWN)
        dom.managed_save = False
        dom.spec = rescue_spec
        self._write_files(rescue_spec)
        self._boot(dom)

    async def unrescue(self, spec: InstanceSpec) -> None:
        self._maybe_fail("unrescue")
        dom = self._get(spec.uuid)
        normal = _replace(spec, rescue=False)
        if not dom.spec.rescue and dom.power == PowerState.RUNNING:
            return
        self._set_power(dom, PowerState.SHUTDOWN)
        if self.instances_path is not None:
            normal.path(DISK_RESCUE).unlink(missing_ok=True)
        dom.spec = normal
        self._write_files(normal)
        self._boot(dom)

    async def snapshot(self, uuid: str, dest_path: Path) -> None:
        dom = self._get(uuid)
        before = dom.power
        if before == PowerState.RUNNING:
            self._set_power(dom, PowerState.PAUSED)
        try:
            self._maybe_fail("snapshot")
            tmp = dest_path.with_name(f".{dest_path.name}.part")
            if dom.spec.image_path.is_file():
                # a real qcow2 of the base, so callers can inspect and boot the snapshot image
                await qemu_img.convert(dom.spec.image_path, tmp, dom.spec.image_format, "qcow2")
            else:
                tmp.write_bytes(b"QFI\xfb fake snapshot of " + uuid.encode())
            tmp.rename(dest_path)
        finally:
            if before == PowerState.RUNNING:
                self._set_power(dom, PowerState.RUNNING)

    async def get_power_state(self, uuid: str) -> PowerState:
        self._maybe_fail("get_power_state")
        return self._get(uuid).power

    async def list_domains(self) -> dict[str, PowerState]:
        self._maybe_fail("list_domains")
        return {uuid: dom.power for uuid, dom in self.domains.items()}

    async def console_log(self, uuid: str, lines: int | None = None) -> str:
        dom = self._get(uuid)
        if self.instances_path is None:
            text = "".join(f"FAKE boot {n}\n" for n in range(1, dom.boots + 1))
            return text if lines is None else "".join(text.splitlines(keepends=True)[-lines:])
        return read_console_tail(dom.spec.path(CONSOLE_LOG), lines)

    def _running(self, uuid: str, what: str) -> FakeDomain:
        dom = self._get(uuid)
        if dom.power != PowerState.RUNNING:
            raise InvalidState(f"instance {uuid} is {dom.power.name.lower()}: {what}")
        return dom

    async def open_serial_console(self, uuid: str) -> FakeSerialSession:
        self._maybe_fail("open_serial_console")
        dom = self._running(uuid, "its console cannot be attached")
        if uuid in self._serial:
            raise Conflict(f"instance {uuid} already has a console session attached; detach it first")

        def log(data: bytes) -> None:
            if self.instances_path is not None and dom.spec.instance_dir.is_dir():
                with dom.spec.path(CONSOLE_LOG).open("ab") as f:
                    f.write(data)

        session = FakeSerialSession(log, lambda: self._detach(uuid))
        self._serial[uuid] = session
        return session

    def _detach(self, uuid: str) -> None:
        self._serial.pop(uuid, None)

    async def vnc_address(self, uuid: str) -> tuple[str, int]:
        self._maybe_fail("vnc_address")
        dom = self._running(uuid, "it has no display")
        display = self._vnc.setdefault(uuid, FakeVncServer(dom.spec.domain_name))
        return await display.address()

    async def screenshot(self, uuid: str) -> bytes:
        self._maybe_fail("screenshot")
        self._running(uuid, "it has no screen")
        return black_screen_png()

    async def attach_interface(self, uuid: str, nic: Nic) -> None:
        self._maybe_fail("attach_interface")
        dom = self._get(uuid)
        if all(n.mac != nic.mac for n in dom.nics):
            dom.nics.append(nic)

    async def detach_interface(self, uuid: str, nic: Nic) -> None:
        self._maybe_fail("detach_interface")
        dom = self._get(uuid)
        dom.nics = [n for n in dom.nics if n.mac != nic.mac]

    async def attach_volume(self, uuid: str, volume: VolumeDisk) -> str:
        self._maybe_fail("attach_volume")
        dom = self._get(uuid)
        if volume.volume_id in dom.volumes:
            return dom.volumes[volume.volume_id].dev
        used = [d.dev for d in disk_layout(dom.spec)] + [v.dev for v in dom.volumes.values()]
        placed = _replace_volume(volume, dev=next_device(used, volume.dev))
        dom.volumes[volume.volume_id] = placed
        if dom.power in (PowerState.RUNNING, PowerState.PAUSED):
            self._console(dom, f"FAKE volume attached {placed.dev} serial={placed.serial}")
        return placed.dev

    async def detach_volume(self, uuid: str, volume_id: str, timeout: float) -> None:
        self._maybe_fail("detach_volume")
        dom = self._get(uuid)
        if volume_id not in dom.volumes:
            return
        if dom.power in (PowerState.RUNNING, PowerState.PAUSED) and not dom.releases_volumes:
            await asyncio.sleep(timeout)
            raise DriverError(f"instance {uuid} did not release volume {volume_id} in {timeout:.0f} s;"
                              " it stays attached (is the disk mounted in the guest?)")
        del dom.volumes[volume_id]
        dom.volume_sizes.pop(volume_id, None)

    async def extend_volume(self, uuid: str, volume_id: str, new_size: int) -> None:
        self._maybe_fail("extend_volume")
        dom = self._get(uuid)
        if volume_id not in dom.volumes:
            raise NotFound(f"volume {volume_id} is not attached to instance {uuid}")
        if dom.power in (PowerState.RUNNING, PowerState.PAUSED):
            dom.volume_sizes[volume_id] = new_size

    async def attached_volumes(self, uuid: str) -> dict[str, str]:
        return {v.serial: v.dev for v in self._get(uuid).volumes.values()}

    async def prepare_incoming(self, spec: InstanceSpec) -> None:
        self._maybe_fail("prepare_incoming")
        if spec.uuid in self.domains:
            raise Conflict(f"a domain for instance {spec.uuid} already exists on this host")
        self._write_files(spec)

    async def live_migrate(self, uuid: str, dest_uri: str, params: MigrationParams,
                           progress: Callable[[MigrationProgress], None] | None = None) -> None:
        dom = self._get(uuid)
        if dom.power not in (PowerState.RUNNING, PowerState.PAUSED):
            raise InvalidState(f"instance {uuid} is not running: it cannot move live")
        self._maybe_fail("live_migrate")
        if progress is not None:
            progress(MigrationProgress(dom.spec.memory_mib << 20, dom.spec.memory_mib << 20, 0))
        self.migrated_to[uuid] = dest_uri
        del self.domains[uuid]  # it runs on the destination now (its finish_incoming adopts it)
        self._hub.publish(uuid, PowerState.SHUTDOWN)

    async def abort_live_migration(self, uuid: str) -> None:
        self.calls["abort_live_migration"] += 1

    async def finish_incoming(self, spec: InstanceSpec) -> None:
        self._maybe_fail("finish_incoming")
        dom = FakeDomain(spec=spec, nics=list(spec.nics), boots=1, volumes={v.volume_id: v for v in spec.volumes})
        self.domains[spec.uuid] = dom
        self._set_power(dom, PowerState.RUNNING)

    def events(self) -> EventStream:
        return self._hub.subscribe()


def _replace(spec: InstanceSpec, **changes: object) -> InstanceSpec:
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def _replace_volume(volume: VolumeDisk, **changes: object) -> VolumeDisk:
    return dataclasses.replace(volume, **changes)  # type: ignore[arg-type]
