"""The servers API end to end over real HTTP and SQLite with the fake driver (fast paths and
every invalid transition); real-VM behaviour is covered by tests/lab with libvirt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.functional.compute_helpers import action, make_flavor, make_qcow2, upload_image, wait_server


@pytest.fixture
async def env(admin_api: Api, tmp_path: Path) -> dict[str, Any]:
    image = await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    flavor = await make_flavor(admin_api)
    big = await make_flavor(admin_api, name="m1.small", vcpus=2, ram_mb=256, disk_gb=2)
    return {"image": image, "flavor": flavor, "big": big}


async def test_create_reaches_active_and_records_actions(admin_api: Api, env: dict[str, Any]) -> None:
    status, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                          {"name": "vm1", "flavor": "m1.tiny", "image": "base"})
    assert status == 202, server
    assert server["status"] == "ACTIVE" and server["power_state"] == 1 and server["host"] == "hvd-test"
    status, actions = await admin_api.call("GET", f"/v1/servers/{server['id']}/actions")
    assert [a["action"] for a in actions["actions"]] == ["create"]
    assert actions["actions"][0]["result"] == "success" and actions["actions"][0]["request_id"].startswith("req-")
    status, hosts = await admin_api.call("GET", "/v1/hosts/hvd-test")
    assert hosts["resources"]["memory_mb"]["claimed"] == 128 and hosts["instances"] == 1


async def test_lifecycle_transitions_and_invalid_ones(admin_api: Api, env: dict[str, Any]) -> None:
    _, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                     {"name": "vm2", "flavor": "m1.tiny", "image": "base"})
    sid = server["id"]
    expect = [
        ("stop", "SHUTOFF"), ("start", "ACTIVE"), ("pause", "PAUSED"), ("unpause", "ACTIVE"),
        ("suspend", "SUSPENDED"), ("resume", "ACTIVE"), ("rescue", "RESCUE"), ("unrescue", "ACTIVE"),
    ]
    for name, want in expect:
        status, body = await action(admin_api, sid, name)
        assert status == 202, (name, body)
        assert body["status"] == want, (name, body)
    await assert_reboots(admin_api, sid)
    await action(admin_api, sid, "stop")
    status, body = await action(admin_api, sid, "pause")
    assert status == 409
    assert body["error"]["message"] == f"Cannot 'pause' instance {sid} while it is in vm_state stopped"
    _, after = await admin_api.call("GET", f"/v1/servers/{sid}")
    assert after["status"] == "SHUTOFF" and after["task_state"] is None


async def console(api: Api, sid: str) -> str:
    status, body = await api.call("GET", f"/v1/servers/{sid}/console-log")
    assert status == 200, body
    return str(body["output"])


async def assert_reboots(api: Api, sid: str) -> None:
    """Soft and hard reboot each boot the guest again (its console shows a new boot after the
    old one); soft reboot lets the guest shut itself down first, hard pulls the plug."""
    for kind in ("soft", "hard"):
        before = await console(api, sid)
        boots = before.count("FAKE boot")
        status, body = await action(api, sid, "reboot", {"type": kind})
        assert status == 202 and body["status"] == "ACTIVE", (kind, body)
        after = await console(api, sid)
        assert after.startswith(before), kind  # the console keeps what the guest said before
        assert f"FAKE boot {boots + 1}" in after[len(before):], (kind, after)
        assert ("FAKE poweroff" in after[len(before):]) == (kind == "soft"), (kind, after)


async def test_bad_requests_change_nothing(admin_api: Api, env: dict[str, Any]) -> None:
    cases = [
        ({"name": "x", "flavor": "nope", "image": "base"}, 404, "Flavor nope could not be found"),
        ({"name": "x", "flavor": "m1.tiny", "image": "nope"}, 404, "Image nope could not be found"),
        ({"name": "x", "flavor": "m1.tiny", "image": "base", "bogus": 1}, 400, "unknown field 'bogus'"),
        ({"name": "x", "flavor": "m1.tiny", "image": "base", "key_name": "nokey"}, 400, "nokey"),
        ({"name": "", "flavor": "m1.tiny", "image": "base"}, 400, "'name'"),
    ]
    for body, code, text in cases:
        status, err = await admin_api.call("POST", "/v1/servers", body)
        assert status == code, (body, err)
        assert text in err["error"]["message"]
    _, servers = await admin_api.call("GET", "/v1/servers")
    assert servers["servers"] == []


async def test_lock_refuses_members_but_not_admin(admin_api: Api, env: dict[str, Any]) -> None:
    _, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                     {"name": "vm3", "flavor": "m1.tiny", "image": "base"})
    status, body = await action(admin_api, server["id"], "lock")
    assert status == 202 and body["locked"] is True
    # admin ignores the lock
    status, body = await action(admin_api, server["id"], "stop")
    assert status == 202 and body["status"] == "SHUTOFF"


async def test_snapshot_rebuild_resize_shelve(admin_api: Api, env: dict[str, Any]) -> None:
    _, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                     {"name": "vm4", "flavor": "m1.tiny", "image": "base"})
    sid = server["id"]
    status, snap = await action(admin_api, sid, "snapshot", {"name": "snap1"})
    assert status == 202, snap
    _, image = await admin_api.call("GET", f"/v1/images/{snap['image_id']}")
    assert image["status"] == "active" and image["properties"]["image_type"] == "snapshot"
    status, body = await action(admin_api, sid, "rebuild", {"image": snap["image_id"]})
    assert status == 202 and body["status"] == "ACTIVE" and body["image"]["id"] == snap["image_id"]
    status, body = await action(admin_api, sid, "resize", {"flavor": "m1.small"})
    assert status == 202 and body["status"] == "VERIFY_RESIZE" and body["flavor"]["name"] == "m1.small", body
    status, body = await action(admin_api, sid, "revert-resize")
    assert status == 202 and body["status"] == "ACTIVE" and body["flavor"]["name"] == "m1.tiny", body
    await action(admin_api, sid, "resize", {"flavor": "m1.small"})
    status, body = await action(admin_api, sid, "confirm-resize")
    assert body["status"] == "ACTIVE" and body["flavor"]["name"] == "m1.small"
    _, host = await admin_api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 256
    status, body = await action(admin_api, sid, "shelve")
    assert status == 202 and body["status"] == "SHELVED_OFFLOADED" and body["host"] is None, body
    _, host = await admin_api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 0
    _, images = await admin_api.call("GET", "/v1/images?name=vm4-shelved")
    assert len(images["images"]) == 1
    status, body = await action(admin_api, sid, "unshelve")
    assert status == 202 and body["status"] == "ACTIVE" and body["host"] == "hvd-test", body
    _, images = await admin_api.call("GET", "/v1/images?name=vm4-shelved")
    assert images["images"] == []


async def test_delete_from_any_state_is_idempotent(admin_api: Api, env: dict[str, Any]) -> None:
    _, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                     {"name": "vm5", "flavor": "m1.tiny", "image": "base"})
    await action(admin_api, server["id"], "pause")
    status, _ = await admin_api.call("DELETE", f"/v1/servers/{server['id']}?wait=true")
    assert status == 204
    status, _ = await admin_api.call("GET", f"/v1/servers/{server['id']}")
    assert status == 404
    status, _ = await admin_api.call("DELETE", f"/v1/servers/{server['id']}")
    assert status == 404
    _, host = await admin_api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 0


async def test_no_valid_host_names_the_reason(admin_api: Api, env: dict[str, Any]) -> None:
    await make_flavor(admin_api, name="huge", vcpus=1, ram_mb=10_000_000, disk_gb=1)
    await admin_api.call("PUT", "/v1/quotas/admin", {"quotas": {"ram": -1}})
    status, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                          {"name": "vm6", "flavor": "huge", "image": "base"})
    assert status == 202
    assert server["status"] == "ERROR"
    assert "No valid host" in server["fault"]["message"] and "RamFilter" in server["fault"]["message"]
    _, host = await admin_api.call("GET", "/v1/hosts/hvd-test")
    assert host["resources"]["memory_mb"]["claimed"] == 0
    await wait_server(admin_api, server["id"])


async def test_events_stream_actions_of_the_callers_project(admin_api: Api, env: dict[str, Any]) -> None:
    import asyncio
    import json

    events: list[dict[str, Any]] = []

    async def listen() -> None:
        async with admin_api.session.get(admin_api.url + "/v1/events",
                                         headers={"Authorization": f"Bearer {admin_api.token}"}) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["type"] == "instance.action.finish":
                        return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    _, server = await admin_api.call("POST", "/v1/servers", {"name": "ev", "flavor": "m1.tiny", "image": "base"})
    await asyncio.wait_for(listener, 10)
    mine = [e for e in events if e.get("instance_id") == server["id"]]
    assert [e["type"] for e in mine if e["type"].startswith("instance.action")] == [
        "instance.action.start", "instance.action.finish"]
    assert mine[-1]["action"] == "create" and mine[-1]["result"] == "success"


async def test_an_event_client_leaving_is_not_an_error(admin_api: Api, env: dict[str, Any],
                                                       caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that leaves its event stream is normal: the server ends the stream quietly (a debug
    line, no traceback, no 'unexpected error'). The departure is simulated the way aiohttp reports
    it when the event arrives while the socket is closing: the write raises ConnectionResetError."""
    import asyncio
    import logging

    import aiohttp
    from aiohttp import web

    real_write = web.StreamResponse.write

    async def write_to_closing(self: web.StreamResponse, data: bytes) -> None:
        if self.content_type == "text/event-stream" and data.startswith(b"event:"):
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    caplog.set_level(logging.DEBUG, logger="hvd.api")
    async with admin_api.session.get(admin_api.url + "/v1/events",
                                     headers={"Authorization": f"Bearer {admin_api.token}"}) as resp:
        assert resp.status == 200
        monkeypatch.setattr(web.StreamResponse, "write", write_to_closing)
        await admin_api.call("POST", "/v1/servers", {"name": "gone", "flavor": "m1.tiny", "image": "base"})
        await asyncio.wait_for(resp.content.read(), 10)  # the server ended the stream
    assert any("left the event stream" in r.getMessage() for r in caplog.records)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


async def test_lock_stops_members_names_the_lock_and_admin_lock_needs_admin_to_unlock(
        admin_api: Api, env: dict[str, Any]) -> None:
    await admin_api.call("POST", "/v1/users", {"name": "bob", "password": "bob-secret", "project": "admin",
                                               "role": "member"})
    bob = admin_api.as_other()
    await bob.login("bob", "bob-secret", "admin")
    _, server = await bob.call("POST", "/v1/servers?wait=true", {"name": "locky", "flavor": "m1.tiny", "image": "base"})
    sid = server["id"]
    status, body = await action(bob, sid, "lock")
    assert status == 202 and body["locked"]
    status, err = await action(bob, sid, "stop")
    assert status == 409 and "is locked" in err["error"]["message"]
    status, err = await bob.call("DELETE", f"/v1/servers/{sid}")
    assert status == 409
    status, body = await action(bob, sid, "unlock")  # any member may unlock an owner's lock
    assert status == 202 and not body["locked"]
    await action(admin_api, sid, "lock")  # locked by admin: a member may not lift it
    status, err = await action(bob, sid, "unlock")
    assert status == 403, err
    _, after = await bob.call("GET", f"/v1/servers/{sid}")
    assert after["locked"] and after["status"] == "ACTIVE"


async def test_an_event_stream_ends_when_its_token_is_revoked_and_streams_are_bounded(
        admin_api: Api, env: dict[str, Any]) -> None:
    import asyncio
    import json

    from hvd.api.v1.events import MAX_STREAMS_PER_USER

    status, issued = await admin_api.call("POST", "/v1/auth/tokens",
                                          {"username": "admin", "password": "admin-secret", "project": "admin"})
    assert status == 201, issued
    token = issued["token"]
    seen: list[dict[str, Any]] = []
    async with admin_api.session.get(admin_api.url + "/v1/events",
                                     headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        async with admin_api.session.delete(admin_api.url + "/v1/auth/token",
                                            headers={"Authorization": f"Bearer {token}"}) as revoked:
            assert revoked.status == 204, await revoked.text()
        await admin_api.call("POST", "/v1/servers", {"name": "after-revoke", "flavor": "m1.tiny", "image": "base"})
        body = await asyncio.wait_for(resp.content.read(), 20)  # the server ended the stream
        seen = [json.loads(line[6:]) for line in body.splitlines() if line.startswith(b"data: ")]
    assert seen == []  # not one event after the revocation
    streams = []
    try:
        for _ in range(MAX_STREAMS_PER_USER):
            streams.append(await admin_api.session.get(admin_api.url + "/v1/events",
                                                       headers={"Authorization": f"Bearer {admin_api.token}"}))
        assert all(s.status == 200 for s in streams)
        async with admin_api.session.get(admin_api.url + "/v1/events",
                                         headers={"Authorization": f"Bearer {admin_api.token}"}) as extra:
            assert extra.status == 429 and "too many event streams" in await extra.text()
    finally:
        for s in streams:
            s.close()


async def test_only_admins_see_which_host_runs_a_server(admin_api: Api, env: dict[str, Any]) -> None:
    status, _ = await admin_api.call("POST", "/v1/users", {"name": "hostless", "password": "member-secret-1",
                                                           "project": "admin", "role": "member"})
    assert status == 201
    member = Api(admin_api.session, admin_api.url)
    await member.login("hostless", "member-secret-1", "admin")
    status, server = await member.call("POST", "/v1/servers?wait=true", {"name": "mine", "flavor": "m1.tiny",
                                                                        "image": "base"})
    assert status == 202 and server["status"] == "ACTIVE", server
    assert server["host"] is None and len(server["host_id"]) == 56, server  # Nova's hostId: a sha224
    _, seen_by_admin = await admin_api.call("GET", f"/v1/servers/{server['id']}")
    assert seen_by_admin["host"] == "hvd-test" and seen_by_admin["host_id"] == server["host_id"]
    status, err = await member.call("GET", "/v1/servers?host=hvd-test")
    assert status == 403, err  # a filter by host would name it


async def test_the_image_cache_keeps_a_rescue_disks_base_while_the_server_is_rescued(
        api_server: tuple[Any, str], admin_api: Api, env: dict[str, Any], tmp_path: Path) -> None:
    import os
    import time

    from hvd.compute.reconcile import Reconciler

    rescue = await upload_image(admin_api, make_qcow2(tmp_path / "rescue.qcow2"), name="rescuer")
    status, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                          {"name": "rescued", "flavor": "m1.tiny", "image": "base"})
    assert status == 202
    status, body = await action(admin_api, server["id"], "rescue", {"image": "rescuer"})
    assert status == 202 and body["status"] == "RESCUE", body
    service = api_server[0].extra["compute"]
    cache = service.manager.cache
    base, rescue_base = cache.path_for(env["image"]["id"]), cache.path_for(rescue["id"])

    def age_everything() -> None:  # older than image_cache_max_age_s, so only being in use keeps a base
        old = time.time() - 3 * 86400
        for path in (base, rescue_base):
            os.utime(path, (old, old))

    age_everything()
    await Reconciler(service).clean_image_cache()
    assert base.exists() and rescue_base.exists()  # the rescue disk's base is in use
    status, body = await action(admin_api, server["id"], "unrescue")
    assert status == 202 and body["status"] == "ACTIVE", body
    age_everything()
    await Reconciler(service).clean_image_cache()
    assert base.exists() and not rescue_base.exists()  # unused now: removed
