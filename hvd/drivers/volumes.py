"""Attached volumes as a hypervisor driver sees them: pure data and pure decisions, no I/O.

A volume reaches a guest in one of three ways, named by its *connection info* (the volume
backend's description of how to open it, a JSON object stored on the attachment):

- ``{"type": "file", "path": ..., "format": "raw"|"qcow2"}``: a file on this host (file backend);
- ``{"type": "block", "path": ...}``: a block device on this host (an LVM logical volume);
- ``{"type": "nbd", "host": ..., "port": ..., "export": ..., "tls": bool}``: an NBD export served
  by the volume's own host (qemu-storage-daemon) to a server on another host.

The guest sees each volume as a virtio-blk disk whose serial is the volume id, so
``/dev/disk/by-id/virtio-<id[:20]>`` names it whatever the kernel calls it (vdb, vdc, ...).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from hvd.errors import BadRequest

VolumeKind = Literal["file", "block", "nbd"]
BOOT_DEV = "vda"
SERIAL_LEN = 20  # virtio-blk passes at most 20 bytes of serial to the guest
_FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class VolumeDisk:
    """One volume attached to an instance, as the hypervisor opens it.

    ``dev`` is the guest device requested (vdb, ...; ``vda`` for the boot volume of a server
    booted from a volume). ``path`` is the file or block device (file and block kinds);
    ``host``/``port``/``export``/``tls`` the NBD server (nbd kind). ``fmt`` is the image format
    QEMU reads (always raw over block and NBD: the export server decodes qcow2 itself).
    """

    volume_id: str
    dev: str
    kind: VolumeKind
    path: str = ""
    fmt: str = "raw"
    host: str = ""
    port: int = 0
    export: str = ""
    tls: bool = False
    read_only: bool = False
    shareable: bool = False  # multi-attach: QEMU must not take an exclusive lock on it
    cache: str = ""  # QEMU cache mode chosen by the driver for this volume's storage; "" = the domain's

    @property
    def serial(self) -> str:
        """What the guest sees as the disk's serial: the volume id, cut to virtio's 20 bytes."""
        return self.volume_id[:SERIAL_LEN]

    @property
    def boot(self) -> bool:
        return self.dev == BOOT_DEV


def disk_from_connection(volume_id: str, dev: str, info: Mapping[str, Any], *, read_only: bool = False,
                         shareable: bool = False) -> VolumeDisk:
    """The VolumeDisk of a volume's connection info (see the module docstring).

    Raises BadRequest naming the problem when the info is not one of the known shapes.
    """
    kind = info.get("type")
    common: dict[str, Any] = {"read_only": read_only, "shareable": shareable}
    if kind == "file":
        fmt = str(info.get("format", "raw"))
        if fmt not in _FORMATS or not info.get("path"):
            raise BadRequest(f"volume {volume_id}: file connection needs a path and a format in {_FORMATS}")
        return VolumeDisk(volume_id, dev, "file", path=str(info["path"]), fmt=fmt, **common)
    if kind == "block":
        if not info.get("path"):
            raise BadRequest(f"volume {volume_id}: block connection needs a path")
        return VolumeDisk(volume_id, dev, "block", path=str(info["path"]), **common)
    if kind == "nbd":
        port = info.get("port")
        if not info.get("host") or not isinstance(port, int) or not 0 < port < 65536 or not info.get("export"):
            raise BadRequest(f"volume {volume_id}: nbd connection needs host, port and export")
        return VolumeDisk(volume_id, dev, "nbd", host=str(info["host"]), port=port, export=str(info["export"]),
                          tls=bool(info.get("tls", False)), **common)
    raise BadRequest(f"volume {volume_id}: unknown connection type {kind!r} (file, block or nbd)")


def device_name(index: int) -> str:
    """vda, vdb, ..., vdz, then vdaa, vdab, ... (Linux's virtio-blk naming)."""
    letters = string.ascii_lowercase
    if index < 26:
        return "vd" + letters[index]
    return "vd" + letters[index // 26 - 1] + letters[index % 26]


def device_index(dev: str) -> int:
    """Inverse of ``device_name``; -1 for a name that is not ``vd<letters>``."""
    tail = dev[2:]
    if not dev.startswith("vd") or not tail or not all(c in string.ascii_lowercase for c in tail) or len(tail) > 2:
        return -1
    if len(tail) == 1:
        return ord(tail) - ord("a")
    return (ord(tail[0]) - ord("a") + 1) * 26 + ord(tail[1]) - ord("a")


def next_device(in_use: Iterable[str], wanted: str | None = None) -> str:
    """The guest device for a new volume: ``wanted`` if free, else the first free of vdb, vdc, ...

    vda is never handed out (the root disk, or the boot volume). Deterministic: the same devices
    in use give the same answer. Raises BadRequest for a malformed ``wanted``.
    """
    used = set(in_use)
    if wanted is not None:
        if device_index(wanted) < 1:
            raise BadRequest(f"device {wanted!r} is not a virtio disk name after vda (vdb, vdc, ...)")
        if wanted not in used:
            return wanted
    index = 1
    while device_name(index) in used:
        index += 1
    return device_name(index)


def place_devices(local: Iterable[str], volumes: Iterable[VolumeDisk]) -> list[VolumeDisk]:
    """Volumes with devices that do not collide with the instance's local disks nor each other.

    A volume keeps its recorded device when it is free; one that collides (a config drive added
    later, or rescue shifting the local disks by one) moves to the next device nobody holds. Only
    the XML's target changes: the guest finds a volume by its serial. Boot volume first.
    """
    ordered = sorted(volumes, key=lambda v: (not v.boot, device_index(v.dev), v.volume_id))
    used = set(local)
    keeps: set[str] = set()
    for vol in ordered:  # first pass: who keeps its device
        if vol.dev not in used and vol.dev not in keeps and device_index(vol.dev) >= 0:
            keeps.add(vol.dev)
    taken = used | keeps
    placed: list[VolumeDisk] = []
    for vol in ordered:
        if vol.dev in keeps:
            keeps.discard(vol.dev)  # one volume per device
            placed.append(vol)
            continue
        dev = next_device(taken)
        taken.add(dev)
        placed.append(replace(vol, dev=dev))
    return placed
