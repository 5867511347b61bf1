"""Domain XML from an InstanceSpec: pure, no I/O, no policy beyond the spec and the virt type.

Disk order is fixed: vda root, then ephemeral, swap and the config drive as the last virtio disk;
in rescue ``disk.rescue`` is vda and the instance's ``disk`` vdb. The serial port is a pty (an
interactive console through libvirt's virDomainOpenConsole) whose output is also logged to
``console.log``; with ``vnc_listen`` a VNC display listens there (a loopback address is valid on
every host, so live migration keeps it).
"""

from __future__ import annotations

import string
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hvd.drivers.base import (
    CONSOLE_LOG,
    DISK,
    DISK_EPH0,
    DISK_RESCUE,
    DISK_SWAP,
    InstanceSpec,
    Nic,
)
from hvd.drivers.libvirt.volume_xml import add_volume_disks

METADATA_NS = "https://hvd.dev/xmlns/libvirt/instance/1"
VirtType = Literal["kvm", "qemu"]


@dataclass(frozen=True)
class DiskDevice:
    """One guest disk: file, its format, and the guest device (vda, vdb, ...)."""

    path: Path
    fmt: str
    dev: str


def disk_dev(index: int) -> str:
    """vda, vdb, ..., vdz (26 disks are far more than an instance has)."""
    return "vd" + string.ascii_lowercase[index]


def disk_layout(spec: InstanceSpec) -> list[DiskDevice]:
    """The guest disks of ``spec`` in device order."""
    files: list[tuple[Path, str]] = []
    if spec.rescue:
        files.append((spec.path(DISK_RESCUE), "qcow2"))
    if not spec.boots_from_volume:  # else the boot volume is vda (volume_xml)
        files.append((spec.path(DISK), "qcow2"))
    if spec.ephemeral_gb > 0:
        files.append((spec.path(DISK_EPH0), "qcow2"))
    if spec.swap_mb > 0:
        files.append((spec.path(DISK_SWAP), "qcow2"))
    if spec.config_drive is not None:
        files.append((spec.config_drive, "raw"))
    first = 1 if spec.boots_from_volume and not spec.rescue else 0  # vda is the boot volume
    return [DiskDevice(path, fmt, disk_dev(first + i)) for i, (path, fmt) in enumerate(files)]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _disk(devices: ET.Element, disk: DiskDevice, cache: str) -> None:
    el = _sub(devices, "disk", type="file", device="disk")
    _sub(el, "driver", name="qemu", type=disk.fmt, cache=cache)
    _sub(el, "source", file=str(disk.path))
    _sub(el, "target", dev=disk.dev, bus="virtio")


def interface_element(nic: Nic) -> ET.Element:
    """``<interface type='bridge'>`` of one NIC (also used for hot-plug)."""
    el = ET.Element("interface", type="bridge")
    _sub(el, "mac", address=nic.mac)
    _sub(el, "source", bridge=nic.bridge)
    _sub(el, "target", dev=nic.tap)
    _sub(el, "model", type="virtio")
    _sub(el, "mtu", size=str(nic.mtu))
    return el


def interface_xml(nic: Nic) -> str:
    return ET.tostring(interface_element(nic), encoding="unicode")


def _metadata(domain: ET.Element, spec: InstanceSpec) -> None:
    # Lets an operator (and orphan cleanup) tell which instance a domain is, without the catalog.
    meta = _sub(domain, "metadata")
    inst = _sub(meta, f"{{{METADATA_NS}}}instance")
    for tag, value in (
        ("name", spec.name),
        ("hostname", spec.hostname),
        ("image", spec.image_id),
        ("vcpus", str(spec.vcpus)),
        ("memory_mib", str(spec.memory_mib)),
        ("root_gb", str(spec.root_gb)),
    ):
        _sub(inst, f"{{{METADATA_NS}}}{tag}", value)


def _sysinfo(domain: ET.Element, spec: InstanceSpec) -> None:
    # cloud-init recognises an OpenStack guest by the SMBIOS product name.
    sysinfo = _sub(domain, "sysinfo", type="smbios")
    system = _sub(sysinfo, "system")
    for name, value in (
        ("manufacturer", "hvd"),
        ("product", "OpenStack Compute"),
        ("serial", spec.uuid),
        ("uuid", spec.uuid),
        ("family", "Virtual Machine"),
    ):
        _sub(system, "entry", value, name=name)


def _serial_console(devices: ET.Element, spec: InstanceSpec) -> None:
    # A pty, so a user can attach (virDomainOpenConsole); <log> keeps everything the guest writes
    # in console.log whether or not someone is attached. append: the log outlives QEMU restarts
    # (hard reboot, stop/start, crash); libvirt hands the file to virtlogd (qemu.conf stdio_handler
    # "logd"), which caps it by rotation (max_size).
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(spec.path(CONSOLE_LOG)), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def _vnc(devices: ET.Element, listen: str) -> None:
    # autoport: libvirt picks a free port from 5900 at each start; the proxy reads it from the live XML
    graphics = _sub(devices, "graphics", type="vnc", autoport="yes", listen=listen)
    _sub(graphics, "listen", type="address", address=listen)
    video = _sub(devices, "video")
    _sub(video, "model", type="vga", heads="1")


def domain_xml(spec: InstanceSpec, virt_type: VirtType, disk_cache: str = "none",
               vnc_listen: str | None = None) -> str:
    """The libvirt domain XML of ``spec``.

    ``virt_type`` kvm adds ``<cpu mode='host-model'/>``; qemu (TCG) keeps QEMU's default CPU.
    ``disk_cache`` is the QEMU cache mode; the driver picks it (none needs O_DIRECT support).
    ``vnc_listen`` adds a VNC display on that address (port chosen by libvirt) and a VGA card;
    None: no graphics at all.
    """
    ET.register_namespace("hvd", METADATA_NS)
    domain = ET.Element("domain", type=virt_type)
    _sub(domain, "name", spec.domain_name)
    _sub(domain, "uuid", spec.uuid)
    _sub(domain, "title", spec.name)
    _metadata(domain, spec)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")
    _sysinfo(domain, spec)
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm")
    _sub(os_el, "boot", dev="hd")
    _sub(os_el, "smbios", mode="sysinfo")
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if virt_type == "kvm":
        _sub(domain, "cpu", mode="host-model")
    clock = _sub(domain, "clock", offset="utc")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    for disk in disk_layout(spec):
        _disk(devices, disk, disk_cache)
    add_volume_disks(devices, spec, disk_cache)
    for nic in spec.nics:
        devices.append(interface_element(nic))
    _serial_console(devices, spec)
    if vnc_listen is not None:
        _vnc(devices, vnc_listen)
    _sub(devices, "memballoon", model="virtio")

    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"
