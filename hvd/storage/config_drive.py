"""Config drive ``disk.config``: the OpenStack ``config-2`` layout on a vfat image.

The content is pure (``render_meta_data``, ``render_network_data``, ``drive_files``); the writer
runs ``mkfs.vfat -n config-2`` and mtools (``mmd``/``mcopy``) on an image file, so nothing is
mounted. vfat rather than iso9660 because a vfat drive is an ordinary disk that live migration
with block copy can move (seed-requirements C, live migrate).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvd.errors import DriverError
from hvd.storage.qemu_img import run

LABEL = "config-2"
SIZE_KIB = 64 * 1024  # Nova's vfat config drive size; the file is sparse
VERSION_DIR = "openstack/latest"


@dataclass(frozen=True)
class NetworkDataNic:
    """One port as the guest sees it in network_data.json (static address or DHCP)."""

    port_id: str
    mac: str
    mtu: int
    network_id: str
    ip_address: str | None = None  # None: the guest uses DHCP
    netmask: str | None = None
    gateway: str | None = None
    dns: Sequence[str] = field(default_factory=tuple)
    ip_version: int = 4


def render_meta_data(
    *,
    uuid: str,
    name: str,
    hostname: str,
    public_keys: Mapping[str, str] | None = None,
    meta: Mapping[str, str] | None = None,
    availability_zone: str = "nova",
    project_id: str = "",
    launch_index: int = 0,
) -> dict[str, Any]:
    """``meta_data.json`` as Nova writes it (the keys cloud-init reads)."""
    keys = dict(public_keys or {})
    return {
        "uuid": uuid,
        "name": name,
        "hostname": hostname,
        "launch_index": launch_index,
        "availability_zone": availability_zone,
        "project_id": project_id,
        "public_keys": keys,
        "keys": [{"name": n, "type": "ssh", "data": k} for n, k in keys.items()],
        "meta": dict(meta or {}),
        "devices": [],
    }


def render_network_data(nics: Sequence[NetworkDataNic]) -> dict[str, Any]:
    """``network_data.json``: links (one per port), networks (static or DHCP), DNS services."""
    links, networks, services = [], [], []
    for index, nic in enumerate(nics):
        link_id = f"tap{nic.port_id[:11]}"
        links.append(
            {
                "id": link_id,
                "vif_id": nic.port_id,
                "type": "bridge",
                "ethernet_mac_address": nic.mac,
                "mtu": nic.mtu,
            }
        )
        network: dict[str, Any] = {"id": f"network{index}", "link": link_id, "network_id": nic.network_id}
        if nic.ip_address is None:
            network["type"] = "ipv4_dhcp" if nic.ip_version == 4 else "ipv6_dhcp"
        else:
            network.update(type=f"ipv{nic.ip_version}", ip_address=nic.ip_address, netmask=nic.netmask)
            if nic.gateway:
                default = "0.0.0.0" if nic.ip_version == 4 else "::"
                network["routes"] = [{"network": default, "netmask": default, "gateway": nic.gateway}]
            network["services"] = [{"type": "dns", "address": d} for d in nic.dns]
        networks.append(network)
        services += [{"type": "dns", "address": d} for d in nic.dns if {"type": "dns", "address": d} not in services]
    return {"links": links, "networks": networks, "services": services}


def drive_files(
    meta_data: Mapping[str, Any],
    user_data: bytes | None = None,
    network_data: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """Path inside the drive → content, for ``write_config_drive``."""
    files = {
        f"{VERSION_DIR}/meta_data.json": json.dumps(meta_data, sort_keys=True).encode(),
        f"{VERSION_DIR}/network_data.json": json.dumps(network_data or {}, sort_keys=True).encode(),
        f"{VERSION_DIR}/vendor_data.json": b"{}",
        f"{VERSION_DIR}/vendor_data2.json": b"{}",
    }
    if user_data is not None:
        files[f"{VERSION_DIR}/user_data"] = user_data
    return files


def _stage(staging: Path, files: Mapping[str, bytes]) -> list[Path]:
    tops: set[Path] = set()
    for rel, content in files.items():
        path = staging / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise DriverError(f"config drive path {rel!r} escapes the drive")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        tops.add(staging / Path(rel).parts[0])
    return sorted(tops)


async def write_config_drive(path: Path, files: Mapping[str, bytes]) -> Path:
    """Write a vfat image labelled ``config-2`` holding ``files`` at ``path`` (atomically).

    Needs mkfs.vfat (dosfstools) and mcopy (mtools). Mode 0644 so libvirt-qemu can read it.
    """
    for tool in ("mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            raise DriverError(f"{tool} is not installed (packages dosfstools, mtools)")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".config-drive-", dir=path.parent))
    try:
        tops = await asyncio.to_thread(_stage, staging, files)
        await run(["mkfs.vfat", "-C", "-n", LABEL, str(tmp), str(SIZE_KIB)], timeout=60)
        # -s: recursive; -Q: stop at the first error; MTOOLS_SKIP_CHECK: the image is ours.
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        await run(["mcopy", "-s", "-Q", "-i", str(tmp), *map(str, tops), "::/"], timeout=60, env=env)
        tmp.chmod(0o644)
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    return path
