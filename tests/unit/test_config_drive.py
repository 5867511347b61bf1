"""Config drive: rendered content (pure) and a real vfat image read back with mtools."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hvd.errors import DriverError
from hvd.storage import config_drive as cd

UUID = "6a0a4c3e-3d0c-4f0e-9f57-3c0f5b8f2a11"
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.vfat", "mcopy", "mtype", "mdir")),
    reason="dosfstools/mtools missing",
)
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def mtype(image: Path, inner: str) -> bytes:
    return subprocess.run(
        ["mtype", "-i", str(image), f"::/{inner}"], check=True, capture_output=True, env=MTOOLS_ENV
    ).stdout


def test_meta_data_has_what_cloud_init_reads() -> None:
    md = cd.render_meta_data(
        uuid=UUID,
        name="web 1",
        hostname="web-1",
        public_keys={"mykey": "ssh-ed25519 AAAA x"},
        meta={"role": "db"},
    )
    assert md["uuid"] == UUID and md["name"] == "web 1" and md["hostname"] == "web-1"
    assert md["public_keys"] == {"mykey": "ssh-ed25519 AAAA x"}
    assert md["keys"] == [{"name": "mykey", "type": "ssh", "data": "ssh-ed25519 AAAA x"}]
    assert md["meta"] == {"role": "db"} and md["availability_zone"] == "nova" and md["launch_index"] == 0
    json.dumps(md)


def test_network_data_static_and_dhcp() -> None:
    nd = cd.render_network_data(
        [
            cd.NetworkDataNic(
                "11111111-2222-3333-4444-555555555555",
                "fa:16:3e:00:00:01",
                1450,
                "net-a",
                ip_address="10.0.0.5",
                netmask="255.255.255.0",
                gateway="10.0.0.1",
                dns=("10.0.0.2",),
            ),
            cd.NetworkDataNic("66666666-7777-8888-9999-000000000000", "fa:16:3e:00:00:02", 1500, "net-b"),
        ]
    )
    assert [link["id"] for link in nd["links"]] == ["tap11111111-22", "tap66666666-77"]
    assert nd["links"][0]["ethernet_mac_address"] == "fa:16:3e:00:00:01" and nd["links"][0]["mtu"] == 1450
    static, dhcp = nd["networks"]
    assert static["type"] == "ipv4" and static["ip_address"] == "10.0.0.5" and static["link"] == "tap11111111-22"
    assert static["routes"] == [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}]
    assert dhcp == {"id": "network1", "link": "tap66666666-77", "network_id": "net-b", "type": "ipv4_dhcp"}
    assert nd["services"] == [{"type": "dns", "address": "10.0.0.2"}]


def test_drive_files_layout() -> None:
    files = cd.drive_files({"uuid": UUID}, b"#cloud-config\n", {"links": []})
    assert set(files) == {
        "openstack/latest/meta_data.json",
        "openstack/latest/network_data.json",
        "openstack/latest/vendor_data.json",
        "openstack/latest/vendor_data2.json",
        "openstack/latest/user_data",
    }
    assert "openstack/latest/user_data" not in cd.drive_files({"uuid": UUID})


async def test_real_vfat_image_reads_back(tmp_path: Path) -> None:
    md = cd.render_meta_data(uuid=UUID, name="vm", hostname="vm-1", public_keys={"k": "ssh-rsa AAAA"})
    user_data = b"#!/bin/sh\necho hello\n\x00\xff binary ok"
    image = tmp_path / "disk.config"
    await cd.write_config_drive(image, cd.drive_files(md, user_data, cd.render_network_data([])))

    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    assert image.stat().st_size == cd.SIZE_KIB * 1024
    blkid = subprocess.run(["blkid", "-o", "export", str(image)], capture_output=True, text=True)
    if blkid.returncode == 0:
        assert "TYPE=vfat" in blkid.stdout and "LABEL=config-2" in blkid.stdout
    label = subprocess.run(["mlabel", "-s", "-i", str(image), "::"], capture_output=True, text=True, env=MTOOLS_ENV)
    assert "config-2" in label.stdout

    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", str(image), "::/"],
        check=True,
        capture_output=True,
        text=True,
        env=MTOOLS_ENV,
    ).stdout
    assert "::/openstack/latest/meta_data.json" in listing
    assert json.loads(mtype(image, "openstack/latest/meta_data.json")) == md
    assert mtype(image, "openstack/latest/user_data") == user_data
    assert json.loads(mtype(image, "openstack/latest/network_data.json")) == {
        "links": [],
        "networks": [],
        "services": [],
    }
    assert [p.name for p in tmp_path.iterdir()] == ["disk.config"]  # no staging or temp left


async def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    image = tmp_path / "disk.config"
    await cd.write_config_drive(image, cd.drive_files({"uuid": "one"}))
    await cd.write_config_drive(image, cd.drive_files({"uuid": "two"}))
    assert json.loads(mtype(image, "openstack/latest/meta_data.json")) == {"uuid": "two"}


async def test_path_escaping_the_drive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="escapes"):
        await cd.write_config_drive(tmp_path / "disk.config", {"../evil": b"x"})
    assert list(tmp_path.iterdir()) == []
