"""The file backend with qcow2 files (format = "qcow2"): create from an image, extend, snapshot,
volume from the snapshot, backup and restore give the same guest-visible data (compared as raw)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import DaemonProcess, start_daemon
from tests.functional.test_volumes import MIB, Client

QCOW2 = '[{"name": "qcow", "driver": "file", "format": "qcow2"}]'


@pytest.fixture(scope="module")
def hvd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("qcow2") / "hvd", env={"HVD_VOLUMES__BACKENDS": QCOW2})
    yield d
    d.stop()


def same_data(a: Path, b: Path) -> bool:
    """Whether two qcow2 files hold the same guest-visible data (qemu-img compare)."""
    return subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
                          capture_output=True).returncode == 0


def info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True)
    return dict(json.loads(out.stdout))


def test_qcow2_volumes_round_trip(hvd: DaemonProcess) -> None:
    admin = Client(hvd.url)
    data = os.urandom(3 * MIB)
    img = admin.call("POST", "/v1/images", {"name": "q-src", "disk_format": "raw"})
    r = requests.put(f"{hvd.url}/v1/images/{img['id']}/file", data=data, timeout=60,
                     headers={"Authorization": f"Bearer {admin.token}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    vols = hvd.config.parent / "data" / "volumes"
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "q1", "size_gb": 1, "image": img["id"]})
    assert vol["status"] == "available" and vol["host"].endswith("@qcow")
    path = vols / f"volume-{vol['id']}"
    assert info(path)["format"] == "qcow2" and info(path)["virtual-size"] == 1 << 30
    source = hvd.config.parent / "q-src.raw"
    source.write_bytes(data)  # the image's bytes; past them the volume reads zeros (non-strict compare)
    assert subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(source), str(path)],
                          capture_output=True).returncode == 0
    admin.call("POST", f"/v1/volumes/{vol['id']}/extend?wait=true", {"new_size_gb": 2})
    assert info(path)["virtual-size"] == 2 << 30
    blank = admin.call("POST", "/v1/volumes?wait=true", {"size_gb": 2})
    assert not same_data(vols / f"volume-{blank['id']}", path)  # the comparison sees a difference
    snap = admin.call("POST", "/v1/snapshots?wait=true", {"volume": "q1"})
    from_snap = admin.call("POST", "/v1/volumes?wait=true", {"size_gb": 2, "snapshot": snap["id"]})
    assert same_data(vols / f"volume-{from_snap['id']}", path)
    backup = admin.call("POST", "/v1/backups?wait=true", {"volume": "q1"})
    assert backup["status"] == "available"
    restored = admin.call("POST", f"/v1/backups/{backup['id']}/restore?wait=true", {"name": "q-back"})
    assert restored["volume"]["status"] == "available", restored
    restored_path = vols / f"volume-{restored['volume_id']}"
    assert info(restored_path)["format"] == "qcow2" and same_data(restored_path, path)
    admin.call("POST", f"/v1/backups/{backup['id']}/restore?wait=true", {"volume": from_snap["id"]})
    assert same_data(vols / f"volume-{from_snap['id']}", path)
    assert not list((hvd.config.parent / "data" / "backups").glob(".raw-*"))  # the raw scratch copies went
