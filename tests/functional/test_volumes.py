"""Volumes against a real daemon (fake compute driver; the file backend is real files and real
qemu-img): create from nothing, an image, a snapshot or a volume; extend; Cinder's refusals;
quotas; volume types; backups (round trip, incremental, verify, restore into an existing volume);
upload-to-image (raw and qcow2, force, refusals, a failure);
the CLI. One daemon for the module."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, DaemonProcess, start_daemon

MIB = 1 << 20


class Client:
    def __init__(self, url: str, project: str = "admin", user: str = "admin", password: str = "admin-secret") -> None:
        self.url = url
        body = {"username": user, "password": password, "project": project}
        r = requests.post(f"{url}/v1/auth/tokens", json=body, timeout=30)
        assert r.status_code == 201, r.text
        self.token = r.json()["token"]

    def call(self, method: str, path: str, body: Any = None, status: int | tuple[int, ...] = (200, 201, 202, 204),
             **kw: Any) -> Any:
        r = requests.request(method, self.url + path, json=body, headers={"Authorization": f"Bearer {self.token}"},
                             timeout=120, **kw)
        wanted = (status,) if isinstance(status, int) else status
        assert r.status_code in wanted, (method, path, r.status_code, r.text)
        return r.json() if r.content else None


@pytest.fixture(scope="module")
def hvd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("volumes") / "hvd")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def admin(hvd: DaemonProcess) -> Client:
    return Client(hvd.url)


@pytest.fixture(scope="module")
def data_dir(hvd: DaemonProcess) -> Path:
    return hvd.config.parent / "data"


@pytest.fixture(scope="module")
def image(admin: Client) -> dict[str, Any]:
    """A 6 MiB raw image of random data with a zero hole in the middle (chunks of both kinds)."""
    data = os.urandom(2 * MIB) + bytes(2 * MIB) + os.urandom(2 * MIB)
    img = admin.call("POST", "/v1/images", {"name": "vol-src", "disk_format": "raw", "visibility": "public"})
    r = requests.put(f"{admin.url}/v1/images/{img['id']}/file", data=data, timeout=60,
                     headers={"Authorization": f"Bearer {admin.token}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    return {"id": img["id"], "data": data}


def volume_file(data_dir: Path, vid: str) -> Path:
    return data_dir / "volumes" / f"volume-{vid}"


def sha256_of(path: Path, length: int | None = None) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read(length) if length is not None else fh.read()).hexdigest()


def test_blank_volume_extend_snapshot_copies_and_refusals(admin: Client, data_dir: Path) -> None:
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "blank", "size_gb": 1})
    assert (vol["status"], vol["size_gb"], vol["volume_type"]) == ("available", 1, "default")
    path = volume_file(data_dir, vol["id"])
    assert path.stat().st_size == 1 << 30 and path.stat().st_blocks * 512 < MIB  # sparse raw
    for size in (1, 0):
        err = admin.call("POST", f"/v1/volumes/{vol['id']}/extend", {"new_size_gb": size}, status=400)
        assert "greater than the current size" in err["error"]["message"] or "new_size_gb" in err["error"]["message"]
    grown = admin.call("POST", f"/v1/volumes/{vol['id']}/extend?wait=true", {"new_size_gb": 2})
    assert grown["size_gb"] == 2 and path.stat().st_size == 2 << 30
    snap = admin.call("POST", "/v1/snapshots?wait=true", {"volume": "blank", "name": "blank-snap"})
    assert snap["status"] == "available" and snap["size_gb"] == 2
    err = admin.call("DELETE", f"/v1/volumes/{vol['id']}", status=409)
    assert "snapshot" in err["error"]["message"]
    err = admin.call("POST", "/v1/volumes", {"size_gb": 1, "snapshot": snap["id"]}, status=400)
    assert "smaller than snapshot" in err["error"]["message"]
    from_snap = admin.call("POST", "/v1/volumes?wait=true", {"size_gb": 3, "snapshot": snap["id"]})
    clone = admin.call("POST", "/v1/volumes?wait=true", {"size_gb": 2, "source_volume": "blank"})
    assert from_snap["status"] == clone["status"] == "available"
    assert volume_file(data_dir, from_snap["id"]).stat().st_size == 3 << 30
    err = admin.call("POST", "/v1/volumes", {"size_gb": 1, "image": "x", "snapshot": snap["id"]}, status=400)
    assert "at most one" in err["error"]["message"]
    admin.call("DELETE", f"/v1/snapshots/{snap['id']}?wait=true", status=204)
    for v in (vol, from_snap, clone):
        admin.call("DELETE", f"/v1/volumes/{v['id']}?wait=true", status=204)
        assert not volume_file(data_dir, v["id"]).exists()
    admin.call("GET", f"/v1/volumes/{vol['id']}", status=404)


def test_volume_from_image_holds_its_data_and_is_bootable(admin: Client, data_dir: Path,
                                                          image: dict[str, Any]) -> None:
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "from-image", "size_gb": 1, "image": image["id"]})
    assert vol["status"] == "available" and vol["bootable"] is True and vol["source_image_id"] == image["id"]
    path = volume_file(data_dir, vol["id"])
    assert sha256_of(path, len(image["data"])) == hashlib.sha256(image["data"]).hexdigest()
    # sparse: the 1 GiB volume stores the image's 4 MiB of data, its 2 MiB zero run is a hole too
    assert path.stat().st_blocks * 512 <= 4 * MIB + 64 * 1024
    admin.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)


def test_backup_restore_round_trip_incremental_and_verify(admin: Client, data_dir: Path,
                                                           image: dict[str, Any]) -> None:
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "precious", "size_gb": 1, "image": image["id"]})
    source_sha = sha256_of(volume_file(data_dir, vol["id"]))
    full = admin.call("POST", "/v1/backups?wait=true", {"volume": "precious", "name": "full"})
    assert full["status"] == "available" and full["is_incremental"] is False
    assert (full["chunks"], full["new_chunks"]) == (256, 2)  # 1 GiB in 4 MiB chunks; only two hold data
    again = admin.call("POST", "/v1/backups?wait=true", {"volume": "precious", "name": "incr"})
    assert again["is_incremental"] is True and again["parent_id"] == full["id"]
    assert (again["new_chunks"], again["stored_bytes"]) == (0, 0)  # unchanged volume: nothing new written
    assert admin.call("GET", f"/v1/volumes/{vol['id']}")["status"] == "available"
    restored = admin.call("POST", f"/v1/backups/{again['id']}/restore?wait=true", {"name": "restored"})
    assert restored["volume"]["status"] == "available"
    assert sha256_of(volume_file(data_dir, restored["volume_id"])) == source_sha
    # into an existing available volume, overwriting what it held
    other = admin.call("POST", "/v1/volumes?wait=true", {"name": "scratch", "size_gb": 1})
    admin.call("POST", f"/v1/backups/{full['id']}/restore?wait=true", {"volume": "scratch"})
    assert sha256_of(volume_file(data_dir, other["id"])) == source_sha
    small = admin.call("POST", "/v1/backups?wait=true", {"volume": "scratch", "name": "s"})
    assert small["status"] == "available"
    verdict = admin.call("POST", f"/v1/backups/{full['id']}/verify")
    assert verdict == {"backup_id": full["id"], "ok": True, "chunks": 256, "problems": []}
    # a damaged chunk is found, named, and restores refuse to pass it on silently
    objects = sorted((data_dir / "backups" / f"volume-{vol['id']}" / "objects").rglob("*"))
    victim = next(p for p in objects if p.is_file())
    victim.write_bytes(b"garbage")
    verdict = admin.call("POST", f"/v1/backups/{full['id']}/verify")
    assert verdict["ok"] is False and victim.name in verdict["problems"][0]
    broken = admin.call("POST", f"/v1/backups/{full['id']}/restore?wait=true", {"name": "broken"})
    assert broken["volume"]["status"] == "error" and f"sha256 {victim.name}" in broken["volume"]["error"]
    for b in (full, again, small):
        admin.call("DELETE", f"/v1/backups/{b['id']}?wait=true", status=204)
    assert not (data_dir / "backups" / f"volume-{vol['id']}").exists()  # last backup gone: its chunks too
    for v in (vol["id"], restored["volume_id"], other["id"], broken["volume_id"]):
        admin.call("DELETE", f"/v1/volumes/{v}?wait=true", status=204)


def test_quotas_refuse_volumes_gigabytes_snapshots_backups(admin: Client, hvd: DaemonProcess) -> None:
    admin.call("POST", "/v1/projects", {"name": "vq"})
    admin.call("POST", "/v1/users", {"name": "vq-user", "password": "vq-secret-1", "project": "vq", "role": "member"})
    admin.call("PUT", "/v1/quotas/vq", {"quotas": {"volumes": 1, "gigabytes": 2, "snapshots": 0, "backups": 0}})
    user = Client(hvd.url, "vq", "vq-user", "vq-secret-1")
    err = user.call("POST", "/v1/volumes", {"size_gb": 3}, status=403)
    assert "gigabytes" in err["error"]["message"]
    vol = user.call("POST", "/v1/volumes?wait=true", {"name": "q1", "size_gb": 1})
    assert "volumes" in user.call("POST", "/v1/volumes", {"size_gb": 1}, status=403)["error"]["message"]
    assert "snapshots" in user.call("POST", "/v1/snapshots", {"volume": "q1"}, status=403)["error"]["message"]
    assert "backups" in user.call("POST", "/v1/backups", {"volume": "q1"}, status=403)["error"]["message"]
    assert "gigabytes" in user.call("POST", f"/v1/volumes/{vol['id']}/extend", {"new_size_gb": 3},
                                    status=403)["error"]["message"]
    usage = admin.call("GET", "/v1/quotas/vq")["quotas"]
    assert usage["volumes"] == {"limit": 1, "in_use": 1} and usage["gigabytes"] == {"limit": 2, "in_use": 1}
    err = admin.call("PUT", "/v1/quotas/vq", {"quotas": {"gigabytes": 2**60}}, status=400)
    assert "gigabytes" in err["error"]["message"]
    assert [v["id"] for v in admin.call("GET", "/v1/volumes")["volumes"]] == []  # not the admin project's
    user.call("POST", "/v1/volume-types", {"name": "nope"}, status=403)  # types are the admin's
    user.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)


def test_volume_types_pick_backends_and_refuse_clearly(admin: Client) -> None:
    admin.call("POST", "/v1/volume-types", {"name": "nowhere", "extra_specs": {"volume_backend_name": "lvm-9"}})
    err = admin.call("POST", "/v1/volumes", {"size_gb": 1, "volume_type": "nowhere"}, status=409)
    assert "lvm-9 does not match backend file" in err["error"]["message"]
    err = admin.call("POST", "/v1/volumes", {"size_gb": 60000}, status=409)
    assert "GiB free" in err["error"]["message"]
    typed = admin.call("POST", "/v1/volume-types", {"name": "files", "extra_specs": {"volume_backend_name": "file",
                                                                                    "multiattach": "<is> True"}})
    vol = admin.call("POST", "/v1/volumes?wait=true", {"size_gb": 1, "volume_type": "files"})
    assert vol["volume_type"] == "files" and vol["multiattach"] is True and vol["host"].endswith("@file")
    assert "used by 1" in admin.call("DELETE", f"/v1/volume-types/{typed['id']}", status=409)["error"]["message"]
    changed = admin.call("PATCH", "/v1/volume-types/files", {"unset": ["multiattach"]})
    assert changed["extra_specs"] == {"volume_backend_name": "file"}
    admin.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)
    admin.call("DELETE", "/v1/volume-types/files", status=204)
    admin.call("DELETE", "/v1/volume-types/nowhere", status=204)


@pytest.mark.parametrize("body", [
    {"size_gb": 0}, {"size_gb": -1}, {"size_gb": 2**63}, {"size_gb": 1.5}, {"size_gb": 1, "bogus": 1},
    {"size_gb": 1, "name": "a/b"}, {"size_gb": 1, "metadata": {"k": 1}}, {}, [],
])
def test_hostile_volume_bodies_get_400(admin: Client, body: Any) -> None:
    assert admin.call("POST", "/v1/volumes", body, status=400)["error"]["code"] == 400


def test_unknown_references_get_404_and_bad_wait_400(admin: Client) -> None:
    assert admin.call("POST", "/v1/volumes", {"size_gb": 1, "image": "no-such"}, status=404)
    assert admin.call("POST", "/v1/volumes", {"size_gb": 1, "volume_type": "no-such"}, status=404)
    assert admin.call("POST", "/v1/backups/nope/restore", {}, status=404)
    assert admin.call("POST", "/v1/volumes?wait=maybe", {"size_gb": 1}, status=400)


def test_cli_volume_and_backup_commands(admin: Client, hvd: DaemonProcess) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HVD_")}, "HVD_URL": hvd.url,
           "HVD_TOKEN": admin.token}

    def hvd_cli(*argv: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "hvd", *argv, "-f", "json"], capture_output=True, text=True,
                             cwd=REPO, env=env, timeout=120)
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        return json.loads(out.stdout)

    vol = hvd_cli("volume", "create", "cli-vol", "--size", "1", "--wait")
    assert vol["status"] == "available"
    assert hvd_cli("volume", "extend", "cli-vol", "2", "--wait")["size_gb"] == 2
    backup = hvd_cli("volume-backup", "create", "cli-vol", "--name", "cli-b", "--wait")
    assert backup["status"] == "available"
    assert hvd_cli("volume-backup", "verify", "cli-b")["ok"] is True
    assert [v["name"] for v in hvd_cli("volume", "list")] == ["cli-vol"]
    restored = hvd_cli("volume-backup", "restore", "cli-b", "--name", "cli-restored", "--wait")
    assert restored["status"] == "available" and restored["size_gb"] == 2
    for argv in (("volume-backup", "delete", "cli-b", "--wait"), ("volume", "delete", "cli-vol", "cli-restored",
                                                                    "--wait")):
        out = subprocess.run([sys.executable, "-m", "hvd", *argv], capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
    assert hvd_cli("volume", "list") == []


def test_volume_state_changes_reach_the_projects_event_stream(admin: Client, hvd: DaemonProcess) -> None:
    admin.call("POST", "/v1/projects", {"name": "ev"})
    admin.call("POST", "/v1/users", {"name": "ev-user", "password": "ev-secret-1", "project": "ev", "role": "member"})
    user = Client(hvd.url, "ev", "ev-user", "ev-secret-1")
    with requests.get(f"{hvd.url}/v1/events", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {user.token}"}) as stream:
        vol = user.call("POST", "/v1/volumes?wait=true", {"name": "ev-vol", "size_gb": 1})
        user.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)
        seen: list[str] = []
        for line in stream.iter_lines():
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event.get("id") == vol["id"]:
                    seen.append(f"{event['type']} {event['status']}")
            if seen and seen[-1] == "volume.status deleted":
                break
    assert seen == ["volume.status creating", "volume.status available", "volume.status deleting",
                    "volume.status deleted"]


def test_admin_resets_a_stuck_volume_and_members_may_not(admin: Client, hvd: DaemonProcess) -> None:
    admin.call("POST", "/v1/projects", {"name": "rs"})
    admin.call("POST", "/v1/users", {"name": "rs-user", "password": "rs-secret-1", "project": "rs", "role": "member"})
    user = Client(hvd.url, "rs", "rs-user", "rs-secret-1")
    vol = user.call("POST", "/v1/volumes?wait=true", {"name": "stuck", "size_gb": 1})
    user.call("POST", f"/v1/volumes/{vol['id']}/reset-status", {"status": "error"}, status=403)
    assert admin.call("POST", f"/v1/volumes/{vol['id']}/reset-status", {"status": "error"})["status"] == "error"
    admin.call("POST", f"/v1/volumes/{vol['id']}/reset-status", {"status": "creating"}, status=400)
    user.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)  # an error volume may be deleted


def sha256_chunked(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload(client: Client, vid: str, body: Any, status: int = 202) -> Any:
    return client.call("POST", f"/v1/volumes/{vid}/upload-image?wait=true", body, status=status)


def test_upload_to_image_as_raw_and_qcow2_keeps_the_data_and_boots(admin: Client, hvd: DaemonProcess, data_dir: Path,
                                                                   image: dict[str, Any], tmp_path: Path) -> None:
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "up-src", "size_gb": 1, "image": image["id"]})
    source = sha256_chunked(volume_file(data_dir, vol["id"]))
    raw = upload(admin, vol["id"], {"name": "up-raw", "disk_format": "raw"})
    assert (raw["volume"]["status"], raw["volume"]["error"]) == ("available", None)
    img = admin.call("GET", f"/v1/images/{raw['image_id']}")
    assert (img["status"], img["disk_format"], img["size"], img["min_disk"]) == ("active", "raw", 1 << 30, 1)
    assert img["properties"] == {"volume_id": vol["id"]} and img["visibility"] == "private"
    assert img["checksum"] == sha256_chunked(data_dir / "images" / raw["image_id"]) == source
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HVD_")}, "HVD_URL": hvd.url,
           "HVD_TOKEN": admin.token}
    out = subprocess.run([sys.executable, "-m", "hvd", "volume", "upload-image", "up-src", "--name", "up-qcow2",
                          "--wait", "-f", "json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["status"] == "available"
    qcow = admin.call("GET", f"/v1/images/{answer['image_id']}")
    stored = data_dir / "images" / qcow["id"]
    assert (qcow["status"], qcow["disk_format"], qcow["virtual_size"]) == ("active", "qcow2", 1 << 30)
    assert (qcow["size"], qcow["checksum"]) == (stored.stat().st_size, sha256_chunked(stored))
    assert qcow["size"] < 16 * MIB  # qcow2 stores the data, not the zeros
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(stored), str(back)], check=True)
    assert sha256_chunked(back) == source
    admin.call("POST", "/v1/flavors", {"name": "up.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    server = admin.call("POST", "/v1/servers?wait=true", {"name": "from-upload", "flavor": "up.tiny",
                                                          "image": qcow["id"]})
    assert server["status"] == "ACTIVE", server
    admin.call("DELETE", f"/v1/servers/{server['id']}?wait=true")
    for image_id in (raw["image_id"], qcow["id"]):
        admin.call("DELETE", f"/v1/images/{image_id}", status=204)
    admin.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)


def test_upload_refusals_force_and_a_failed_upload_leave_the_volume_as_it_was(admin: Client, hvd: DaemonProcess,
                                                                              data_dir: Path) -> None:
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "up-refused", "size_gb": 1})
    images_before = admin.call("GET", "/v1/images")["images"]
    for body, words in (({"name": "x", "disk_format": "vmdk"}, "disk_format"), ({"name": "x" * 256}, "name"),
                        ({"disk_format": "raw"}, "name"), ({"name": "x", "bogus": 1}, "bogus")):
        assert words in upload(admin, vol["id"], body, status=400)["error"]["message"]
    admin.call("POST", f"/v1/volumes/{vol['id']}/reset-status", {"status": "in-use"})
    err = upload(admin, vol["id"], {"name": "busy"}, status=409)["error"]["message"]
    assert "it is in-use" in err and "force=true" in err
    assert admin.call("GET", "/v1/images")["images"] == images_before  # refused: nothing changed
    assert admin.call("GET", f"/v1/volumes/{vol['id']}")["status"] == "in-use"
    forced = upload(admin, vol["id"], {"name": "forced", "force": True})
    assert forced["volume"]["status"] == "in-use"
    assert admin.call("GET", f"/v1/images/{forced['image_id']}")["status"] == "active"
    admin.call("DELETE", f"/v1/images/{forced['image_id']}", status=204)
    admin.call("POST", f"/v1/volumes/{vol['id']}/reset-status", {"status": "available"})
    admin.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)
    # a failure after the copy (the image's size is over its owner's quota): image killed, files gone
    admin.call("POST", "/v1/projects", {"name": "upq"})
    admin.call("POST", "/v1/users", {"name": "upq-user", "password": "upq-secret-1", "project": "upq",
                                     "role": "member"})
    admin.call("PUT", "/v1/quotas/upq", {"quotas": {"image_megabytes": 1}})
    user = Client(hvd.url, "upq", "upq-user", "upq-secret-1")
    mine = user.call("POST", "/v1/volumes?wait=true", {"name": "up-fails", "size_gb": 1})
    failed = upload(user, mine["id"], {"name": "too-big", "disk_format": "raw"})
    assert failed["volume"]["status"] == "available" and "image_megabytes" in failed["volume"]["error"]
    assert user.call("GET", f"/v1/images/{failed['image_id']}")["status"] == "killed"
    assert not any(failed["image_id"] in p.name for p in (data_dir / "images").iterdir())
    user.call("DELETE", f"/v1/volumes/{mine['id']}?wait=true", status=204)


def test_an_upload_that_would_eat_the_image_store_reserve_fails_before_writing(tmp_path: Path) -> None:
    """The store's filesystem may hold the catalog: an upload that would leave less than
    [images] free_space_reserve_mb free is refused before a byte is written (as API uploads are)."""
    d = start_daemon(tmp_path / "hvd", env={"HVD_IMAGES__FREE_SPACE_RESERVE_MB": str(1 << 40)})
    try:
        admin = Client(d.url)
        vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "up-reserve", "size_gb": 1})
        failed = upload(admin, vol["id"], {"name": "no-room"})
        assert failed["volume"]["status"] == "available" and "reserve" in failed["volume"]["error"]
        assert admin.call("GET", f"/v1/images/{failed['image_id']}")["status"] == "killed"
        assert not list((tmp_path / "hvd" / "data" / "images").iterdir())
    finally:
        d.stop()


def test_a_restore_that_fails_before_writing_leaves_the_volume_as_it_was(admin: Client, data_dir: Path,
                                                                          image: dict[str, Any]) -> None:
    """The backup's manifest vanished from backup_dir (an unmounted share, a hand-made mess): the
    restore fails before touching the volume, which stays available with its data and the reason."""
    from hvd.storage.volumes.backup_io import manifest_path

    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "keep-me", "size_gb": 1, "image": image["id"]})
    before = sha256_of(volume_file(data_dir, vol["id"]))
    backup = admin.call("POST", "/v1/backups?wait=true", {"volume": vol["id"]})
    manifest_path(data_dir / "backups", vol["id"], backup["id"]).unlink()
    answer = admin.call("POST", f"/v1/backups/{backup['id']}/restore?wait=true", {"volume": vol["id"]})
    assert answer["volume"]["status"] == "available", answer
    assert answer["volume"]["error"] and "No such file" in answer["volume"]["error"]
    assert sha256_of(volume_file(data_dir, vol["id"])) == before
    assert admin.call("GET", f"/v1/backups/{backup['id']}")["status"] == "available"
    admin.call("DELETE", f"/v1/backups/{backup['id']}?wait=true", status=(204, 202))
    admin.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)


def test_an_uploads_image_takes_no_data_from_anyone_else(admin: Client, data_dir: Path,
                                                          image: dict[str, Any]) -> None:
    """The image is handed to the volume's host before the answer: a PUT of other data into it
    (its owner project may PUT its images) is refused, and the image ends with the volume's data."""
    vol = admin.call("POST", "/v1/volumes?wait=true", {"name": "up-own", "size_gb": 1, "image": image["id"]})
    made = admin.call("POST", f"/v1/volumes/{vol['id']}/upload-image", {"name": "up-own", "disk_format": "raw"})
    r = requests.put(f"{admin.url}/v1/images/{made['image_id']}/file", data=b"planted" * 1000, timeout=60,
                     headers={"Authorization": f"Bearer {admin.token}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 409 and "expected queued" in r.text, r.text  # saving, or active already
    deadline = time.monotonic() + 60
    while (img := admin.call("GET", f"/v1/images/{made['image_id']}"))["status"] == "saving":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert img["status"] == "active" and img["checksum"] == sha256_chunked(volume_file(data_dir, vol["id"]))
    admin.call("DELETE", f"/v1/images/{made['image_id']}", status=204)
    admin.call("DELETE", f"/v1/volumes/{vol['id']}?wait=true", status=204)
