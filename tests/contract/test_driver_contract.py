"""One contract suite for every ComputeDriver: the fake, and libvirt booting the real test guest.

The libvirt half (marker ``libvirt``) uses qemu:///system with ``virt_type="qemu"`` (TCG), an
instances_path under /var/tmp that libvirt-qemu can traverse, and domain names from a random id
base (``instance-7eXXXXnn``) so concurrent suites of other engineers never collide. Guests get no
NIC except in the NIC test, whose bridge has no uplink and no address (nothing leaves the host).
Timings are written to /var/tmp/hvd-contract-timings.json.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import subprocess
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hvd.compute.lifecycle import PowerState
from hvd.drivers.base import DISK, DISK_RESCUE, DOMAIN_XML, ComputeDriver, InstanceSpec, Nic
from hvd.drivers.fake import FakeDriver
from hvd.drivers.remote_console import SerialSession, png_size
from hvd.drivers.volumes import VolumeDisk
from hvd.errors import BadRequest, Conflict, DriverError, HvdError, InvalidState, NotFound
from hvd.storage import qemu_img
from hvd.storage.config_drive import drive_files, render_meta_data, write_config_drive
from hvd.storage.image_cache import ImageCache

pytestmark = pytest.mark.asyncio(loop_scope="module")

BOOT_TIMEOUT = 90.0
SHUTDOWN_TIMEOUT = 30.0
ID_BASE = 0x7E000000 + secrets.randbelow(0xFFFF) * 0x100
TIMINGS: dict[str, list[float]] = {}
_ids = iter(range(ID_BASE, ID_BASE + 0x100))


def timed(name: str, seconds: float) -> None:
    TIMINGS.setdefault(name, []).append(round(seconds, 3))


@dataclass
class Env:
    """A driver plus what the tests need to tell what the guest did."""

    kind: str
    driver: ComputeDriver
    instances_path: Path
    cache: ImageCache
    image_path: Path
    image_format: str
    created: list[InstanceSpec] = field(default_factory=list)

    def spec(self, **overrides: Any) -> InstanceSpec:
        uuid = str(uuidlib.uuid4())
        base = InstanceSpec(
            uuid=uuid,
            instance_id=next(_ids),
            name=f"contract-{uuid[:8]}",
            hostname=f"vm-{uuid[:8]}",
            vcpus=1,
            memory_mib=128,
            root_gb=1,
            image_id="hvd-guest",
            image_path=self.image_path,
            image_format=self.image_format,
            instance_dir=self.instances_path / uuid,
        )
        spec = replace(base, **overrides)
        self.created.append(spec)
        return spec

    @property
    def real(self) -> bool:
        return self.kind == "libvirt"

    async def console_line(
        self, spec: InstanceSpec, pattern: str, timeout: float = BOOT_TIMEOUT, after: int = 0
    ) -> str:
        """The first console line from character ``after`` on matching ``pattern`` (waits for the
        real guest)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + (timeout if self.real else 0)
        while True:
            for line in (await self.driver.console_log(spec.uuid))[after:].splitlines():
                if regex.search(line):
                    return line.rstrip("\r")
            if time.monotonic() >= deadline:
                tail = await self.driver.console_log(spec.uuid, 20)
                raise AssertionError(f"no console line matching {pattern!r}; tail:\n{tail}")
            await asyncio.sleep(0.1)

    async def booted(self, spec: InstanceSpec, after: int = 0) -> None:
        """Wait until the guest has booted (again, when ``after`` marks the console's end before)."""
        await self.console_line(spec, r"HVD-GUEST ready" if self.real else r"FAKE boot", after=after)

    async def console_mark(self, spec: InstanceSpec) -> int:
        """The console's current length: what a guest prints from now on lies after it."""
        return len(await self.driver.console_log(spec.uuid))

    async def since(self, spec: InstanceSpec, mark: int) -> str:
        return (await self.driver.console_log(spec.uuid))[mark:]

    def powered_off_cleanly(self, text: str) -> bool:
        """Did the guest itself shut down (it honoured ACPI) in this console text?"""
        return ("HVD-GUEST poweroff" if self.real else "FAKE poweroff") in text

    async def domain_id(self, spec: InstanceSpec) -> int:
        """The hypervisor's id of the running domain: a new one for every start of the guest."""
        if isinstance(self.driver, FakeDriver):
            return self.driver.domains[spec.uuid].dom_id
        from hvd.drivers.libvirt import guest

        return await self.driver.host.call(  # type: ignore[attr-defined,no-any-return]
            lambda conn: guest.lookup(conn, spec.uuid).ID()
        )

    async def disks(self, spec: InstanceSpec, after: int = 0) -> list[str]:
        line = await self.console_line(spec, r"(HVD-GUEST|FAKE) disks=", after=after)
        return line.split("disks=", 1)[1].split()

    def ignore_acpi(self, spec: InstanceSpec) -> None:
        # A real guest that has just been spawned is still in the BIOS: it cannot honour ACPI.
        if isinstance(self.driver, FakeDriver):
            self.driver.set_acpi(spec.uuid, False)

    async def macs(self, spec: InstanceSpec) -> list[str]:
        if isinstance(self.driver, FakeDriver):
            return [n.mac for n in self.driver.domains[spec.uuid].nics]
        from hvd.drivers.libvirt import guest

        return await self.driver.host.call(guest.macs, spec.uuid)  # type: ignore[attr-defined,no-any-return]

    async def spawned(self, **overrides: Any) -> InstanceSpec:
        spec = self.spec(**overrides)
        started = time.monotonic()
        await self.driver.spawn(spec)
        timed("spawn_to_running_s", time.monotonic() - started)
        return spec


def _libvirt_reachable() -> str | None:
    try:
        import libvirt
    except ImportError:
        return "libvirt-python not installed"
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError as exc:
        return f"libvirtd not reachable at qemu:///system: {exc}"
    return None


async def _copy(src: Path, dest: Path) -> None:
    await asyncio.to_thread(shutil.copyfile, src, dest)


FAKE = "fake"
LIBVIRT = pytest.param("libvirt", marks=[pytest.mark.libvirt, pytest.mark.slow])
# a test of one driver's own feature runs for that driver only (not skipped for the other)
only_fake = pytest.mark.parametrize("shared_env", [FAKE], indirect=True)
only_libvirt = pytest.mark.parametrize("shared_env", [LIBVIRT], indirect=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=[FAKE, LIBVIRT])
async def shared_env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """One driver (one libvirt connection) per backend for the whole module."""
    kind: str = request.param
    root = Path("/var/tmp") / f"hvd-contract-{kind}-{secrets.token_hex(4)}"
    root.mkdir(mode=0o755)
    instances = root / "instances"
    instances.mkdir(mode=0o755)
    cache = ImageCache(instances, force_raw=True)
    driver: ComputeDriver
    if kind == "fake":
        image = cache.path_for("hvd-guest")
        image.parent.mkdir(mode=0o755)
        image.write_bytes(b"fake image")
        driver = FakeDriver(instances)
        fmt = "raw"
    else:
        reason = _libvirt_reachable()
        if reason:
            shutil.rmtree(root)
            pytest.skip(reason)
        from hvd.drivers.libvirt.driver import LibvirtDriver
        from tests.guest.helpers import guest_image_path

        source = guest_image_path()
        started = time.monotonic()
        image = await cache.ensure_cached("hvd-guest", lambda dest: _copy(source, dest), "qcow2")
        timed("image_cache_fetch_and_convert_s", time.monotonic() - started)
        fmt = cache.format_of("qcow2")
        driver = LibvirtDriver(instances, "qemu:///system", "qemu", vnc_listen="127.0.0.1")  # the product default
    await driver.start()
    yield Env(kind, driver, instances, cache, image, fmt)
    await driver.close()
    shutil.rmtree(root, ignore_errors=True)
    out = Path("/var/tmp/hvd-contract-timings.json")
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous[kind] = TIMINGS.copy()
    out.write_text(json.dumps(previous, indent=1))
    TIMINGS.clear()


@pytest_asyncio.fixture(loop_scope="module")
async def env(shared_env: Env) -> AsyncIterator[Env]:
    """The shared driver; every instance a test creates is destroyed when the test ends (TCG guests
    left running would slow the next tests down on a 2-core machine)."""
    yield shared_env
    created, shared_env.created = shared_env.created, []
    for spec in created:
        try:
            await shared_env.driver.destroy(spec)
        except Exception as exc:
            print(f"teardown: destroy {spec.uuid} failed: {exc}")


# --- spawn, list, destroy ---------------------------------------------------------------------


async def test_spawn_runs_and_lists(env: Env) -> None:
    spec = await env.spawned()
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert (await env.driver.list_domains())[spec.uuid] == PowerState.RUNNING
    for name in (DISK, DOMAIN_XML):
        assert spec.path(name).exists(), name
    assert f"<uuid>{spec.uuid}</uuid>" in spec.path(DOMAIN_XML).read_text()
    started = time.monotonic()
    await env.booted(spec)
    timed("running_to_guest_ready_s", time.monotonic() - started)
    assert await env.disks(spec) == ["vda"]
    if env.real:
        info = await qemu_img.info(spec.path(DISK), "qcow2", force_share=True)
        assert info.virtual_size == 1 << 30 and info.backing_file == str(env.image_path)


async def test_spawn_with_ephemeral_swap_and_config_drive(env: Env) -> None:
    spec = env.spec(ephemeral_gb=1, swap_mb=64)
    spec.instance_dir.mkdir(mode=0o755)
    drive = spec.instance_dir / "disk.config"
    await write_config_drive(drive, drive_files(render_meta_data(uuid=spec.uuid, name=spec.name, hostname="cd-host")))
    spec = replace(spec, config_drive=drive)
    env.created.append(spec)
    await env.driver.spawn(spec)
    assert await env.disks(spec) == ["vda", "vdb", "vdc", "vdd"]
    if env.real:
        line = await env.console_line(spec, r"HVD-GUEST hostname=")
        assert line.endswith(f"hostname=cd-host instance-id={spec.uuid}")


async def test_spawn_of_an_existing_uuid_is_refused_and_harmless(env: Env) -> None:
    spec = await env.spawned()
    with pytest.raises(Conflict):
        await env.driver.spawn(spec)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert spec.path(DISK).exists()


async def test_failed_spawn_leaves_nothing(env: Env) -> None:
    big = env.cache.base_dir / "big-image"
    if env.real:
        await qemu_img.create(big, "raw", 2 << 30)  # sparse, larger than a 1 GB root disk
    else:
        big.write_bytes(b"big")
        env.driver.image_sizes[big] = 2 << 30  # type: ignore[attr-defined]
    spec = env.spec(image_path=big, image_format="raw", root_gb=1)
    with pytest.raises(BadRequest, match=r"larger than|does not fit"):
        await env.driver.spawn(spec)
    assert spec.uuid not in await env.driver.list_domains()
    assert not spec.instance_dir.exists()


async def test_destroy_removes_domain_and_files_and_is_idempotent(env: Env) -> None:
    spec = await env.spawned()
    started = time.monotonic()
    await env.driver.destroy(spec)
    timed("destroy_s", time.monotonic() - started)
    assert spec.uuid not in await env.driver.list_domains()
    assert not spec.instance_dir.exists()
    with pytest.raises(NotFound):
        await env.driver.get_power_state(spec.uuid)
    await env.driver.destroy(spec)
    await env.driver.destroy(spec.uuid)
    await env.driver.destroy(str(uuidlib.uuid4()))


async def test_destroy_keep_disks(env: Env) -> None:
    spec = await env.spawned()
    await env.driver.destroy(spec.uuid, keep_disks=True)
    assert spec.uuid not in await env.driver.list_domains()
    assert spec.path(DISK).exists()
    await env.driver.destroy(spec.uuid)
    assert not spec.instance_dir.exists()


# --- power ------------------------------------------------------------------------------------


async def test_power_off_and_on(env: Env) -> None:
    spec = await env.spawned()
    await env.booted(spec)
    mark = await env.console_mark(spec)
    started = time.monotonic()
    await env.driver.power_off(spec.uuid, SHUTDOWN_TIMEOUT)
    timed("acpi_power_off_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.SHUTDOWN
    assert env.powered_off_cleanly(await env.since(spec, mark))  # ACPI honoured: no forced power-off
    await env.driver.power_off(spec.uuid, SHUTDOWN_TIMEOUT)  # idempotent
    assert (await env.driver.list_domains())[spec.uuid] == PowerState.SHUTDOWN
    with pytest.raises(InvalidState):
        await env.driver.pause(spec.uuid)
    mark = await env.console_mark(spec)
    started = time.monotonic()
    await env.driver.power_on(spec)
    timed("power_on_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    await env.driver.power_on(spec)  # idempotent
    await env.booted(spec, after=mark)


async def test_power_off_forces_a_guest_ignoring_acpi(env: Env) -> None:
    spec = await env.spawned()
    env.ignore_acpi(spec)
    mark = await env.console_mark(spec)
    await env.driver.power_off(spec.uuid, 1.0)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.SHUTDOWN
    assert not env.powered_off_cleanly(await env.since(spec, mark))  # pulled the plug


async def test_soft_reboot_is_a_clean_shutdown_and_a_new_boot(env: Env) -> None:
    """The guest shuts itself down (ACPI) and boots again in a new QEMU process; the console keeps
    what the first boot printed."""
    spec = await env.spawned()
    await env.booted(spec)
    before_id = await env.domain_id(spec)
    first_boot = await env.driver.console_log(spec.uuid)
    mark = len(first_boot)
    started = time.monotonic()
    await env.driver.reboot(spec.uuid, hard=False, timeout=SHUTDOWN_TIMEOUT)
    timed("soft_reboot_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert await env.domain_id(spec) not in (before_id, -1)
    await env.booted(spec, after=mark)
    after = await env.since(spec, mark)
    assert env.powered_off_cleanly(after)  # a clean reboot, not the hard fallback
    assert (await env.driver.console_log(spec.uuid)).startswith(first_boot)  # history kept
    await env.driver.power_off(spec.uuid, 0)
    with pytest.raises(InvalidState):
        await env.driver.reboot(spec.uuid, hard=False, timeout=1)


async def test_soft_reboot_falls_back_to_hard_when_acpi_is_ignored(env: Env) -> None:
    spec = await env.spawned()
    env.ignore_acpi(spec)  # the real guest is still in its BIOS: it cannot honour ACPI yet
    before_id = await env.domain_id(spec)
    mark = await env.console_mark(spec)
    await env.driver.reboot(spec.uuid, hard=False, timeout=1)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert await env.domain_id(spec) not in (before_id, -1)
    await env.booted(spec, after=mark)
    assert not env.powered_off_cleanly(await env.since(spec, mark))


async def test_hard_reboot_from_running_paused_and_stopped(env: Env) -> None:
    spec = await env.spawned()
    await env.booted(spec)
    ids = {await env.domain_id(spec)}
    mark = await env.console_mark(spec)
    started = time.monotonic()
    await env.driver.reboot(spec, hard=True, timeout=1)
    timed("hard_reboot_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    ids.add(await env.domain_id(spec))
    await env.booted(spec, after=mark)  # booted again: the console from before is kept, then a boot
    assert not env.powered_off_cleanly(await env.since(spec, mark))  # no ACPI: the plug was pulled
    await env.driver.pause(spec.uuid)
    await env.driver.reboot(spec.uuid, hard=True, timeout=1)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    ids.add(await env.domain_id(spec))
    await env.driver.power_off(spec.uuid, 0)
    mark = await env.console_mark(spec)
    await env.driver.reboot(spec, hard=True, timeout=1)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    ids.add(await env.domain_id(spec))
    assert len(ids) == 4 and -1 not in ids  # every reboot started a new QEMU process
    await env.booted(spec, after=mark)


async def test_pause_unpause_with_events(env: Env) -> None:
    spec = await env.spawned()
    stream = env.driver.events()
    started = time.monotonic()
    await env.driver.pause(spec.uuid)
    timed("pause_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.PAUSED
    await env.driver.pause(spec.uuid)  # idempotent
    with pytest.raises(InvalidState):
        await env.driver.power_on(spec)
    await env.driver.unpause(spec.uuid)
    await env.driver.unpause(spec.uuid)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    seen: list[PowerState] = []
    async with asyncio.timeout(10):
        async for uuid, power in stream:
            if uuid == spec.uuid:
                seen.append(power)
            if seen[-2:] == [PowerState.PAUSED, PowerState.RUNNING]:
                break
    stream.close()  # type: ignore[attr-defined]


async def test_suspend_resume(env: Env) -> None:
    spec = await env.spawned()
    await env.booted(spec)
    started = time.monotonic()
    await env.driver.suspend(spec.uuid)
    timed("suspend_managed_save_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.SUSPENDED
    assert (await env.driver.list_domains())[spec.uuid] == PowerState.SUSPENDED
    await env.driver.suspend(spec.uuid)  # idempotent
    with pytest.raises(InvalidState):
        await env.driver.power_on(spec)
    mark = await env.console_mark(spec)
    started = time.monotonic()
    await env.driver.resume(spec.uuid)
    timed("resume_s", time.monotonic() - started)
    await env.driver.resume(spec.uuid)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    if env.real:
        # Restored, not rebooted: heartbeats continue and no boot marker appears.
        await env.console_line(spec, r"HVD-GUEST heartbeat", timeout=15, after=mark)
    assert "boot" not in await env.since(spec, mark)
    await env.driver.power_off(spec.uuid, 0)  # discards the saved state
    with pytest.raises(InvalidState):
        await env.driver.resume(spec.uuid)


# --- rescue, snapshot ---------------------------------------------------------------------------


async def test_rescue_sees_two_disks_and_unrescue_restores(env: Env) -> None:
    spec = await env.spawned()
    await env.booted(spec)
    mark = await env.console_mark(spec)
    started = time.monotonic()
    await env.driver.rescue(spec)
    timed("rescue_s", time.monotonic() - started)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert spec.path(DISK_RESCUE).exists()
    assert await env.disks(spec, after=mark) == ["vda", "vdb"]
    await env.driver.rescue(spec)  # idempotent
    mark = await env.console_mark(spec)
    await env.driver.unrescue(spec)
    assert not spec.path(DISK_RESCUE).exists()
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert await env.disks(spec, after=mark) == ["vda"]
    await env.driver.unrescue(spec)  # idempotent


async def test_snapshot_is_standalone_and_bootable(env: Env) -> None:
    spec = await env.spawned()
    await env.booted(spec)
    dest = env.instances_path / f"snapshot-{spec.uuid}.qcow2"
    started = time.monotonic()
    await env.driver.snapshot(spec.uuid, dest)
    timed("snapshot_s", time.monotonic() - started)
    assert dest.exists() and dest.stat().st_size > 0
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING
    assert not any(p.name.endswith(".part") for p in env.instances_path.iterdir())
    if not env.real:
        return
    info = await qemu_img.info(dest)
    assert info.format == "qcow2" and info.backing_file is None
    qemu_img.check_safe_upload(info, "qcow2")
    image_id = f"snapshot-{spec.uuid}"
    base = await env.cache.ensure_cached(image_id, lambda d: _copy(dest, d), "qcow2")
    clone = await env.spawned(image_id=image_id, image_path=base, image_format=env.cache.format_of("qcow2"))
    await env.booted(clone)


async def test_snapshot_of_a_stopped_instance(env: Env) -> None:
    spec = await env.spawned()
    await env.driver.power_off(spec.uuid, 0)
    dest = env.instances_path / f"snapshot-{spec.uuid}.qcow2"
    await env.driver.snapshot(spec.uuid, dest)
    assert dest.exists()
    assert await env.driver.get_power_state(spec.uuid) == PowerState.SHUTDOWN


# --- misc ---------------------------------------------------------------------------------------


async def test_unknown_uuid_is_not_found(env: Env) -> None:
    ghost = str(uuidlib.uuid4())
    for call in (
        env.driver.get_power_state(ghost),
        env.driver.pause(ghost),
        env.driver.power_off(ghost, 0),
        env.driver.console_log(ghost),
    ):
        with pytest.raises(NotFound):
            await call


async def test_host_resources(env: Env) -> None:
    res = await env.driver.host_resources()
    assert res.vcpus >= 1 and res.memory_mib >= 256 and res.disk_gb >= 1
    assert res.arch and res.cpu_model and res.hypervisor_version > 0
    if env.real:
        assert res.hypervisor_type == "qemu"


async def test_console_log_tail(env: Env) -> None:
    spec = await env.spawned()
    await env.booted(spec)
    assert len((await env.driver.console_log(spec.uuid, 1)).splitlines()) == 1


async def read_console(session: SerialSession, wanted: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            data = await session.read()
            assert data, f"the console session ended before {wanted!r}; saw {seen[-500:]!r}"
            seen += data
    return seen


async def test_serial_console_session_display_and_screenshot(env: Env) -> None:
    """One serial session at a time, the port still logged meanwhile, the session ends with the
    guest; a VNC display that greets in RFB and a PNG screenshot; nothing of it while stopped."""
    assert {"serial", "vnc"} <= env.driver.capabilities.remote_consoles
    spec = await env.spawned()
    await env.booted(spec)
    session = await env.driver.open_serial_console(spec.uuid)
    try:
        with pytest.raises(Conflict):
            await env.driver.open_serial_console(spec.uuid)
        mark = await env.console_mark(spec)
        await session.write(b"echo contract-console\r")
        # the real guest has no shell on its serial port, but it writes a heartbeat every second
        if env.real:
            seen = await read_console(session, b"HVD-GUEST heartbeat")
            seen += await read_console(session, b"\n")  # the whole line
            said = re.findall(r"HVD-GUEST heartbeat \d+(?=\r?\n)", seen.decode(errors="replace"))[-1]
        else:
            await read_console(session, b"\r\ncontract-console\r\n")
            said = "contract-console"
        await env.console_line(spec, re.escape(said), timeout=10, after=mark)  # logged while attached
    finally:
        await session.close()
    assert await session.read() == b""
    await (await env.driver.open_serial_console(spec.uuid)).close()  # free again once detached

    address, port = await env.driver.vnc_address(spec.uuid)
    reader, writer = await asyncio.open_connection(address, port)
    try:
        assert (await asyncio.wait_for(reader.readexactly(12), 10)).startswith(b"RFB 003.00")
    finally:
        writer.close()
    width, height = png_size(await env.driver.screenshot(spec.uuid))
    assert width > 0 and height > 0

    session = await env.driver.open_serial_console(spec.uuid)
    await env.driver.power_off(spec.uuid, timeout=0)
    async with asyncio.timeout(30):
        while await session.read():  # the guest's last words, then the end
            pass
    await session.close()
    for call in (env.driver.open_serial_console, env.driver.vnc_address, env.driver.screenshot):
        with pytest.raises(InvalidState):
            await call(spec.uuid)  # type: ignore[operator]


@pytest.fixture
def bridge(env: Env) -> Iterator[str]:
    name = f"brqhvdct{secrets.token_hex(3)}"
    if env.real:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name
    if env.real:
        subprocess.run(["ip", "link", "del", name], check=False)


async def test_nics_and_hotplug(env: Env, bridge: str) -> None:
    tag = secrets.token_hex(2)
    first = Nic(f"fa:16:3e:7e:{tag[:2]}:{tag[2:]}", bridge, f"tapct{tag}a", 1450)
    second = Nic(f"fa:16:3e:7f:{tag[:2]}:{tag[2:]}", bridge, f"tapct{tag}b", 1450)
    spec = await env.spawned(nics=(first,))
    assert await env.macs(spec) == [first.mac]
    if env.real:
        assert Path(f"/sys/class/net/{first.tap}/master").resolve().name == bridge
        assert Path(f"/sys/class/net/{first.tap}/mtu").read_text().strip() == "1450"
    await env.booted(spec)  # a live unplug needs a guest that handles ACPI hotplug, not a BIOS
    started = time.monotonic()
    await env.driver.attach_interface(spec.uuid, second)
    timed("attach_interface_s", time.monotonic() - started)
    await env.driver.attach_interface(spec.uuid, second)  # idempotent
    assert await env.macs(spec) == [first.mac, second.mac]
    started = time.monotonic()
    await env.driver.detach_interface(spec.uuid, second)
    timed("detach_interface_s", time.monotonic() - started)
    await env.driver.detach_interface(spec.uuid, second)
    assert await env.macs(spec) == [first.mac]


async def test_domains_of_another_instances_path_are_not_listed(env: Env) -> None:
    """Two drivers on one hypervisor (two daemons, or two test suites) never list each other's."""
    other_path = env.instances_path.parent / "other-instances"
    other_path.mkdir(mode=0o755, exist_ok=True)
    other: ComputeDriver
    if env.real:
        from hvd.drivers.libvirt.driver import LibvirtDriver

        other = LibvirtDriver(other_path, "qemu:///system", "qemu")
    else:
        other = FakeDriver(other_path)
    await other.start()
    try:
        mine = await env.spawned()
        theirs = env.spec(instance_dir=other_path / "x")
        theirs = replace(theirs, instance_dir=other_path / theirs.uuid)
        env.created.append(theirs)
        await other.spawn(theirs)
        assert theirs.uuid not in await env.driver.list_domains()
        assert mine.uuid in await env.driver.list_domains()
        assert set(await other.list_domains()) == {theirs.uuid}
        await other.destroy(theirs)
    finally:
        await other.close()


async def test_failed_spawn_with_reuse_disks_keeps_the_disks(env: Env) -> None:
    """Resize/revert respawn on kept disks: a failure must never delete the user's disk."""
    spec = await env.spawned()
    await env.driver.destroy(spec.uuid, keep_disks=True)
    inode = spec.path(DISK).stat().st_ino
    broken = replace(spec, reuse_disks=True, config_drive=spec.instance_dir / "missing.config")
    if isinstance(env.driver, FakeDriver):
        env.driver.fail("spawn")
    with pytest.raises(HvdError):
        await env.driver.spawn(broken)
    assert spec.path(DISK).stat().st_ino == inode
    assert spec.uuid not in await env.driver.list_domains()
    await env.driver.spawn(replace(spec, reuse_disks=True))
    assert spec.path(DISK).stat().st_ino == inode  # booted from the kept disk, not a new one
    assert await env.driver.get_power_state(spec.uuid) == PowerState.RUNNING


@only_fake
async def test_injected_failure_then_success(env: Env) -> None:
    """Failure injection is how the fake stands in for a failing hypervisor in functional tests."""
    assert isinstance(env.driver, FakeDriver)
    spec = await env.spawned()
    env.driver.fail("pause", InvalidState("injected"))
    with pytest.raises(InvalidState, match="injected"):
        await env.driver.pause(spec.uuid)
    await env.driver.pause(spec.uuid)
    assert await env.driver.get_power_state(spec.uuid) == PowerState.PAUSED
    env.driver.fail("spawn")
    failed = env.spec()
    with pytest.raises(HvdError):
        await env.driver.spawn(failed)
    assert failed.uuid not in await env.driver.list_domains() and not failed.instance_dir.exists()


@only_libvirt
async def test_reconnects_after_a_lost_connection(env: Env) -> None:
    host = env.driver.host  # type: ignore[attr-defined]
    before = host.reconnects
    host._dead = True  # what the close callback does when libvirtd goes away
    spec = await env.spawned()
    assert spec.uuid in await env.driver.list_domains()
    assert host.reconnects == before + 1


# --- volumes ------------------------------------------------------------------------------------


def _volume_file(env: Env, size: int = 64 << 20, copy_of: Path | None = None) -> tuple[str, Path]:
    """A raw volume file outside the instance directories (as a volume backend keeps them)."""
    directory = env.instances_path.parent / "volumes"
    directory.mkdir(mode=0o755, exist_ok=True)
    volume_id = str(uuidlib.uuid4())
    path = directory / f"volume-{volume_id}"
    if copy_of is not None:
        shutil.copyfile(copy_of, path)
    else:
        with path.open("wb") as f:
            f.truncate(size)
    path.chmod(0o644)
    return volume_id, path


async def _volume_devs(env: Env, spec: InstanceSpec, live: bool = True) -> dict[str, str]:
    """serial → target dev of the volumes the domain has (live, or its persistent definition)."""
    if isinstance(env.driver, FakeDriver):
        return {v.serial: v.dev for v in env.driver.domains[spec.uuid].volumes.values()}
    from hvd.drivers.libvirt import guest
    from hvd.drivers.libvirt.volume_xml import volume_targets

    flags = 0 if live else 2  # VIR_DOMAIN_XML_INACTIVE
    xml = await env.driver.host.call(lambda conn: guest.lookup(conn, spec.uuid).XMLDesc(flags))  # type: ignore[attr-defined]
    return volume_targets(xml)


async def _guest_size(env: Env, spec: InstanceSpec, volume_id: str) -> int:
    """The volume's size as the running guest's QEMU sees it."""
    if isinstance(env.driver, FakeDriver):
        return env.driver.domains[spec.uuid].volume_sizes[volume_id]
    from hvd.drivers.libvirt import guest

    dev = (await _volume_devs(env, spec))[volume_id[:20]]
    info = await env.driver.host.call(lambda conn: guest.lookup(conn, spec.uuid).blockInfo(dev))  # type: ignore[attr-defined]
    return int(info[0])


async def test_volume_hotplug_extend_and_detach(env: Env) -> None:
    volume_id, path = _volume_file(env)
    spec = await env.spawned()
    await env.booted(spec)  # a live unplug needs a guest that handles ACPI hotplug
    vol = VolumeDisk(volume_id, "vdb", "file", path=str(path))
    started = time.monotonic()
    assert await env.driver.attach_volume(spec.uuid, vol) == "vdb"
    timed("attach_volume_s", time.monotonic() - started)
    assert await env.driver.attach_volume(spec.uuid, vol) == "vdb"  # idempotent
    assert await _volume_devs(env, spec) == {volume_id[:20]: "vdb"}
    assert await _volume_devs(env, spec, live=False) == {volume_id[:20]: "vdb"}
    # a second volume asking for a taken device gets the next free one
    other_id, other_path = _volume_file(env)
    assert await env.driver.attach_volume(spec.uuid, VolumeDisk(other_id, "vdb", "file", path=str(other_path))) == "vdc"
    await env.driver.detach_volume(spec.uuid, other_id, 30)

    with path.open("r+b") as f:  # the backend grew the file; the guest is told
        f.truncate(128 << 20)
    await env.driver.extend_volume(spec.uuid, volume_id, 128 << 20)
    assert await _guest_size(env, spec, volume_id) == 128 << 20

    started = time.monotonic()
    await env.driver.detach_volume(spec.uuid, volume_id, 30)
    timed("detach_volume_s", time.monotonic() - started)
    await env.driver.detach_volume(spec.uuid, volume_id, 30)  # idempotent
    assert await _volume_devs(env, spec) == {}
    assert await _volume_devs(env, spec, live=False) == {}


async def test_volume_detach_refused_by_the_guest_leaves_it_attached(env: Env) -> None:
    volume_id, path = _volume_file(env)
    spec = await env.spawned()  # not booted: a guest still in its BIOS never acknowledges an unplug
    if isinstance(env.driver, FakeDriver):
        env.driver.set_volume_release(spec.uuid, False)
    await env.driver.attach_volume(spec.uuid, VolumeDisk(volume_id, "vdb", "file", path=str(path)))
    with pytest.raises(DriverError, match="did not release volume"):
        await env.driver.detach_volume(spec.uuid, volume_id, 0.5)
    assert await _volume_devs(env, spec, live=False) == {volume_id[:20]: "vdb"}


async def test_boot_from_volume_with_a_data_volume_across_a_power_cycle(env: Env) -> None:
    boot_id, boot_path = _volume_file(env, copy_of=env.image_path if env.real else None)
    data_id, data_path = _volume_file(env)
    spec = await env.spawned(volumes=(VolumeDisk(boot_id, "vda", "file", path=str(boot_path)),
                                      VolumeDisk(data_id, "vdb", "file", path=str(data_path))))
    assert not spec.path(DISK).exists()  # the boot volume is the root disk
    assert spec.uuid in await env.driver.list_domains()
    await env.booted(spec)
    assert await env.disks(spec) == ["vda", "vdb"]
    assert await _volume_devs(env, spec) == {boot_id[:20]: "vda", data_id[:20]: "vdb"}
    await env.driver.power_off(spec.uuid, 0)
    # attached while off: in the persistent definition only, and in the next boot
    third_id, third_path = _volume_file(env)
    third = VolumeDisk(third_id, "vdc", "file", path=str(third_path))
    assert await env.driver.attach_volume(spec.uuid, third) == "vdc"
    await env.driver.detach_volume(spec.uuid, data_id, 5)  # off: from the persistent definition at once
    assert await _volume_devs(env, spec, live=False) == {boot_id[:20]: "vda", third_id[:20]: "vdc"}
    mark = await env.console_mark(spec)
    await env.driver.power_on(replace(spec, volumes=(spec.volumes[0], third)))
    await env.booted(spec, after=mark)
    assert await env.disks(spec, after=mark) == ["vda", "vdb"]  # the guest names disks in probe order
    assert await _volume_devs(env, spec) == {boot_id[:20]: "vda", third_id[:20]: "vdc"}
