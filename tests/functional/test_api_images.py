"""/v1/images over real HTTP, SQLite and qemu-img: upload checks, states, visibility, protection."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.functional.compute_helpers import make_flavor, make_qcow2, upload_image


async def _create(api: Api, **fields: object) -> dict[str, object]:
    status, image = await api.call("POST", "/v1/images", {"name": "img", **fields})
    assert status == 201, image
    return image


async def _put(api: Api, image_id: object, data: bytes) -> tuple[int, object]:
    return await api.call("PUT", f"/v1/images/{image_id}/file", data=data,
                          headers={"Content-Type": "application/octet-stream"})


async def test_upload_download_round_trip(admin_api: Api, tmp_path: Path) -> None:
    path = make_qcow2(tmp_path / "a.qcow2", "16M")
    image = await upload_image(admin_api, path, name="a")
    data = path.read_bytes()
    assert image["size"] == len(data) and image["virtual_size"] == 16 * 2**20
    assert image["checksum"] == hashlib.sha256(data).hexdigest()
    async with admin_api.session.get(f"{admin_api.url}/v1/images/{image['id']}/file",
                                     headers={"Authorization": f"Bearer {admin_api.token}"}) as resp:
        assert resp.status == 200
        assert await resp.read() == data


async def test_declared_format_must_match_and_failed_upload_is_killed(admin_api: Api, tmp_path: Path) -> None:
    image = await _create(admin_api, disk_format="raw")
    status, err = await _put(admin_api, image["id"], make_qcow2(tmp_path / "q.qcow2", "1M").read_bytes())
    assert status == 400 and "qcow2" in err["error"]["message"], err
    _, shown = await admin_api.call("GET", f"/v1/images/{image['id']}")
    assert shown["status"] == "killed" and shown["size"] is None
    assert not any(p.name == image["id"] for p in (tmp_path / "hvd" / "data" / "images").iterdir())
    status, err = await _put(admin_api, image["id"], b"again")
    assert status == 409  # killed images take no more data


async def test_qcow2_with_a_backing_file_is_refused(admin_api: Api, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"x" * 4096)
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil)],
                   check=True)
    image = await _create(admin_api, disk_format="qcow2")
    status, err = await _put(admin_api, image["id"], evil.read_bytes())
    assert status == 400 and "backing" in err["error"]["message"], err
    _, shown = await admin_api.call("GET", f"/v1/images/{image['id']}")
    assert shown["status"] == "killed"


async def test_protected_image_cannot_be_deleted(admin_api: Api) -> None:
    image = await _create(admin_api, protected=True)
    status, err = await admin_api.call("DELETE", f"/v1/images/{image['id']}")
    assert status == 409 and "protected" in err["error"]["message"]
    status, _ = await admin_api.call("PATCH", f"/v1/images/{image['id']}", {"protected": False})
    assert status == 200
    status, _ = await admin_api.call("DELETE", f"/v1/images/{image['id']}")
    assert status == 204
    status, _ = await admin_api.call("GET", f"/v1/images/{image['id']}")
    assert status == 404


async def test_visibility_and_project_isolation(admin_api: Api, tmp_path: Path) -> None:
    await admin_api.call("POST", "/v1/users", {"name": "alice", "password": "alice-secret", "project": "demo",
                                               "role": "member"})
    private = await upload_image(admin_api, make_qcow2(tmp_path / "p.qcow2", "1M"), name="private")
    public = await upload_image(admin_api, make_qcow2(tmp_path / "u.qcow2", "1M"), name="public",
                                visibility="public")
    alice = admin_api.as_other()
    await alice.login("alice", "alice-secret", "demo")
    _, images = await alice.call("GET", "/v1/images")
    assert [i["id"] for i in images["images"]] == [public["id"]]
    status, _ = await alice.call("GET", f"/v1/images/{private['id']}")
    assert status == 404
    status, err = await alice.call("POST", "/v1/images", {"name": "mine", "visibility": "public"})
    assert status == 403, err
    status, _ = await alice.call("DELETE", f"/v1/images/{public['id']}")
    assert status == 404  # visible, but not hers to change
    _, images = await admin_api.call("GET", "/v1/images")
    assert len(images["images"]) == 2


async def test_min_disk_and_min_ram_are_enforced_at_create(admin_api: Api, tmp_path: Path) -> None:
    await upload_image(admin_api, make_qcow2(tmp_path / "m.qcow2", "1M"), name="needy", min_disk=5, min_ram=512)
    await make_flavor(admin_api, name="small", ram_mb=128, disk_gb=1)
    status, err = await admin_api.call("POST", "/v1/servers", {"name": "s", "flavor": "small", "image": "needy"})
    assert status == 400 and "disk is too small" in err["error"]["message"]
    await make_flavor(admin_api, name="roomy", ram_mb=128, disk_gb=10)
    status, err = await admin_api.call("POST", "/v1/servers", {"name": "s", "flavor": "roomy", "image": "needy"})
    assert status == 400 and "memory is too small" in err["error"]["message"]
    _, servers = await admin_api.call("GET", "/v1/servers")
    assert servers["servers"] == []


async def test_image_data_counts_against_a_quota_in_megabytes(admin_api: Api, tmp_path: Path) -> None:
    status, _ = await admin_api.call("PUT", "/v1/quotas/admin", {"quotas": {"image_megabytes": 1}})
    assert status == 200
    data = tmp_path / "big.raw"
    data.write_bytes(b"\x01" * (2 << 20))  # 2 MiB of data
    status, image = await admin_api.call("POST", "/v1/images", {"name": "big", "disk_format": "raw"})
    assert status == 201
    status, err = await admin_api.call("PUT", f"/v1/images/{image['id']}/file", data=data.read_bytes(),
                                       headers={"Content-Type": "application/octet-stream"})
    assert status == 403 and "image_megabytes" in err["error"]["message"], err
    _, still = await admin_api.call("GET", f"/v1/images/{image['id']}")
    assert still["status"] == "queued"  # refused before any data was taken: nothing changed

    async def chunked() -> object:  # no Content-Length: refused when the image would become active
        yield data.read_bytes()

    status, err = await admin_api.call("PUT", f"/v1/images/{image['id']}/file", data=chunked(),
                                       headers={"Content-Type": "application/octet-stream"})
    assert status == 403 and "image_megabytes" in err["error"]["message"], err
    _, killed = await admin_api.call("GET", f"/v1/images/{image['id']}")
    assert killed["status"] == "killed"
    status, _ = await admin_api.call("PUT", "/v1/quotas/admin", {"quotas": {"image_megabytes": 102400}})
    assert status == 200


def test_an_upload_that_would_eat_the_free_space_reserve_is_refused(tmp_path: Path) -> None:
    import requests

    from tests.conftest import start_daemon

    daemon = start_daemon(tmp_path / "hvd", extra="[images]\nfree_space_reserve_mb = 1000000000\n")
    try:
        creds = {"username": "admin", "password": "admin-secret", "project": "admin"}
        token = requests.post(daemon.url + "/v1/auth/tokens", json=creds, timeout=30).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        image = requests.post(daemon.url + "/v1/images", json={"name": "x", "disk_format": "raw"}, headers=headers,
                              timeout=30).json()
        r = requests.put(daemon.url + f"/v1/images/{image['id']}/file", data=b"\x01" * 4096, timeout=30,
                         headers={**headers, "Content-Type": "application/octet-stream"})
        assert r.status_code == 507 and "free_space_reserve_mb" in r.text, r.text
        shown = requests.get(daemon.url + f"/v1/images/{image['id']}", headers=headers, timeout=30).json()
        assert shown["status"] == "queued"
    finally:
        daemon.stop()


async def test_an_activation_whose_answer_was_lost_keeps_the_image(
        admin_api: Api, api_server: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog committed the activation but its answer was lost (OutcomeUnknown): the upload
    succeeds and the image keeps its file (it was deleted: an active image with no data)."""
    from hvd.catalog.cmd_compute import ImageSetStatus
    from hvd.errors import OutcomeUnknown

    catalog = api_server[0].catalog
    real = catalog.propose

    async def lost_answer(cmd: Any, *args: Any, **kw: Any) -> Any:
        result = await real(cmd, *args, **kw)
        if isinstance(cmd, ImageSetStatus) and cmd.status == "active":
            raise OutcomeUnknown("the leader moved before it answered")
        return result

    monkeypatch.setattr(catalog, "propose", lost_answer)
    image = await _create(admin_api, disk_format="qcow2")
    data = make_qcow2(tmp_path / "kept.qcow2", "1M").read_bytes()
    status, _ = await _put(admin_api, image["id"], data)
    assert status == 204
    _, shown = await admin_api.call("GET", f"/v1/images/{image['id']}")
    assert shown["status"] == "active"
    assert (tmp_path / "hvd" / "data" / "images" / image["id"]).read_bytes() == data
