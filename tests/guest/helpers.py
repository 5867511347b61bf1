"""Helpers for tests that boot the hvd test guest (guest/build.sh) under libvirt with TCG.

The guest prints ``HVD-GUEST ...`` markers on its serial console (see guest/init):
``boot variant=<v>``, ``mem_kb=<n> cpus=<n>``, ``disks=<names>``, ``disk <name> bytes=<n>``,
``lease <if> <ip>/<prefix> gw=<gw>`` or ``nolease <if>``, ``route <if> <dst> via <gw>`` (DHCP option 121),
``hostname=<h> instance-id=<id>`` or
``no-config-drive``, ``user-data start``, ``ready``, ``heartbeat <n>`` and ``poweroff``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "guest" / "build.sh"
IMAGE_DIR = REPO_ROOT / "build" / "guest"
IMAGES = {"main": "hvd-guest.qcow2", "alt": "hvd-guest-alt.qcow2"}
MARKER = "HVD-GUEST"

_build_lock = threading.Lock()
_built = False


def guest_image_path(variant: str = "main") -> Path:
    """Path of the built guest image ``variant`` ("main" or "alt"), building it first if needed.

    build.sh is cached (a warm run takes a few ms), so it runs once per process and decides itself
    whether anything changed.
    """
    global _built
    if variant not in IMAGES:
        raise ValueError(f"unknown guest variant {variant!r}; expected one of {sorted(IMAGES)}")
    with _build_lock:
        if not _built:
            subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
            _built = True
    return IMAGE_DIR / IMAGES[variant]


def make_searchable_dir(parent: str | os.PathLike[str] | None = None, prefix: str = "hvdtest-") -> Path:
    """A new temporary directory that user libvirt-qemu can traverse (mkdtemp makes 0700 ones)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def make_overlay(base: Path, dest: Path) -> Path:
    """A qcow2 overlay ``dest`` backed by ``base`` (the base is never written)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(dest)],
        check=True,
    )
    dest.chmod(0o644)
    return dest


def _disk_format(path: Path) -> str:
    return "qcow2" if path.suffix == ".qcow2" else "raw"


def domain_xml(
    name: str,
    disk_path: str | os.PathLike[str],
    *,
    memory_mib: int = 128,
    vcpus: int = 1,
    console_log: str | os.PathLike[str],
    extra_disks: Iterable[str | os.PathLike[str]] = (),
    interfaces: Iterable[str | Mapping[str, str]] = (),
) -> str:
    """Libvirt XML for a TCG guest booting ``disk_path`` (vda) with its serial console in a file.

    ``extra_disks`` become vdb, vdc, ... (qcow2 if the name ends in .qcow2, else raw).
    ``interfaces``: a bridge name, or a mapping with ``type`` (bridge|network|ethernet, default
    bridge), ``source`` (bridge or network name), and optional ``mac`` and ``target`` (tap name).
    """
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")

    disks = [Path(disk_path), *(Path(d) for d in extra_disks)]
    for index, path in enumerate(disks):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=_disk_format(path))
        ET.SubElement(disk, "source", file=str(path))
        ET.SubElement(disk, "target", dev="vd" + chr(ord("a") + index), bus="virtio")

    for spec in interfaces:
        item: Mapping[str, str] = {"source": spec} if isinstance(spec, str) else spec
        kind = item.get("type", "bridge")
        iface = ET.SubElement(devices, "interface", type=kind)
        if kind == "bridge":
            ET.SubElement(iface, "source", bridge=item["source"])
        elif kind == "network":
            ET.SubElement(iface, "source", network=item["source"])
        if "mac" in item:
            ET.SubElement(iface, "mac", address=item["mac"])
        if "target" in item:
            ET.SubElement(iface, "target", dev=item["target"])
        ET.SubElement(iface, "model", type="virtio")

    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console_log))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def define_tcg_domain(
    conn: Any,
    name: str,
    disk_path: str | os.PathLike[str],
    memory_mib: int = 128,
    vcpus: int = 1,
    console_log: str | os.PathLike[str] | None = None,
    extra_disks: Iterable[str | os.PathLike[str]] = (),
    interfaces: Iterable[str | Mapping[str, str]] = (),
) -> Any:
    """Define (not start) a TCG domain on libvirt connection ``conn``; returns the virDomain.

    ``console_log`` defaults to ``<disk dir>/<name>.console.log``; its directory must be
    searchable by libvirt-qemu. See :func:`domain_xml` for the other arguments.
    """
    if console_log is None:
        console_log = Path(disk_path).parent / f"{name}.console.log"
    xml = domain_xml(
        name,
        disk_path,
        memory_mib=memory_mib,
        vcpus=vcpus,
        console_log=console_log,
        extra_disks=extra_disks,
        interfaces=interfaces,
    )
    return conn.defineXML(xml)


def wait_for_console(path: str | os.PathLike[str], pattern: str | re.Pattern[str], timeout: float) -> str:
    """Poll the console log ``path`` until a line matches the regex ``pattern``; return that line.

    Raises TimeoutError (with the log's tail) if no line matches within ``timeout`` seconds.
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        try:
            text = Path(path).read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            if regex.search(line):
                return line.rstrip("\r")
        if time.monotonic() >= deadline:
            tail = "\n".join(text.splitlines()[-25:])
            raise TimeoutError(
                f"no line matching {regex.pattern!r} in {path} after {timeout} s; tail:\n{tail}"
            )
        time.sleep(0.1)


def make_config_drive(
    directory: str | os.PathLike[str],
    hostname: str,
    uuid: str,
    user_data: str | bytes | None = None,
) -> Path:
    """An OpenStack-style config drive: a raw vfat image labelled ``config-2`` holding
    openstack/latest/meta_data.json (and user_data if given). Built with mtools, no mounting.
    """
    directory = Path(directory)
    image = directory / f"config-drive-{uuid}.img"
    staging = directory / f".config-drive-{uuid}"
    staging.mkdir()
    try:
        meta = {"uuid": uuid, "hostname": hostname, "name": hostname, "launch_index": 0}
        (staging / "meta_data.json").write_text(json.dumps(meta))
        files = [staging / "meta_data.json"]
        if user_data is not None:
            data = user_data.encode() if isinstance(user_data, str) else user_data
            (staging / "user_data").write_bytes(data)
            files.append(staging / "user_data")
        image.unlink(missing_ok=True)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        subprocess.run(
            ["mkfs.vfat", "-C", "-n", "config-2", str(image), "2048"],
            check=True,
            capture_output=True,
        )
        for folder in ("::/openstack", "::/openstack/latest"):
            subprocess.run(["mmd", "-i", str(image), folder], check=True, env=env)
        subprocess.run(
            ["mcopy", "-i", str(image), *map(str, files), "::/openstack/latest/"], check=True, env=env
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    image.chmod(0o644)
    return image
