"""The LVM backend on a real volume group that the test makes on a loop device (removed after).

Reading a volume group (capacity, names) needs only lvm2; making logical volumes needs the
kernel's device-mapper, which some hosts lack (their tests skip naming it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hvd.storage.volumes import lvm_argv as lvm
from hvd.storage.volumes.lvm_backend import LvmBackend
from tests.conftest import start_daemon

VG_BYTES = 3 << 30  # sparse backing file


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def lvm_missing() -> str | None:
    if os.geteuid() != 0:
        return "LVM tests need root (losetup, pvcreate)"
    for tool in ("losetup", "pvcreate", "vgcreate", "lvcreate"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: install lvm2 (scripts/setup.sh does)"
    return None


def _kernel_has_device_mapper() -> bool:
    # /dev/mapper/control may exist (lvm2 makes the node) on a kernel without the driver behind it
    return "device-mapper" in Path("/proc/misc").read_text()


def device_mapper_missing() -> str | None:
    if _kernel_has_device_mapper():
        return None
    subprocess.run(["modprobe", "dm_mod"], capture_output=True, timeout=30)
    if _kernel_has_device_mapper():
        return None
    return ("this kernel has no device-mapper (not in /proc/misc, and modprobe dm_mod failed): logical"
            " volumes cannot be activated here; run on a host whose kernel has CONFIG_BLK_DEV_DM")


@pytest.fixture
def volume_group(tmp_path: Path) -> Iterator[str]:
    reason = lvm_missing()
    if reason:
        pytest.skip(reason)
    backing = tmp_path / "pv.img"
    with open(backing, "wb") as fh:
        fh.truncate(VG_BYTES)
    loop = _run("losetup", "--find", "--show", str(backing)).strip()
    vg = f"hvdtest{uuid.uuid4().hex[:8]}"
    cfg = ("--config", lvm.LVM_CONFIG)
    try:
        _run("pvcreate", *cfg, loop)
        _run("vgcreate", *cfg, vg, loop)
        yield vg
    finally:
        subprocess.run(["vgremove", *cfg, "-f", vg], capture_output=True, timeout=60)
        subprocess.run(["pvremove", *cfg, "-f", loop], capture_output=True, timeout=60)
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)


def test_capacity_and_names_of_a_real_volume_group(volume_group: str) -> None:
    backend = LvmBackend("lvm-1", volume_group)

    async def look() -> tuple[int, int, set[str]]:
        cap = await backend.capacity()
        return cap.total_gb, cap.free_gb, await backend.list_objects()

    total, free, names = asyncio.run(look())
    assert (total, free, names) == (2, 2, set())  # 3 GiB minus LVM metadata: 2 whole GiB
    assert backend.connection_info("x") == {"type": "block", "path": f"/dev/{volume_group}/volume-x",
                                            "format": "raw"}


def test_volumes_on_lvm_through_the_api(volume_group: str, tmp_path: Path) -> None:
    reason = device_mapper_missing()
    if reason:
        pytest.skip(reason)
    backends = f'[{{"name": "lvm-1", "driver": "lvm", "volume_group": "{volume_group}"}}]'
    d = start_daemon(tmp_path / "hvd", env={"HVD_VOLUMES__BACKENDS": backends})
    try:
        token = requests.post(f"{d.url}/v1/auth/tokens", timeout=30, json={
            "username": "admin", "password": "admin-secret", "project": "admin"}).json()["token"]

        def call(method: str, path: str, body: object = None) -> dict[str, object]:
            r = requests.request(method, d.url + path, json=body, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"})
            assert r.status_code < 300, r.text
            return dict(r.json()) if r.content else {}

        vol = call("POST", "/v1/volumes?wait=true", {"name": "lv", "size_gb": 1})
        assert vol["status"] == "available" and vol["host"] == "hvd-test@lvm-1"
        device = f"/dev/{volume_group}/volume-{vol['id']}"
        with open(device, "r+b") as fh:
            fh.write(b"marker" * 1000)
        digest = hashlib.sha256(Path(device).read_bytes()).hexdigest()
        backup = call("POST", "/v1/backups?wait=true", {"volume": "lv"})
        assert backup["status"] == "available"
        call("DELETE", f"/v1/volumes/{vol['id']}?wait=true")
        assert not Path(device).exists()
        restored = call("POST", f"/v1/backups/{backup['id']}/restore?wait=true", {"name": "back"})
        new_device = f"/dev/{volume_group}/volume-{restored['volume_id']}"
        assert hashlib.sha256(Path(new_device).read_bytes()).hexdigest() == digest
        call("DELETE", f"/v1/volumes/{restored['volume_id']}?wait=true")
        call("DELETE", f"/v1/backups/{backup['id']}?wait=true")
    finally:
        d.stop()
