"""Crash repair of volumes on a real daemon: it dies hard (HVD_CRASH_AT=<step>, os._exit like a power
cut, or a real SIGKILL) in the middle of a create, delete, extend or backup; after a restart the
volume ends in a clear state and no orphan file stays behind. One daemon directory, restarted."""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import DaemonProcess, start_daemon


class Node:
    """One daemon directory that the tests crash and restart."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.daemon: DaemonProcess | None = None
        self.token = ""

    def start(self, crash_at: str | None = None) -> None:
        self.daemon = start_daemon(self.base, env={"HVD_CRASH_AT": crash_at} if crash_at else {})
        r = requests.post(f"{self.daemon.url}/v1/auth/tokens", timeout=30,
                          json={"username": "admin", "password": "admin-secret", "project": "admin"})
        assert r.status_code == 201, r.text
        self.token = r.json()["token"]

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        assert self.daemon is not None
        return requests.request(method, self.daemon.url + path, json=body, timeout=120,
                                headers={"Authorization": f"Bearer {self.token}"})

    def fire(self, method: str, path: str, body: Any = None) -> None:
        """A request whose work crashes the daemon: it may die before it answers (the change was
        committed before the work started)."""
        try:
            r = self.call(method, path, body)
            assert r.status_code in (202, 204), r.text
        except requests.ConnectionError:
            pass

    def died(self, timeout: float = 30) -> int | None:
        """Wait for the daemon to exit by itself (HVD_CRASH_AT); its exit code."""
        assert self.daemon is not None
        try:
            return self.daemon.proc.wait(timeout)
        finally:
            self.daemon = None

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def catalog(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the stopped daemon's catalog directly."""
        conn = sqlite3.connect(self.base / "data" / "catalog.db")
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    @property
    def volumes_dir(self) -> Path:
        return self.base / "data" / "volumes"

    def files(self) -> set[str]:
        return {p.name for p in self.volumes_dir.iterdir()} if self.volumes_dir.exists() else set()

    def wait_status(self, vid: str, wanted: set[str], timeout: float = 60) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.call("GET", f"/v1/volumes/{vid}")
            if r.status_code == 404:
                return None
            if r.json()["status"] in wanted:
                return dict(r.json())
            time.sleep(0.1)
        raise AssertionError(f"volume {vid} never reached {wanted}: {r.text}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("vcrash") / "hvd")
    try:
        yield n
    finally:
        n.stop()


def test_crash_after_create_made_the_data_is_finished_after_restart(node: Node) -> None:
    node.start("volume.create.data_made")
    node.fire("POST", "/v1/volumes", {"name": "c1", "size_gb": 1})
    assert node.died() == 99
    [(vid, status)] = node.catalog("SELECT id, status FROM volumes")
    assert status == "creating" and f"volume-{vid}" in node.files()  # data made, record not finished
    node.start()
    vol = node.wait_status(vid, {"available", "error"})
    assert vol is not None and vol["status"] == "available"
    assert node.files() == {f"volume-{vid}"}


def test_crash_in_delete_before_and_after_the_data_went_ends_deleted(node: Node) -> None:
    for step in ("volume.delete.started", "volume.delete.data_removed"):
        vol = node.call("POST", "/v1/volumes?wait=true", {"name": step, "size_gb": 1}).json()
        node.stop()
        node.start(step)
        node.fire("DELETE", f"/v1/volumes/{vol['id']}")
        assert node.died() == 99
        node.start()
        assert node.wait_status(vol["id"], set()) is None  # gone from the catalog
        assert f"volume-{vol['id']}" not in node.files()


def test_crash_in_extend_and_backup_is_redone(node: Node) -> None:
    vol = node.call("POST", "/v1/volumes?wait=true", {"name": "grow", "size_gb": 1}).json()
    node.stop()
    node.start("volume.extend.data_grown")
    node.fire("POST", f"/v1/volumes/{vol['id']}/extend", {"new_size_gb": 2})
    assert node.died() == 99
    node.start("backup.data_written")
    grown = node.wait_status(vol["id"], {"available", "error"})
    assert grown is not None and (grown["status"], grown["size_gb"]) == ("available", 2)
    node.fire("POST", "/v1/backups", {"volume": vol["id"], "name": "b"})
    assert node.died() == 99
    node.start()
    backup = node.call("GET", "/v1/backups").json()["backups"][0]
    deadline = time.monotonic() + 60
    while (b := node.call("GET", f"/v1/backups/{backup['id']}").json())["status"] == "creating":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert b["status"] == "available"
    assert node.call("POST", f"/v1/backups/{backup['id']}/verify").json()["ok"] is True
    assert node.call("GET", f"/v1/volumes/{vol['id']}").json()["status"] == "available"


def test_sigkill_during_creates_and_orphans_are_removed_at_start(node: Node) -> None:
    """A real kill -9 right after create requests were accepted (whatever step they were in), and
    files named like volumes that the catalog does not know: after a restart every accepted volume
    is available and nothing else is left."""
    node.stop()
    node.start()
    ids = [node.call("POST", "/v1/volumes", {"name": f"k{i}", "size_gb": 1}).json()["id"] for i in range(3)]
    assert node.daemon is not None
    node.daemon.proc.send_signal(signal.SIGKILL)
    node.daemon.proc.wait(10)
    node.daemon = None
    orphan = f"volume-{uuid.uuid4()}"
    (node.volumes_dir / orphan).write_bytes(b"left by a crash")
    (node.volumes_dir / f"snapshot-{uuid.uuid4()}").write_bytes(b"")
    (node.volumes_dir / "not-ours.img").write_bytes(b"")  # not a name hvd makes: left alone
    node.start()
    for vid in ids:
        vol = node.wait_status(vid, {"available", "error"})
        assert vol is not None and vol["status"] == "available"
    known = {v["id"] for v in node.call("GET", "/v1/volumes").json()["volumes"]}
    assert node.files() == {f"volume-{v}" for v in known} | {"not-ours.img"}


def test_crash_in_snapshot_and_restore_is_redone(node: Node) -> None:
    node.stop()
    node.start("snapshot.data_made")
    vol = node.call("POST", "/v1/volumes?wait=true", {"name": "snapme", "size_gb": 1}).json()
    node.fire("POST", "/v1/snapshots", {"volume": vol["id"], "name": "s"})
    assert node.died() == 99
    [(sid, status)] = node.catalog("SELECT id, status FROM volume_snapshots")
    assert status == "creating" and f"snapshot-{sid}" in node.files()
    node.start("restore.data_written")
    deadline = time.monotonic() + 60
    while node.call("GET", f"/v1/snapshots/{sid}").json()["status"] == "creating":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert node.call("GET", f"/v1/snapshots/{sid}").json()["status"] == "available"
    backup = node.call("POST", "/v1/backups?wait=true", {"volume": vol["id"]}).json()
    node.fire("POST", f"/v1/backups/{backup['id']}/restore", {"name": "r"})
    assert node.died() == 99
    [(rid,)] = node.catalog("SELECT id FROM volumes WHERE status='restoring-backup'")
    node.start()
    restored = node.wait_status(rid, {"available", "error"})
    assert restored is not None and restored["status"] == "available"
    assert node.call("GET", f"/v1/backups/{backup['id']}").json()["status"] == "available"


def test_a_restore_cut_mid_write_whose_redo_fails_early_ends_in_error(node: Node) -> None:
    """The restore wrote into the existing volume, then the daemon died; at restart the redo fails
    before writing (the manifest is unreadable): the volume's data changed, so it must end in error,
    not "available as it was"."""
    from hvd.storage.volumes.backup_io import manifest_path

    node.stop()
    node.start("restore.data_written")
    vol = node.call("POST", "/v1/volumes?wait=true", {"name": "overwritten", "size_gb": 1}).json()
    backup = node.call("POST", "/v1/backups?wait=true", {"volume": vol["id"]}).json()
    node.fire("POST", f"/v1/backups/{backup['id']}/restore", {"volume": vol["id"]})
    assert node.died() == 99
    manifest_path(node.base / "data" / "backups", vol["id"], backup["id"]).unlink()
    node.start()
    after = node.wait_status(vol["id"], {"available", "error"})
    assert after is not None and after["status"] == "error", after
    assert not list((node.base / "data" / "volume-work").iterdir())  # the marker went with the finish


def test_scratch_files_of_a_cut_restore_are_removed_at_start(node: Node) -> None:
    """A qcow2 restore converts into ``.volume-<id>.partial`` and renames it over the volume; a
    crash between the two whose restore is not redone (volume reset or deleted meanwhile) left the
    scratch file for good. The start-up sweep removes those of this host's volumes and of unknown
    ids, and leaves names hvd does not make."""
    vol = node.call("POST", "/v1/volumes?wait=true", {"name": "scratch", "size_gb": 1}).json()
    node.stop()
    planted = {f".volume-{vol['id']}.partial", f".volume-{uuid.uuid4()}.partial"}
    for name in planted:
        (node.volumes_dir / name).write_bytes(b"half a qcow2 file")
    (node.volumes_dir / ".mine.partial").write_bytes(b"")  # not a name hvd makes: left alone
    node.start()
    assert not planted & node.files()
    assert {".mine.partial", f"volume-{vol['id']}"} <= node.files()
    assert node.call("GET", f"/v1/volumes/{vol['id']}").json()["status"] == "available"


def test_crash_in_upload_to_image_is_redone_and_leaves_no_partial_file(node: Node) -> None:
    node.stop()
    node.start("volume.upload.partial_written")
    vol = node.call("POST", "/v1/volumes?wait=true", {"name": "upme", "size_gb": 1}).json()
    node.fire("POST", f"/v1/volumes/{vol['id']}/upload-image", {"name": "up", "disk_format": "qcow2"})
    assert node.died() == 99
    [(image_id, image_status)] = node.catalog(
        f"SELECT id, status FROM images WHERE json_extract(properties, '$.volume_id')='{vol['id']}'")
    images = node.base / "data" / "images"
    assert image_status == "saving" and (images / f".{image_id}.partial").exists()  # cut between copy and rename
    assert node.catalog(f"SELECT status FROM volumes WHERE id='{vol['id']}'") == [("uploading",)]
    node.start()
    assert node.wait_status(vol["id"], {"available"}) is not None
    image = node.call("GET", f"/v1/images/{image_id}").json()
    assert image["status"] == "active" and image["checksum"]
    assert sorted(p.name for p in images.iterdir() if image_id in p.name) == [image_id]  # no partial left
