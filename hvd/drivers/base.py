"""The compute driver contract: what a hypervisor driver does for the manager and reconcile.

Inputs are plain data (`InstanceSpec`), not catalog records: the manager builds the spec from
the catalog, the driver turns it into a domain and files. Like Nova's virt/driver.py, each method's
docstring states its postcondition, whether it is idempotent and which errors it raises. Errors
are from `hvd.errors`: NotFound (no such domain), InvalidState (the domain is in a state where
the call makes no sense), DriverError (the hypervisor or a host tool failed), Timeout.

Files of an instance live in ``<instances_path>/<uuid>/``: ``disk`` (qcow2 overlay on the cached
base, sized to root_gb), ``disk.eph0``, ``disk.swap``, ``disk.config``, ``disk.rescue``,
``libvirt.xml`` (the domain XML, saved before define) and ``console.log``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hvd.compute.lifecycle import PowerState
from hvd.drivers.remote_console import SerialSession
from hvd.drivers.volumes import VolumeDisk

DOMAIN_PREFIX = "instance-"

# File names inside an instance directory (one place, shared by drivers, cleanup and tests).
DISK = "disk"
DISK_EPH0 = "disk.eph0"
DISK_SWAP = "disk.swap"
DISK_CONFIG = "disk.config"
DISK_RESCUE = "disk.rescue"
DOMAIN_XML = "libvirt.xml"
CONSOLE_LOG = "console.log"

GIB = 1 << 30
MIB = 1 << 20


def domain_name(instance_id: int, prefix: str = DOMAIN_PREFIX) -> str:
    """The hypervisor-side name of an instance: ``instance-%08x`` of its integer id (Nova)."""
    return f"{prefix}{instance_id:08x}"


@dataclass(frozen=True)
class Nic:
    """One virtual NIC: the tap is created by the hypervisor and enslaved to ``bridge``."""

    mac: str
    bridge: str
    tap: str
    mtu: int = 1500


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a driver needs to build or rebuild a domain (no catalog access needed).

    ``image_path``/``image_format`` name the cached base (``_base/<sha1>``; format as cached:
    raw with force_raw_images). ``instance_dir`` is ``<instances_path>/<uuid>``. ``root_gb`` 0
    means "the image's virtual size". ``config_drive`` is an already built ``disk.config`` or None.
    ``rescue`` True boots ``disk.rescue`` as vda with the instance's disk as vdb.
    ``volumes`` are the attached volumes (part of every definition: hard reboot, start, resize and
    moves keep them); one at ``vda`` is the boot volume, and then there is no local root ``disk``.
    """

    uuid: str
    instance_id: int
    name: str
    hostname: str
    vcpus: int
    memory_mib: int
    root_gb: int
    image_id: str
    image_path: Path
    image_format: str
    instance_dir: Path
    ephemeral_gb: int = 0
    swap_mb: int = 0
    nics: tuple[Nic, ...] = ()
    config_drive: Path | None = None
    rescue: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    # spawn keeps existing disk files in instance_dir instead of creating them (resize, revert,
    # a disk copied from another host); missing ones are still created
    reuse_disks: bool = False
    # "instance-" + %08x as in Nova; a longer prefix (still starting "instance-") keeps several
    # hvd daemons sharing one libvirtd (tests) from colliding on domain names
    name_prefix: str = DOMAIN_PREFIX
    volumes: tuple[VolumeDisk, ...] = ()

    @property
    def boots_from_volume(self) -> bool:
        return any(v.boot for v in self.volumes)

    @property
    def domain_name(self) -> str:
        return domain_name(self.instance_id, self.name_prefix)

    def path(self, name: str) -> Path:
        """A file of this instance, e.g. ``spec.path(DISK)``."""
        return self.instance_dir / name


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do, as data: the manager refuses unsupported operations up front."""

    supports_pause: bool = True
    supports_suspend: bool = True
    supports_rescue: bool = True
    supports_snapshot: bool = True
    supports_live_migration: bool = False
    supports_attach_interface: bool = False
    supports_config_drive: bool = True
    # remote consoles the driver serves ("serial", "vnc"; vnc also gives screenshots)
    remote_consoles: frozenset[str] = frozenset()
    supports_volumes: bool = False  # attach_volume, detach_volume, extend_volume


@dataclass(frozen=True)
class MigrationParams:
    """How a live migration runs: block (copy the disks: storage not shared), the allowed pause at
    switch-over, throttling the guest when it dirties memory faster than it is copied."""

    block: bool = True
    max_downtime_ms: int = 500
    auto_converge: bool = True
    timeout_s: float = 600.0
    # with ``block``: the target devs of the disks to copy; empty = every local writable disk (a
    # server with volumes names its own disks: a volume is reached from the destination, not copied)
    migrate_disks: tuple[str, ...] = ()
    # memory and disk streams in QEMU's TLS with the cluster certificates (QEMU's x509 directory)
    tls: bool = False
    # volumes the source opens directly that the destination reaches over NBD (their network
    # disks go into the destination's definition; never copied)
    network_volumes: tuple[VolumeDisk, ...] = ()


@dataclass(frozen=True)
class MigrationProgress:
    """One reading of a running live migration."""

    data_total: int
    data_processed: int
    data_remaining: int


@dataclass(frozen=True)
class HostResources:
    """This host's capacity as the hypervisor reports it (totals, not usage: usage is claims)."""

    vcpus: int
    memory_mib: int
    disk_gb: int
    hypervisor_type: str
    hypervisor_version: int
    arch: str
    cpu_model: str
    hostname: str = ""


Event = tuple[str, PowerState]


class EventStream:
    """One subscriber's power-state events; subscribed as soon as it is created (not on first
    iteration), so an event that follows ``driver.events()`` is never missed."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is None:
            self.close()
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Unsubscribe; the iterator ends."""
        self._hub._streams.discard(self)
        self._queue.put_nowait(None)


class EventHub:
    """Fan-out of (uuid, PowerState) events to every open EventStream; call only in the loop."""

    def __init__(self) -> None:
        self._streams: set[EventStream] = set()
        self._closed = False

    def subscribe(self) -> EventStream:
        stream = EventStream(self)
        if self._closed:
            stream.close()
        else:
            self._streams.add(stream)
        return stream

    def publish(self, uuid: str, power: PowerState) -> None:
        for stream in list(self._streams):
            stream._queue.put_nowait((uuid, power))

    def close(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream.close()


class ComputeDriver(abc.ABC):
    """One hypervisor on this host. All methods are coroutines and never block the loop.

    Unless stated otherwise, ``uuid`` names an instance by its UUID, and NotFound is raised when
    no domain with that UUID exists on this host.
    """

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """The operations this driver supports (constant for a driver instance)."""

    async def start(self) -> None:  # noqa: B027 - optional hook, most drivers need nothing
        """Connect to the hypervisor. Called once, inside the running loop, before other calls."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection; event iterators end. Idempotent."""

    @abc.abstractmethod
    async def host_resources(self) -> HostResources:
        """Totals of this host: vCPUs, RAM (MiB), disk of instances_path (GiB), hypervisor facts."""

    @abc.abstractmethod
    async def spawn(self, spec: InstanceSpec) -> None:
        """Create the instance's disks and domain and boot it.

        Postcondition: ``disk`` (+ eph/swap when sized) and ``libvirt.xml`` exist in
        ``spec.instance_dir``; a persistent domain named ``spec.domain_name`` with ``spec.uuid``
        is defined and RUNNING when this returns.
        If this fails, any partial instance is completely cleaned up (domain undefined, instance
        directory removed) and the error is raised; with ``spec.reuse_disks`` only the domain is
        undefined and the directory (the kept disks) stays.
        Not idempotent: raises Conflict when a domain with this UUID already exists (untouched).
        Raises BadRequest when the image does not fit in root_gb.
        """

    @abc.abstractmethod
    async def destroy(self, target: InstanceSpec | str, keep_disks: bool = False) -> None:
        """Power off (forcefully), undefine and, unless ``keep_disks``, remove the instance dir.

        ``target`` is a spec or a UUID (then the dir is ``<instances_path>/<uuid>``).
        Postcondition: no domain with this UUID exists; with ``keep_disks`` False the instance
        directory is gone. Idempotent: still succeeds when the domain or the files are gone.
        """

    @abc.abstractmethod
    async def power_off(self, uuid: str, timeout: float) -> None:
        """Stop the guest: ACPI power button, then a forced power-off after ``timeout`` seconds.

        ``timeout`` 0 forces immediately. Postcondition: power state SHUTDOWN; the domain stays
        defined and its files stay. Idempotent: a domain already off is left as is. A suspended
        (managed-saved) domain has its saved state discarded.
        """

    @abc.abstractmethod
    async def power_on(self, spec: InstanceSpec) -> None:
        """Boot a stopped instance with a freshly generated domain XML (re-plugs the NICs).

        Postcondition: RUNNING. Idempotent: a running domain is left running (XML unchanged).
        Raises InvalidState for a paused or suspended domain (use unpause/resume).
        """

    @abc.abstractmethod
    async def reboot(self, target: InstanceSpec | str, hard: bool, timeout: float) -> None:
        """Reboot. Soft: ACPI shutdown, wait up to ``timeout``, boot again; falls back to hard.

        Hard: forced power-off then boot (with a regenerated XML when ``target`` is a spec, which
        also repairs a broken definition); works from paused, suspended and stopped.
        Postcondition: RUNNING. Soft reboot of a domain not running raises InvalidState.
        """

    @abc.abstractmethod
    async def pause(self, uuid: str) -> None:
        """Freeze the vCPUs; memory stays in host RAM. Postcondition: PAUSED.

        Idempotent for a paused domain; InvalidState when not running.
        """

    @abc.abstractmethod
    async def unpause(self, uuid: str) -> None:
        """Continue a paused domain. Postcondition: RUNNING. Idempotent; InvalidState when off."""

    @abc.abstractmethod
    async def suspend(self, uuid: str) -> None:
        """Save the guest's memory to host disk and stop QEMU (libvirt managed save).

        Postcondition: power state SUSPENDED (domain off, saved state on disk); host resources
        stay reserved by the caller. Idempotent; InvalidState when the domain is off.
        """

    @abc.abstractmethod
    async def resume(self, uuid: str) -> None:
        """Restore a suspended domain from its saved state. Postcondition: RUNNING.

        Idempotent for a running domain; InvalidState when there is no saved state to restore.
        """

    @abc.abstractmethod
    async def rescue(
        self, spec: InstanceSpec, rescue_image: Path | None = None, rescue_format: str | None = None
    ) -> None:
        """Boot from ``disk.rescue`` (overlay on ``rescue_image``, default the instance's image).

        The domain is powered off (forcefully), ``disk.rescue`` created, and the domain redefined
        with disk.rescue as vda and the instance's ``disk`` as vdb, then booted.
        Postcondition: RUNNING from the rescue disk. On failure the original definition is
        restored (not booted). Idempotent when already rescued.
        """

    @abc.abstractmethod
    async def unrescue(self, spec: InstanceSpec) -> None:
        """Power off the rescue domain, delete ``disk.rescue``, boot from the original disk.

        Postcondition: RUNNING with the normal XML; ``disk.rescue`` gone. Idempotent.
        """

    @abc.abstractmethod
    async def snapshot(self, uuid: str, dest_path: Path) -> None:
        """Write a standalone qcow2 copy of the root disk (overlay + base) to ``dest_path``.

        A running guest is paused for the copy and resumed afterwards (its power state is as
        before when this returns, also on failure). ``dest_path`` appears atomically (written
        under a temporary name, renamed); on failure it does not exist.
        """

    @abc.abstractmethod
    async def get_power_state(self, uuid: str) -> PowerState:
        """The domain's power state; a managed-saved domain reads SUSPENDED. NotFound if absent."""

    @abc.abstractmethod
    async def list_domains(self) -> dict[str, PowerState]:
        """UUID → power state of every domain of this driver: named ``instance-*`` and with its
        disks under this driver's instances_path (so hvd daemons or test suites sharing one
        hypervisor never see, and never clean up, each other's domains)."""

    @abc.abstractmethod
    async def console_log(self, uuid: str, lines: int | None = None) -> str:
        """The tail of the serial console output (at most ``console.CONSOLE_TAIL_BYTES``; the last
        ``lines`` lines if given), across the guest's restarts. Empty when nothing was written."""

    async def attach_interface(self, uuid: str, nic: Nic) -> None:
        """Hot-plug a NIC (live and persistent). Optional: see capabilities.

        Idempotent for a NIC with the same MAC already attached.
        """
        raise NotImplementedError

    async def detach_interface(self, uuid: str, nic: Nic) -> None:
        """Hot-unplug the NIC with ``nic.mac``. Optional. Idempotent when absent."""
        raise NotImplementedError

    async def attach_volume(self, uuid: str, volume: VolumeDisk) -> str:
        """Add ``volume`` to the domain: hot-plugged (live and persistent) when the domain runs or
        is paused, persistent only when it is off. Returns the target device it got.

        Idempotent: a volume already attached (same serial) is left as is and its device returned.
        Raises DriverError when the hypervisor cannot open the volume (nothing is changed then).
        Optional: see ``supports_volumes``.
        """
        raise NotImplementedError

    async def detach_volume(self, uuid: str, volume_id: str, timeout: float) -> None:
        """Remove the volume with ``volume_id`` from the domain, live and persistent.

        A live unplug completes only when the guest releases the disk: after ``timeout`` seconds
        without that, DriverError, and the volume stays in the persistent definition (the caller
        keeps it attached). Idempotent: absent is success. Optional: see ``supports_volumes``.
        """
        raise NotImplementedError

    async def extend_volume(self, uuid: str, volume_id: str, new_size: int) -> None:
        """Tell the running guest that the volume with ``volume_id`` is now ``new_size`` bytes
        (libvirt block resize; QEMU grows a qcow2 file itself). A no-op when the domain is off (it
        reads the size at its next start). Optional: see ``supports_volumes``.
        """
        raise NotImplementedError

    async def open_serial_console(self, uuid: str) -> SerialSession:
        """Attach to the running domain's serial port (``virsh console``); the port stays logged to
        ``console.log`` meanwhile. Conflict when another session is attached, InvalidState when the
        domain is not running. Optional: "serial" in ``remote_consoles``.
        """
        raise NotImplementedError

    async def vnc_address(self, uuid: str) -> tuple[str, int]:
        """(address, port) of the running domain's VNC display on this host, for the console proxy.
        Conflict when the domain has no VNC display (defined while VNC was off), InvalidState when
        it is not running. Optional: "vnc" in ``remote_consoles``.
        """
        raise NotImplementedError

    async def screenshot(self, uuid: str) -> bytes:
        """The running domain's screen as a PNG. Same errors as ``vnc_address``. Optional: "vnc"
        in ``remote_consoles``.
        """
        raise NotImplementedError

    async def attached_volumes(self, uuid: str) -> dict[str, str]:
        """Serial (volume id cut to 20 bytes) → target dev of the volumes in the domain's persistent
        definition (what crash repair trusts). Optional: see ``supports_volumes``."""
        raise NotImplementedError

    async def prepare_incoming(self, spec: InstanceSpec) -> None:
        """Destination of a live migration: make the instance's directory and disks (an overlay on
        the cached base, at the same paths as on the source) for the hypervisor to copy into; no
        domain. On failure nothing is left. Optional: see ``supports_live_migration``."""
        raise NotImplementedError

    async def live_migrate(self, uuid: str, dest_uri: str, params: MigrationParams,
                           progress: Callable[[MigrationProgress], None] | None = None) -> None:
        """Source: move the running domain to the hypervisor at ``dest_uri`` (peer to peer). On
        success it runs there, defined there, and is gone here (its files are left for the caller);
        on failure (DriverError) it still runs here, unchanged. ``progress`` is called while the
        memory and disks are copied. Optional: see ``supports_live_migration``."""
        raise NotImplementedError

    async def abort_live_migration(self, uuid: str) -> None:
        """Source: cancel a running ``live_migrate`` of ``uuid`` (it then fails); no-op when none runs."""
        raise NotImplementedError

    async def finish_incoming(self, spec: InstanceSpec) -> None:
        """Destination, after a successful ``live_migrate``: the domain runs here (DriverError if it
        does not). Optional: see ``supports_live_migration``."""
        raise NotImplementedError

    @abc.abstractmethod
    def events(self) -> AsyncIterator[Event]:
        """Power-state changes as (uuid, new power state), from now on, until ``close``.

        Every call gives an independent iterator; a slow consumer does not block others.
        Events are hints: reconcile still polls ``list_domains`` periodically.
        """
