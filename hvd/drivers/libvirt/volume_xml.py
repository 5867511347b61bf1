"""libvirt ``<disk>`` elements of attached volumes: pure, no I/O, no policy beyond the VolumeDisk.

Every volume is a virtio-blk disk whose ``<serial>`` is the volume id (the guest's stable name).
``cache`` is the driver's choice for the volume's storage; ``io='native'`` (Linux AIO) goes with
``cache='none'`` on local files and block devices only, where QEMU supports it.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from hvd.drivers.base import InstanceSpec
from hvd.drivers.volumes import VolumeDisk, place_devices


def disk_element(vol: VolumeDisk, cache: str = "none") -> ET.Element:
    """The ``<disk>`` of one volume (also the document of a hot-plug or unplug)."""
    cache = vol.cache or cache
    kind = {"file": "file", "block": "block", "nbd": "network"}[vol.kind]
    el = ET.Element("disk", type=kind, device="disk")
    driver = {"name": "qemu", "type": vol.fmt if vol.kind == "file" else "raw", "cache": cache}
    if cache == "none" and vol.kind in ("file", "block"):
        driver["io"] = "native"
    if vol.kind != "nbd":
        driver["discard"] = "unmap"  # a guest's TRIM frees space in a sparse file or thin LV
    ET.SubElement(el, "driver", driver)
    if vol.kind == "file":
        ET.SubElement(el, "source", file=vol.path)
    elif vol.kind == "block":
        ET.SubElement(el, "source", dev=vol.path)
    else:
        attrs = {"protocol": "nbd", "name": vol.export}
        if vol.tls:
            attrs["tls"] = "yes"  # libvirt's x509 NBD client certificates (qemu.conf nbd_tls_x509_cert_dir)
        source = ET.SubElement(el, "source", attrs)
        ET.SubElement(source, "host", name=vol.host, port=str(vol.port))
    ET.SubElement(el, "target", dev=vol.dev, bus="virtio")
    ET.SubElement(el, "serial").text = vol.serial
    if vol.read_only:
        ET.SubElement(el, "readonly")
    if vol.shareable:
        ET.SubElement(el, "shareable")
    return el


def disk_xml(vol: VolumeDisk, cache: str = "none") -> str:
    return ET.tostring(disk_element(vol, cache), encoding="unicode")


def add_volume_disks(devices: ET.Element, spec: InstanceSpec, cache: str = "none") -> None:
    """Add ``spec.volumes`` to a domain's ``<devices>`` that holds only the local disks so far.

    The boot volume (dev vda) goes first, so the BIOS boots it; the others follow the local disks
    at devices that do not collide with them.
    """
    local = [d.get("dev", "") for d in devices.iterfind("disk/target")]
    for vol in place_devices(local, spec.volumes):
        if vol.boot:
            devices.insert(0, disk_element(vol, cache))
        else:
            devices.append(disk_element(vol, cache))


def with_network_volumes(domain_xml_text: str, network: tuple[VolumeDisk, ...], cache: str = "none") -> str:
    """The domain XML with each volume disk of ``network`` (matched by serial) replaced by its
    NBD ``<disk>``, keeping the target dev the domain gives it: the destination definition of a
    live migration that leaves the volume's host (the source keeps opening the file or LV).

    Raises ValueError naming a volume the domain does not hold.
    """
    if bad := [vol.volume_id for vol in network if vol.kind != "nbd"]:
        raise ValueError(f"volume(s) {', '.join(bad)} are not NBD disks")
    root = ET.fromstring(domain_xml_text)
    devices = root.find("devices")
    wanted = {vol.serial: vol for vol in network}
    for index, disk in enumerate(list(devices) if devices is not None else []):
        vol = wanted.pop(disk.findtext("serial") or "", None) if disk.tag == "disk" else None
        if vol is None:
            continue
        target = disk.find("target")
        dev = target.get("dev", vol.dev) if target is not None else vol.dev
        assert devices is not None
        devices.remove(disk)
        devices.insert(index, disk_element(dataclasses.replace(vol, dev=dev), cache))
    if wanted:
        raise ValueError(f"the domain has no disk of volume(s) {', '.join(sorted(wanted))}")
    return ET.tostring(root, encoding="unicode")


def volume_targets(domain_xml_text: str) -> dict[str, str]:
    """serial → target dev of the volumes in a domain XML (its live or its persistent one)."""
    root = ET.fromstring(domain_xml_text)
    out: dict[str, str] = {}
    for disk in root.iterfind("devices/disk"):
        serial = disk.findtext("serial")
        target = disk.find("target")
        if serial and target is not None:
            out[serial] = target.get("dev", "")
    return out
