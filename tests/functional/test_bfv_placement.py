"""Placement of a server booted from a volume (fake driver, the host's real volume service): its
root disk is the volume, so the host's local disk is not claimed for it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Api
from tests.functional.compute_helpers import make_flavor, make_qcow2, upload_image


async def test_a_boot_from_volume_server_fits_where_the_flavors_root_disk_does_not(admin_api: Api,
                                                                                   tmp_path: Path) -> None:
    """The fake host has 500 GB of disk; the flavor's root disk is 1000 GB: an image-booted server
    is refused (DiskFilter), one booted from a 1 GB volume is placed and claims no local disk."""
    await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    await make_flavor(admin_api, name="m1.huge-root", disk_gb=1000)
    status, vol = await admin_api.call("POST", "/v1/volumes?wait=true", {"name": "root", "size_gb": 1, "image": "base",
                                                                         "bootable": True})
    assert status == 202 and vol["status"] == "available", vol
    status, bfv = await admin_api.call("POST", "/v1/servers?wait=true", {
        "name": "bfv", "flavor": "m1.huge-root",
        "block_device_mapping": [{"source": "volume", "id": vol["id"], "boot_index": 0}]})
    assert status == 202 and bfv["status"] == "ACTIVE", bfv
    _, host = await admin_api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["disk_gb"]["claimed"] == 0, host["resources"]

    status, imaged = await admin_api.call("POST", "/v1/servers?wait=true",
                                          {"name": "imaged", "flavor": "m1.huge-root", "image": "base"})
    assert status == 202 and imaged["status"] == "ERROR", imaged
    assert "No valid host" in imaged["fault"]["message"] and "DiskFilter" in imaged["fault"]["message"], imaged
