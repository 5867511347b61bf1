"""Blocking helpers for volumes on one libvirt domain; they run in LibvirtHost's worker threads.

A volume is found in a domain by its disk ``<serial>`` (the volume id cut to 20 bytes), never by
its target dev, which the guest does not see anyway.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from hvd.drivers.libvirt.guest import lookup
from hvd.drivers.volumes import SERIAL_LEN
from hvd.errors import NotFound

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG


def _disks(dom: Any, inactive: bool) -> list[ET.Element]:
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    return list(ET.fromstring(dom.XMLDesc(flags)).iterfind("devices/disk"))


def _find(disks: list[ET.Element], volume_id: str) -> ET.Element | None:
    serial = volume_id[:SERIAL_LEN]
    return next((d for d in disks if d.findtext("serial") == serial), None)


def _dev(disk: ET.Element) -> str:
    target = disk.find("target")
    return "" if target is None else target.get("dev", "")


def targets_in_use(conn: Any, uuid: str) -> set[str]:
    """Target devs of every disk of the domain, live and persistent."""
    dom = lookup(conn, uuid)
    disks = _disks(dom, inactive=True) + (_disks(dom, inactive=False) if dom.isActive() else [])
    return {_dev(d) for d in disks}


def attach(conn: Any, uuid: str, volume_id: str, xml: str) -> str:
    """Attach where the volume is missing (live when active, persistent always); its target dev."""
    dom = lookup(conn, uuid)
    active = bool(dom.isActive())
    live = _find(_disks(dom, inactive=False), volume_id) if active else None
    config = _find(_disks(dom, inactive=True), volume_id)
    flags = (LIVE if active and live is None else 0) | (CONFIG if config is None else 0)
    if flags:
        dom.attachDeviceFlags(xml, flags)
    found = live if live is not None else config
    return _dev(found) if found is not None else _dev(ET.fromstring(xml))


def live_disk_xml(conn: Any, uuid: str, volume_id: str) -> str | None:
    """The volume's ``<disk>`` in the running domain; None when it is not there (or the domain is off)."""
    dom = lookup(conn, uuid)
    if not dom.isActive():
        return None
    disk = _find(_disks(dom, inactive=False), volume_id)
    return None if disk is None else ET.tostring(disk, encoding="unicode")


def request_live_detach(conn: Any, uuid: str, xml: str) -> None:
    """Ask the guest to release the disk; completion is seen in the live XML (or an event)."""
    dom = lookup(conn, uuid)
    try:
        dom.detachDeviceFlags(xml, LIVE)
    except libvirt.libvirtError as exc:
        # a request still pending from a previous attempt: the guest has it, keep waiting
        if "in the process of unplug" not in str(exc) and exc.get_error_code() != libvirt.VIR_ERR_DEVICE_MISSING:
            raise


def detach_config(conn: Any, uuid: str, volume_id: str) -> None:
    """Remove the volume from the persistent definition; no-op when absent."""
    dom = lookup(conn, uuid)
    disk = _find(_disks(dom, inactive=True), volume_id)
    if disk is not None:
        dom.detachDeviceFlags(ET.tostring(disk, encoding="unicode"), CONFIG)


def block_resize(conn: Any, uuid: str, volume_id: str, size: int) -> bool:
    """Grow the volume as the running guest sees it; False when the domain is off."""
    dom = lookup(conn, uuid)
    if not dom.isActive():
        return False
    disk = _find(_disks(dom, inactive=False), volume_id)
    if disk is None:
        raise NotFound(f"volume {volume_id} is not attached to instance {uuid}")
    dom.blockResize(_dev(disk), size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    return True


def persistent_volumes(conn: Any, uuid: str) -> dict[str, str]:
    """serial → target dev of the disks with a serial in the persistent definition."""
    disks = _disks(lookup(conn, uuid), inactive=True)
    return {d.findtext("serial") or "": _dev(d) for d in disks if d.findtext("serial")}
