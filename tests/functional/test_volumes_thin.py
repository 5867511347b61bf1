"""Thin provisioning against a real daemon: a file backend (sparse raw files) on a 2 GiB tmpfs with
max_over_subscription_ratio 2.5 takes 5 GiB of volumes, is refused past the ratio with a 409 naming
it (a create through the scheduler, an extend at the catalog's commit) and shows what is provisioned
in GET /v1/hosts; a second backend on the same tmpfs whose real free space is down to its reserve
takes nothing (Cinder's full thin rule). One daemon, no guest."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, start_daemon
from tests.functional.test_volumes import Client

GIB = 1 << 30
RATIO = 2.5  # 2 GiB x 2.5 = 5 GiB of claims


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 GiB tmpfs for the volume backends needs root: run this test as root")
    path = tmp_path_factory.mktemp("thin") / "fs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def hvd(tmp_path_factory: pytest.TempPathFactory, tmpfs: Path) -> Iterator[DaemonProcess]:
    (tmpfs / "thin").mkdir()
    (tmpfs / "tight").mkdir()
    backends = [{"name": "thin", "driver": "file", "path": str(tmpfs / "thin"), "max_over_subscription_ratio": RATIO},
                {"name": "tight", "driver": "file", "path": str(tmpfs / "tight"), "reserved_gb": 1,
                 "max_over_subscription_ratio": RATIO}]
    d = start_daemon(tmp_path_factory.mktemp("thin-hvd") / "hvd", env={"HVD_VOLUMES__BACKENDS": json.dumps(backends)})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def admin(hvd: DaemonProcess) -> Client:
    return Client(hvd.url)


def backend_views(admin: Client) -> dict[str, dict[str, object]]:
    (host,) = admin.call("GET", "/v1/hosts")["hosts"]
    return {str(b["name"]): b for b in host["volume_backends"]}


def test_sparse_volumes_pass_the_filesystem_size_up_to_the_ratio_then_409_naming_it(
        admin: Client, tmpfs: Path) -> None:
    fs = os.statvfs(tmpfs)
    assert fs.f_blocks * fs.f_frsize == 2 * GIB
    (tmpfs / "filler").write_bytes(b"\1" * 4096)  # 1 GiB free (rounded down): tight is at its reserve
    made = [admin.call("POST", "/v1/volumes?wait=true", {"name": f"t{i}", "size_gb": size})
            for i, size in enumerate((2, 2, 1))]  # each within 1 GiB really free x 2.5, as Cinder's filter
    assert all(v["status"] == "available" and v["host"].endswith("@thin") for v in made), made
    files = [tmpfs / "thin" / f"volume-{v['id']}" for v in made]
    assert sum(f.stat().st_size for f in files) == 5 * GIB  # sparse: more than the filesystem holds

    err = admin.call("POST", "/v1/volumes", {"name": "t3", "size_gb": 1}, status=409)["error"]["message"]
    assert ("@thin: 0 GiB free, 1 GiB requested (thin: 5 GiB provisioned out of 5 GiB (2 GiB x"
            " max_over_subscription_ratio 2.5); 1 GiB really free)") in err
    assert ("@tight: thin backend is full: 1 GiB really free, at or below its 1 GiB reserve"
            " (max_over_subscription_ratio 2.5") in err
    err = admin.call("POST", f"/v1/volumes/{made[2]['id']}/extend", {"new_size_gb": 2}, status=409)["error"]["message"]
    assert "claimed out of 5 GiB (2 GiB x max_over_subscription_ratio 2.5): 1 GiB more does not fit" in err
    assert "t3" not in {v["name"] for v in admin.call("GET", "/v1/volumes")["volumes"]}

    views = backend_views(admin)
    assert {k: views["thin"][k] for k in ("thin", "total_gb", "max_over_subscription_ratio", "capacity_gb",
                                          "provisioned_gb", "available_gb")} == {
        "thin": True, "total_gb": 2, "max_over_subscription_ratio": RATIO, "capacity_gb": 5, "provisioned_gb": 5,
        "available_gb": 0}
    assert (views["tight"]["capacity_gb"], views["tight"]["provisioned_gb"]) == (2, 0)  # (2 - 1) x 2.5
    admin.call("DELETE", f"/v1/volumes/{made[0]['id']}?wait=true", status=204)
    assert backend_views(admin)["thin"]["provisioned_gb"] == 3
