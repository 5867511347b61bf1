"""Volumes on servers over real HTTP and SQLite with the fake driver: attach (running and
stopped), multi-attach refusal, detach, a guest that refuses the unplug, online extend, the volumes
kept across hard reboot, stop/start and shelve/unshelve, server delete, and crash repair of half-done attachments.
Real guests: tests/lab/test_volumes_libvirt.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from hvd.catalog.cmd_compute import InstanceUpdate
from hvd.catalog.cmd_volumes import (
    AttachmentAttaching,
    AttachmentBeginDetach,
    AttachmentComplete,
    AttachmentReserve,
    VolumeCreate,
    VolumeCreateFinish,
    VolumeTypeCreate,
)
from hvd.compute.reconcile import Reconciler
from hvd.compute.volume_reach import OFFLOADED
from hvd.drivers.fake import FakeDriver
from hvd.drivers.volumes import VolumeDisk
from hvd.identity.service import now_iso
from tests.conftest import Api
from tests.functional.compute_helpers import action, make_flavor, make_qcow2, upload_image


class FakeVolumeHost:
    """Stands in for this host's volume service: file volumes under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.grown: list[tuple[str, int]] = []

    def connection_info(self, volume: dict[str, Any]) -> dict[str, Any]:
        return {"type": "file", "path": str(self.root / f"volume-{volume['id']}"), "format": volume["volume_format"]}

    async def grow_data(self, volume: dict[str, Any], new_size_gb: int) -> None:
        self.grown.append((volume["id"], new_size_gb))


@pytest.fixture
async def env(admin_api: Api, api_server: tuple[Any, str], tmp_path: Path) -> dict[str, Any]:
    services = api_server[0]
    await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    await make_flavor(admin_api)
    compute = services.extra["compute"]
    compute.volumes.volume_host = FakeVolumeHost(tmp_path)
    compute.volumes.detach_timeout_s = 0.2
    catalog = services.catalog
    plain, shared = str(uuid.uuid4()), str(uuid.uuid4())
    await catalog.propose(VolumeTypeCreate(id=plain, name="plain-t", created_at=now_iso()))
    await catalog.propose(VolumeTypeCreate(id=shared, name="shared-t", extra_specs={"multiattach": "<is> True"},
                                           created_at=now_iso()))
    return {"services": services, "compute": compute, "catalog": catalog, "types": {"plain": plain, "shared": shared}}


async def _project(api: Api) -> str:
    """The admin project's id (volumes are made straight in the catalog, for that project)."""
    status, me = await api.call("POST", "/v1/auth/tokens", {"username": "admin", "password": "admin-secret",
                                                            "project": "admin"})
    assert status == 201, me
    return str(me["project"]["id"] if isinstance(me["project"], dict) else me["project"])


async def make_volume(env: dict[str, Any], project: str, kind: str = "plain", fmt: str = "raw") -> str:
    vid = str(uuid.uuid4())
    host = env["services"].config.host_name
    await env["catalog"].propose(VolumeCreate(
        id=vid, project_id=project, user_id="u", name=f"v-{vid[:4]}", size_gb=1, volume_type_id=env["types"][kind],
        availability_zone="nova", host=host, backend="file", volume_format=fmt, created_at=now_iso()))
    await env["catalog"].propose(VolumeCreateFinish(id=vid, ok=True, updated_at=now_iso()))
    return vid


async def volume_status(env: dict[str, Any], vid: str) -> str:
    from hvd.compute.volumes import volume_row

    row = await env["catalog"].read(volume_row, vid)
    return "deleted" if row is None else str(row["status"])


def domain_volumes(env: dict[str, Any], sid: str) -> dict[str, str]:
    driver: FakeDriver = env["compute"].manager.driver
    return {v.volume_id: v.dev for v in driver.domains[sid].volumes.values()}


async def boot(api: Api, name: str) -> str:
    status, server = await api.call("POST", "/v1/servers?wait=true", {"name": name, "flavor": "m1.tiny",
                                                                      "image": "base"})
    assert status == 202 and server["status"] == "ACTIVE", server
    return str(server["id"])


async def test_attach_detach_multiattach_and_a_refusing_guest(admin_api: Api, env: dict[str, Any]) -> None:
    project = await _project(admin_api)
    one, two = await boot(admin_api, "one"), await boot(admin_api, "two")
    vol = await make_volume(env, project)
    path = f"/v1/servers/{one}/volume-attachments"
    status, att = await admin_api.call("POST", path, {"volume": vol})
    assert status == 201, att
    assert (att["device"], att["status"], att["volume_id"], att["server_id"]) == ("/dev/vdc", "attached", vol, one)
    assert await volume_status(env, vol) == "in-use"
    assert domain_volumes(env, one) == {vol: "vdc"}  # vda root, vdb the config drive
    status, listed = await admin_api.call("GET", path)
    assert [a["volume_id"] for a in listed["volume_attachments"]] == [vol]
    # in-use and not multi-attach: refused for another server, and twice for the same one
    status, body = await admin_api.call("POST", f"/v1/servers/{two}/volume-attachments", {"volume": vol})
    assert status == 409 and "multi-attach" in body["error"]["message"], body
    status, body = await admin_api.call("POST", path, {"volume": vol})
    assert status == 409 and "already attached" in body["error"]["message"], body
    status, body = await admin_api.call("POST", path, {"volume": vol, "device": "vda"})
    assert status == 400, body
    status, body = await action(admin_api, one, "evacuate")  # its volume lives on the host it would leave
    assert status == 409 and "while that host is down its data is unreachable" in body["error"]["message"], body
    status, body = await admin_api.call("POST", path, {"volume": str(uuid.uuid4())})
    assert status == 404, body

    # the guest does not let go: 409 naming it, and the volume stays attached and in-use
    driver: FakeDriver = env["compute"].manager.driver
    driver.set_volume_release(one, False)
    status, body = await admin_api.call("DELETE", f"{path}/{vol}")
    assert status == 409 and "did not release" in body["error"]["message"], body
    assert await volume_status(env, vol) == "in-use" and domain_volumes(env, one) == {vol: "vdc"}
    _, listed = await admin_api.call("GET", path)
    assert listed["volume_attachments"][0]["status"] == "attached"
    assert "did not release" in listed["volume_attachments"][0]["error"]
    driver.set_volume_release(one, True)
    status, _ = await admin_api.call("DELETE", f"{path}/{vol}")
    assert status == 204
    assert await volume_status(env, vol) == "available" and domain_volumes(env, one) == {}
    status, body = await admin_api.call("DELETE", f"{path}/{vol}")
    assert status == 404, body

    # a multi-attach type: two servers at once
    shared = await make_volume(env, project, "shared")
    for sid in (one, two):
        status, att = await admin_api.call("POST", f"/v1/servers/{sid}/volume-attachments", {"volume": shared})
        assert status == 201, att
    assert domain_volumes(env, two) == {shared: "vdc"}
    assert next(iter(driver.domains[two].volumes.values())).shareable
    # the hypervisor refuses the attach: nothing left behind
    driver.fail("attach_volume")
    third = await make_volume(env, project)
    status, body = await admin_api.call("POST", path, {"volume": third})
    assert status == 500, body
    assert await volume_status(env, third) == "available"
    _, listed = await admin_api.call("GET", path)
    assert [a["volume_id"] for a in listed["volume_attachments"]] == [shared]


async def test_volumes_follow_the_server_through_stop_reboot_and_delete(admin_api: Api, env: dict[str, Any]) -> None:
    project = await _project(admin_api)
    sid = await boot(admin_api, "keeper")
    status, _ = await action(admin_api, sid, "stop")
    vol = await make_volume(env, project)
    status, att = await admin_api.call("POST", f"/v1/servers/{sid}/volume-attachments",
                                       {"volume": vol, "device": "/dev/vdd"})
    assert status == 201 and att["device"] == "/dev/vdd", att
    await make_flavor(admin_api, name="m1.small", vcpus=2, ram_mb=256, disk_gb=2)
    steps: list[tuple[str, dict[str, Any] | None, str]] = [
        ("start", None, "ACTIVE"), ("reboot", {"type": "HARD"}, "ACTIVE"), ("rebuild", {"image": "base"}, "ACTIVE"),
        ("resize", {"flavor": "m1.small"}, "VERIFY_RESIZE"), ("confirm-resize", None, "ACTIVE")]
    for name, body, want in steps:
        status, answer = await action(admin_api, sid, name, body)
        assert status == 202 and answer["status"] == want, (name, answer)
        assert domain_volumes(env, sid) == {vol: "vdd"}, name  # the regenerated definition has it
    # shelve-offload keeps the attachment with no connection; unshelve opens the volume again
    status, answer = await action(admin_api, sid, "shelve")
    assert status == 202 and answer["status"] == "SHELVED_OFFLOADED", answer
    rows = await env["compute"].volumes.of_server(sid)
    assert [(a["volume_id"], a["status"], a["connection_info"]) for a in rows] == [(vol, "attached", OFFLOADED)]
    assert await volume_status(env, vol) == "in-use"
    driver: FakeDriver = env["compute"].manager.driver
    driver.fail("spawn")  # the unshelve fails on the only host: the attachment is offloaded again
    status, answer = await action(admin_api, sid, "unshelve")
    assert answer["status"] == "SHELVED_OFFLOADED", answer
    assert [a["connection_info"] for a in await env["compute"].volumes.of_server(sid)] == [OFFLOADED]
    # a restart cuts an unshelve after it reconnected the volume: the repair offloads it again
    compute = env["compute"]
    await compute.volumes.connect_here(await compute.instance(sid))
    assert [a["connection_info"]["type"] for a in await compute.volumes.of_server(sid)] == ["file"]
    await env["catalog"].propose(InstanceUpdate(id=sid, task_state="unshelving", host=compute.host,
                                                updated_at=now_iso()))
    await Reconciler(compute).startup()
    assert [a["connection_info"] for a in await compute.volumes.of_server(sid)] == [OFFLOADED]
    assert (await compute.instance(sid))["vm_state"] == "shelved_offloaded"
    status, answer = await action(admin_api, sid, "unshelve")
    assert status == 202 and answer["status"] == "ACTIVE", answer
    assert domain_volumes(env, sid) == {vol: "vdd"}
    rows = await env["compute"].volumes.of_server(sid)
    assert rows[0]["connection_info"] == env["compute"].volumes.volume_host.connection_info(
        {"id": vol, "volume_format": "raw"})
    assert (await driver.console_log(sid)).splitlines()[-1] == "FAKE disks=vda vdb vdc"  # root, config drive, vol
    # online extend: a file the running QEMU holds is grown by QEMU (block resize), the guest told
    vols = env["compute"].volumes
    extended = await vols.extend_online(vol, 3)
    assert extended["size_gb"] == 3 and extended["status"] == "in-use"
    assert vols.volume_host.grown == [] and driver.domains[sid].volume_sizes[vol] == 3 << 30
    await action(admin_api, sid, "stop")  # no QEMU holds it: the backend grows the data
    assert (await vols.extend_online(vol, 4))["size_gb"] == 4 and vols.volume_host.grown == [(vol, 4)]
    status, _ = await admin_api.call("DELETE", f"/v1/servers/{sid}?wait=true")
    assert status == 204
    assert await volume_status(env, vol) == "available"  # the volume outlives its server


async def test_restart_repairs_half_done_attachments(admin_api: Api, env: dict[str, Any]) -> None:
    """What a kill -9 between two steps leaves is finished or rolled back from the domain's truth."""
    project = await _project(admin_api)
    sid = await boot(admin_api, "crashy")
    catalog, vols = env["catalog"], env["compute"].volumes
    driver: FakeDriver = vols.driver
    reserved, attaching_in, attaching_out, detaching = [await make_volume(env, project) for _ in range(4)]
    ids = {}
    for vid in (reserved, attaching_in, attaching_out, detaching):
        ids[vid] = str(uuid.uuid4())
        await catalog.propose(AttachmentReserve(id=ids[vid], volume_id=vid, instance_id=sid, created_at=now_iso()))
    for vid in (attaching_in, attaching_out, detaching):
        info = vols.volume_host.connection_info({"id": vid, "volume_format": "raw"})
        await catalog.propose(AttachmentAttaching(id=ids[vid], host=vols.host, connection_info=info,
                                                  updated_at=now_iso()))
    # the hypervisor got attaching_in before the crash; detaching is attached and its detach began
    dev_in = await driver.attach_volume(sid, VolumeDisk(attaching_in, "vdc", "file", path="/x"))
    dev_out = await driver.attach_volume(sid, VolumeDisk(detaching, "vdd", "file", path="/y"))
    await catalog.propose(AttachmentComplete(id=ids[detaching], device=dev_out, updated_at=now_iso()))
    await catalog.propose(AttachmentBeginDetach(id=ids[detaching], updated_at=now_iso()))
    await vols.repair()
    rows = {a["volume_id"]: a for a in await vols.of_server(sid)}
    assert set(rows) == {attaching_in, detaching}
    assert (rows[attaching_in]["status"], rows[attaching_in]["device"]) == ("attached", dev_in)
    assert rows[detaching]["status"] == "attached" and "restart" in rows[detaching]["error"]
    assert [await volume_status(env, v) for v in (reserved, attaching_out, attaching_in, detaching)] == [
        "available", "available", "in-use", "in-use"]


async def test_boot_from_volume_and_online_extend_through_the_api(admin_api: Api, api_server: tuple[Any, str],
                                                                  tmp_path: Path) -> None:
    """With the host's real volume service (file backend): image -> boot volume -> server on vda."""
    await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    await make_flavor(admin_api)
    driver: FakeDriver = api_server[0].extra["compute"].manager.driver
    status, body = await admin_api.call("POST", "/v1/servers", {"name": "nothing", "flavor": "m1.tiny"})
    assert status == 400 and "boot_index 0" in body["error"]["message"], body
    status, server = await admin_api.call("POST", "/v1/servers?wait=true", {
        "name": "bfv", "flavor": "m1.tiny", "block_device_mapping": [
            {"source": "image", "id": "base", "boot_index": 0, "delete_on_termination": True}]})
    assert status == 202 and server["status"] == "ACTIVE", server
    sid = server["id"]
    _, listed = await admin_api.call("GET", f"/v1/servers/{sid}/volume-attachments")
    assert [a["device"] for a in listed["volume_attachments"]] == ["/dev/vda"]
    boot_vid = listed["volume_attachments"][0]["volume_id"]
    _, boot = await admin_api.call("GET", f"/v1/volumes/{boot_vid}")
    assert (boot["status"], boot["bootable"], boot["size_gb"]) == ("in-use", True, 1), boot
    assert driver.domains[sid].spec.boots_from_volume and not driver.domains[sid].spec.path("disk").exists()
    # its snapshot: a volume snapshot of the boot volume, and an image pointing to it that boots a copy
    status, body = await action(admin_api, sid, "snapshot", {"name": "bfv-snap"})
    assert status == 202 and body["server"]["status"] == "ACTIVE", body
    _, image = await admin_api.call("GET", f"/v1/images/{body['image_id']}")
    assert image["status"] == "active", image
    snap_id = image["properties"]["boot_volume_snapshot_id"]
    _, snap = await admin_api.call("GET", f"/v1/snapshots/{snap_id}")
    assert (snap["status"], snap["volume_id"]) == ("available", boot_vid), snap
    status, copy = await admin_api.call("POST", "/v1/servers?wait=true",
                                        {"name": "copy", "flavor": "m1.tiny", "image": body["image_id"]})
    assert status == 202 and copy["status"] == "ACTIVE", copy
    _, copied = await admin_api.call("GET", f"/v1/servers/{copy['id']}/volume-attachments")
    [copy_att] = copied["volume_attachments"]
    _, copy_vol = await admin_api.call("GET", f"/v1/volumes/{copy_att['volume_id']}")
    assert copy_att["device"] == "/dev/vda" and copy_vol["source_snapshot_id"] == snap_id, copy_vol
    status, _ = await admin_api.call("DELETE", f"/v1/servers/{copy['id']}?wait=true")
    assert status == 204
    status, body = await admin_api.call("DELETE", f"/v1/servers/{sid}/volume-attachments/{boot_vid}")
    assert status == 409 and "boot volume" in body["error"]["message"], body

    status, data = await admin_api.call("POST", "/v1/volumes?wait=true", {"name": "data", "size_gb": 1})
    assert status == 202 and data["status"] == "available", data
    status, att = await admin_api.call("POST", f"/v1/servers/{sid}/volume-attachments", {"volume": data["id"]})
    assert status == 201 and att["device"] == "/dev/vdc", att  # vdb: the config drive
    status, grown = await admin_api.call("POST", f"/v1/volumes/{data['id']}/extend?wait=true", {"new_size_gb": 2})
    assert status == 202 and (grown["status"], grown["size_gb"]) == ("in-use", 2), grown
    assert driver.domains[sid].volume_sizes[data["id"]] == 2 << 30
    status, body = await admin_api.call("POST", f"/v1/volumes/{data['id']}/extend", {"new_size_gb": 2})
    assert status == 400, body  # grow only
    for name in ("stop", "start"):
        status, body = await action(admin_api, sid, name)
        assert status == 202 and body["task_state"] is None, body
    assert {v.dev for v in driver.domains[sid].volumes.values()} == {"vda", "vdc"}

    status, _ = await admin_api.call("DELETE", f"/v1/snapshots/{snap_id}?wait=true")
    assert status in (202, 204)  # a volume with snapshots is never deleted (Cinder), not even on termination
    status, _ = await admin_api.call("DELETE", f"/v1/servers/{sid}?wait=true")
    assert status == 204
    for _ in range(100):  # the volume service deletes the boot volume (delete_on_termination)
        status, _ = await admin_api.call("GET", f"/v1/volumes/{boot_vid}")
        if status == 404:
            break
        await asyncio.sleep(0.05)
    assert status == 404
    _, data = await admin_api.call("GET", f"/v1/volumes/{data['id']}")
    assert data["status"] == "available" and data["size_gb"] == 2
