"""The test guest image boots under libvirt/TCG and does what other tests rely on.

Network safety: the DHCP server runs in a network namespace this test creates, reached through a
bridge with no address in the root namespace; the lab CIDR gets an `unreachable` route in the root
namespace while the test runs.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.guest.helpers import (
    define_tcg_domain,
    guest_image_path,
    make_config_drive,
    make_overlay,
    make_searchable_dir,
    wait_for_console,
)

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.libvirt

BOOT_TIMEOUT = 60.0  # TCG boot is ~5 s here; a loaded machine can be much slower
SHUTDOWN_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    try:
        connection = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        pytest.skip(f"libvirtd not reachable at qemu:///system: {exc}")
    yield connection
    connection.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_searchable_dir(prefix="hvdtest-guest-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Guest:
    dom: Any
    console: Path


@pytest.fixture
def boot(conn: Any, workdir: Path) -> Iterator[Any]:
    """boot(variant, extra_disks=..., interfaces=...) -> Guest; every domain is removed afterwards."""
    domains: list[Any] = []

    def _boot(variant: str = "main", **kwargs: Any) -> Guest:
        name = f"hvdtest-guest-{secrets.token_hex(4)}"
        disk = make_overlay(guest_image_path(variant), workdir / f"{name}.qcow2")
        console = workdir / f"{name}.console.log"
        dom = define_tcg_domain(conn, name, disk, console_log=console, **kwargs)
        domains.append(dom)
        dom.create()
        return Guest(dom, console)

    yield _boot
    for dom in domains:
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class DhcpLan:
    bridge: str  # guest NICs here get leases from dnsmasq
    silent_bridge: str  # no DHCP server: guest NICs here must report "nolease"
    server_ip: str
    prefix: str


@pytest.fixture
def dhcp_lan(workdir: Path) -> Iterator[DhcpLan]:
    tag = secrets.token_hex(3)
    netns, bridge, silent = f"hvdtest-guest-{tag}", f"hvdtgb-{tag}", f"hvdtgs-{tag}"
    veth, peer = f"hvdtgv-{tag}", f"hvdtgp-{tag}"
    net = f"10.251.{secrets.randbelow(250) + 2}"
    cidr = f"{net}.0/24"
    undo: list[list[str]] = []
    dnsmasq: subprocess.Popen[bytes] | None = None
    dnsmasq_log = workdir / "dnsmasq.log"
    try:
        _run("ip", "route", "add", "unreachable", cidr)  # root-namespace guard for the lab CIDR
        undo.append(["ip", "route", "del", "unreachable", cidr])
        _run("ip", "netns", "add", netns)
        undo.append(["ip", "netns", "del", netns])
        for br in (bridge, silent):
            _run("ip", "link", "add", br, "type", "bridge")
            undo.append(["ip", "link", "del", br])
            _run("sysctl", "-qw", f"net.ipv6.conf.{br}.disable_ipv6=1")
            _run("ip", "link", "set", br, "up")
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", netns)
        undo.append(["ip", "link", "del", veth])
        _run("ip", "link", "set", veth, "master", bridge, "up")
        ns = ["ip", "netns", "exec", netns]
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "addr", "add", f"{net}.1/24", "dev", peer)
        _run(*ns, "ip", "link", "set", peer, "up")
        dnsmasq = subprocess.Popen(
            [
                *ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                f"--interface={peer}",
                "--bind-interfaces",
                f"--dhcp-range={net}.50,{net}.99,255.255.255.0,1h",
                f"--dhcp-option=option:router,{net}.1",
                f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}",
                "--pid-file=",
                "--log-facility=-",
                "--log-dhcp",
            ],
            stdout=subprocess.DEVNULL,
            stderr=dnsmasq_log.open("wb"),
        )
        time.sleep(0.2)
        if dnsmasq.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {dnsmasq_log.read_text(errors='replace')}")
        yield DhcpLan(bridge=bridge, silent_bridge=silent, server_ip=f"{net}.1", prefix=net)
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            try:
                dnsmasq.wait(timeout=5)
            except subprocess.TimeoutExpired:
                dnsmasq.kill()
                dnsmasq.wait()
        for argv in reversed(undo):
            subprocess.run(argv, capture_output=True)


def _wait_shut_off(guest: Guest, timeout: float) -> float:
    start = time.monotonic()
    guest.dom.shutdown()  # ACPI power button
    while time.monotonic() - start < timeout:
        if guest.dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(
        f"{guest.dom.name()} still running {timeout} s after ACPI shutdown; console:\n"
        + guest.console.read_text(errors="replace")[-2000:]
    )


def test_config_drive_user_data_dhcp_and_acpi_shutdown(boot: Any, workdir: Path, dhcp_lan: DhcpLan) -> None:
    instance_id = str(uuid.uuid4())
    hostname = f"hvd-{secrets.token_hex(3)}"
    data_disk = workdir / "data.raw"
    data_disk.write_bytes(b"\0" * (1 << 20))
    data_disk.chmod(0o666)
    user_data = (
        "#!/bin/sh\n"
        "echo USERDATA-OK host=$(hostname)\n"
        "printf HVD-DATA-WRITTEN | dd of=/dev/vdc conv=notrunc 2>/dev/null && sync && echo DATA-OK\n"
        "while ! ip -4 addr show dev eth0 | grep -q inet; do sleep 0.2; done\n"
        f"ping -c 1 -W 2 {dhcp_lan.server_ip} >/dev/null && echo PING-OK\n"
    )
    drive = make_config_drive(workdir, hostname, instance_id, user_data)
    guest = boot(
        "main",
        extra_disks=[drive, data_disk],
        interfaces=[dhcp_lan.bridge, dhcp_lan.silent_bridge],
    )
    log = guest.console

    wait_for_console(log, r"HVD-GUEST ready", BOOT_TIMEOUT)
    assert wait_for_console(log, r"HVD-GUEST boot ", 0) == "HVD-GUEST boot variant=main"
    assert wait_for_console(log, r"HVD-GUEST hostname=", 0) == (
        f"HVD-GUEST hostname={hostname} instance-id={instance_id}"
    )
    assert wait_for_console(log, r"HVD-GUEST disks=", 0) == "HVD-GUEST disks=vda vdb vdc"
    assert wait_for_console(log, r"HVD-GUEST disk vdc ", 0) == f"HVD-GUEST disk vdc bytes={1 << 20}"
    lease = wait_for_console(log, r"HVD-GUEST lease eth0 ", 0)
    assert lease.startswith(f"HVD-GUEST lease eth0 {dhcp_lan.prefix}.")
    assert lease.endswith(f"/24 gw={dhcp_lan.server_ip}")
    assert wait_for_console(log, r"HVD-GUEST nolease", 0) == "HVD-GUEST nolease eth1"
    assert wait_for_console(log, r"USERDATA-OK", 10) == f"USERDATA-OK host={hostname}"
    wait_for_console(log, r"^DATA-OK", 10)
    wait_for_console(log, r"^PING-OK", 15)
    wait_for_console(log, r"HVD-GUEST heartbeat 1$", 10)

    _wait_shut_off(guest, SHUTDOWN_TIMEOUT)
    wait_for_console(log, r"HVD-GUEST poweroff$", 0)
    assert data_disk.read_bytes().startswith(b"HVD-DATA-WRITTEN")


def test_alt_variant_boots_without_config_drive_or_nics(boot: Any) -> None:
    guest = boot("alt")
    log = guest.console
    started = time.monotonic()
    wait_for_console(log, r"HVD-GUEST ready", BOOT_TIMEOUT)
    boot_to_ready = time.monotonic() - started
    assert wait_for_console(log, r"HVD-GUEST boot ", 0) == "HVD-GUEST boot variant=alt"
    assert wait_for_console(log, r"HVD-GUEST mem_kb=", 0).endswith(" cpus=1")
    wait_for_console(log, r"HVD-GUEST no-config-drive", 0)
    assert wait_for_console(log, r"HVD-GUEST disks=", 0) == "HVD-GUEST disks=vda"
    wait_for_console(log, r"HVD-GUEST heartbeat 2$", 10)
    elapsed = _wait_shut_off(guest, SHUTDOWN_TIMEOUT)
    wait_for_console(log, r"HVD-GUEST poweroff$", 0)
    print(f"boot→ready {boot_to_ready:.1f} s, ACPI shutdown→shut off {elapsed:.1f} s")


def test_main_and_alt_images_are_distinct() -> None:
    main, alt = guest_image_path("main"), guest_image_path("alt")
    assert main.is_file() and alt.is_file()
    assert main.read_bytes() != alt.read_bytes()
