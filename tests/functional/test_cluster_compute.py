"""Three `hvd daemon` processes (fake compute driver) behaving as one cloud.

A create sent to any host is placed by the leader and built by the chosen host; operations sent
to any host are carried out by the owning host (the fake driver of a host that does not own the
instance has no domain for it, so a misrouted stop would fail); an image uploaded to one host
boots on another (its data streams between hosts) and is copied to a second host; deleting it
removes every copy. Real libvirt across hosts is proven by tests/lab/test_cluster_compute.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.functional.test_cluster import IDS, Cluster


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cloud"))
    try:
        for node in IDS:
            c.start(node)
        c.wait_ready(IDS)
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def upload(cloud: Cluster, node: str, name: str, tmp: Path) -> dict[str, Any]:
    disk = tmp / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    r = cloud.call(node, "POST", "/v1/images", {"name": name, "disk_format": "qcow2"})
    assert r.status_code == 201, r.text
    image = r.json()
    r = requests.put(cloud.url(node) + f"/v1/images/{image['id']}/file", data=disk.read_bytes(), timeout=30,
                     headers={"Authorization": f"Bearer {cloud.tokens[node]}",
                              "Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    return image


def create(cloud: Cluster, via: str, name: str, image: str, host: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "flavor": "c.tiny", "image": image, "networks": "none", **extra}
    if host is not None:
        body["availability_zone"] = f"nova:{host}"
    r = cloud.call(via, "POST", "/v1/servers?wait=true", body)
    assert r.status_code == 202, r.text
    return dict(r.json())


def held_by(cloud: Cluster, image_id: str) -> set[str]:
    return {n for n in IDS if (cloud.base / n / "data" / "images" / image_id).exists()}


@pytest.fixture(scope="module")
def image(cloud: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    r = cloud.call("node1", "POST", "/v1/flavors", {"name": "c.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    assert r.status_code == 201, r.text
    return upload(cloud, "node1", "cimg", tmp_path_factory.mktemp("img"))


def test_a_create_through_any_host_is_built_on_the_host_placement_chose(cloud: Cluster,
                                                                       image: dict[str, Any]) -> None:
    leader = cloud.wait_ready(IDS)
    followers = [n for n in IDS if n != leader]
    servers = {}
    for target in IDS:  # forced hosts (admin): through a follower, onto each host in turn
        server = create(cloud, followers[0], f"on-{target}", image["id"], host=target)
        assert server["status"] == "ACTIVE" and server["host"] == target, server
        servers[target] = server
    actions = cloud.call(followers[1], "GET", f"/v1/servers/{servers[followers[1]]['id']}/actions").json()
    assert [(a["action"], a["result"]) for a in actions["actions"]] == [("create", "success")]
    for s in servers.values():
        assert cloud.call("node1", "DELETE", f"/v1/servers/{s['id']}?wait=true").status_code == 204


def test_parallel_creates_spread_over_the_hosts(cloud: Cluster, image: dict[str, Any]) -> None:
    r = cloud.call("node2", "POST", "/v1/servers?wait=true",
                   {"name": "spread", "flavor": "c.tiny", "image": image["id"], "networks": "none", "min_count": 6})
    assert r.status_code == 202, r.text
    servers = r.json()["servers"]
    assert {s["status"] for s in servers} == {"ACTIVE"}, servers
    hosts = sorted(s["host"] for s in servers)
    assert hosts == sorted(IDS * 2), hosts  # the RAM weigher spreads equal hosts evenly
    for s in servers:
        assert cloud.call("node3", "DELETE", f"/v1/servers/{s['id']}?wait=true").status_code == 204


def test_an_anti_affinity_group_lands_on_distinct_hosts_and_a_fourth_member_has_no_host(
        cloud: Cluster, image: dict[str, Any]) -> None:
    r = cloud.call("node3", "POST", "/v1/server-groups", {"name": "anti", "policy": "anti-affinity"})
    assert r.status_code == 201, r.text
    r = cloud.call("node1", "POST", "/v1/servers?wait=true",
                   {"name": "anti", "flavor": "c.tiny", "image": image["id"], "networks": "none",
                    "min_count": 3, "server_group": "anti"})
    assert r.status_code == 202, r.text
    servers = r.json()["servers"]
    assert sorted(s["host"] for s in servers) == sorted(IDS), servers
    fourth = create(cloud, "node2", "anti-4", image["id"], server_group="anti")
    assert fourth["status"] == "ERROR", fourth
    assert "No valid host" in fourth["fault"]["message"] and "anti-affinity" in fourth["fault"]["message"].lower()
    for s in [*servers, fourth]:
        assert cloud.call("node2", "DELETE", f"/v1/servers/{s['id']}?wait=true").status_code == 204


def test_operations_through_any_host_run_on_the_owner(cloud: Cluster, image: dict[str, Any]) -> None:
    server = create(cloud, "node1", "routed", image["id"], host="node2")
    sid = server["id"]
    r = cloud.call("node3", "POST", f"/v1/servers/{sid}/stop?wait=true")
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/start?wait=true")
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
    r = cloud.call("node3", "POST", f"/v1/servers/{sid}/reboot?wait=true", {"type": "hard"})
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
    r = cloud.call("node1", "GET", f"/v1/servers/{sid}/console-log")
    assert r.status_code == 200, r.text
    actions = cloud.call("node3", "GET", f"/v1/servers/{sid}/actions").json()["actions"]
    assert [(a["action"], a["result"]) for a in actions] == [
        ("create", "success"), ("stop", "success"), ("start", "success"), ("reboot-hard", "success")], actions
    r = cloud.call("node3", "DELETE", f"/v1/servers/{sid}?wait=true")
    assert r.status_code == 204, r.text
    assert cloud.call("node2", "GET", f"/v1/servers/{sid}").status_code == 404


def test_an_image_uploaded_to_one_host_boots_on_another_and_is_kept_on_two_hosts(
        cloud: Cluster, image: dict[str, Any], tmp_path: Path) -> None:  # image: the module's flavor too
    img = upload(cloud, "node1", "spread-img", tmp_path)
    copies = wait_for(lambda: held_by(cloud, img["id"]) if len(held_by(cloud, img["id"])) == 2 else None,
                      "a second copy of the image")
    assert "node1" in copies
    elsewhere = next(n for n in IDS if n not in copies)  # boots where no copy is: streamed from a holder
    server = create(cloud, "node2", "far", img["id"], host=elsewhere)
    assert server["status"] == "ACTIVE" and server["host"] == elsewhere, server
    assert cloud.call("node1", "DELETE", f"/v1/servers/{server['id']}?wait=true").status_code == 204
    assert cloud.call("node3", "DELETE", f"/v1/images/{img['id']}").status_code == 204
    wait_for(lambda: not held_by(cloud, img["id"]), "every copy of the deleted image to go")


def test_an_aggregate_zone_steers_placement_and_is_listed(cloud: Cluster, image: dict[str, Any]) -> None:
    r = cloud.call("node2", "POST", "/v1/aggregates", {"name": "bad:name"})
    assert r.status_code == 400, r.text
    r = cloud.call("node2", "POST", "/v1/aggregates", {"name": "fast", "availability_zone": "az-fast",
                                                       "metadata": {"ssd": "true"}})
    assert r.status_code == 201, r.text
    agg = r.json()
    r = cloud.call("node1", "POST", f"/v1/aggregates/{agg['id']}/hosts", {"host": "nosuchhost"})
    assert r.status_code == 404, r.text
    r = cloud.call("node1", "POST", f"/v1/aggregates/{agg['id']}/hosts", {"host": "node3"})
    assert r.status_code == 200 and r.json()["hosts"] == ["node3"], r.text
    zones = cloud.call("node2", "GET", "/v1/availability-zones").json()["availability_zones"]
    assert {z["name"]: z["hosts"] for z in zones} == {"az-fast": ["node3"], "nova": ["node1", "node2"]}
    env = {**os.environ, "HVD_URL": cloud.url("node1"), "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret",
           "HVD_PROJECT": "admin"}
    out = subprocess.run([sys.executable, "-m", "hvd", "aggregate", "show", "fast", "-f", "json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["hosts"] == ["node3"]
    server = create(cloud, "node1", "zoned", image["id"], availability_zone="az-fast")
    assert server["status"] == "ACTIVE" and server["host"] == "node3", server
    r = cloud.call("node1", "DELETE", f"/v1/aggregates/{agg['id']}")
    assert r.status_code == 409, r.text  # it still has a host
    r = cloud.call("node3", "PATCH", f"/v1/aggregates/{agg['id']}", {"metadata": {"ssd": None, "tier": "gold"}})
    assert r.status_code == 200 and r.json()["metadata"] == {"tier": "gold"}, r.text
    assert cloud.call("node2", "DELETE", f"/v1/servers/{server['id']}?wait=true").status_code == 204
    r = cloud.call("node2", "DELETE", f"/v1/aggregates/{agg['id']}/hosts/node3")
    assert r.status_code == 200 and r.json()["hosts"] == [], r.text
    assert cloud.call("node2", "DELETE", f"/v1/aggregates/{agg['id']}").status_code == 204


def test_the_event_stream_of_any_host_shows_the_whole_clusters_events(cloud: Cluster, image: dict[str, Any]) -> None:
    cloud.call("node1", "GET", "/v1/flavors")  # a token for node1
    seen: list[dict[str, Any]] = []
    with requests.get(cloud.url("node1") + "/v1/events", stream=True, timeout=60,
                      headers={"Authorization": f"Bearer {cloud.tokens['node1']}"}) as stream:
        time.sleep(1.0)  # the relay follows the other hosts once someone listens
        server = create(cloud, "node2", "watched", image["id"], host="node3")
        deadline = time.monotonic() + 30
        for line in stream.iter_lines():
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event.get("instance_id") == server["id"]:
                    seen.append(event)
                    if event["type"] == "instance.action.finish":
                        break
            assert time.monotonic() < deadline, seen
    assert {e["host"] for e in seen if e["type"] == "instance.action.finish"} == {"node3"}, seen
    assert "instance.task" in {e["type"] for e in seen}  # the build steps, published on node3
    assert cloud.call("node1", "DELETE", f"/v1/servers/{server['id']}?wait=true").status_code == 204


def test_live_migration_moves_the_server_and_its_claim(cloud: Cluster, image: dict[str, Any]) -> None:
    server = create(cloud, "node1", "mover", image["id"], host="node2")
    sid = server["id"]
    for body, why in (({"host": "node2"}, "UnableToMigrateToSelf"), ({"host": "nosuch"}, "No such host"),
                      ({"block_migration": "maybe"}, "block_migration")):
        r = cloud.call("node3", "POST", f"/v1/servers/{sid}/live-migrate", body)
        assert r.status_code == 400 and why in r.text, (body, r.text)
    hosts_before = {h["name"]: h["instances"] for h in cloud.call("node1", "GET", "/v1/hosts").json()["hosts"]}
    r = cloud.call("node3", "POST", f"/v1/servers/{sid}/live-migrate?wait=true", {"host": "node3"})
    assert r.status_code == 202, r.text
    moved = r.json()
    assert moved["host"] == "node3" and moved["status"] == "ACTIVE" and moved["task_state"] is None, moved
    hosts_after = {h["name"]: h["instances"] for h in cloud.call("node1", "GET", "/v1/hosts").json()["hosts"]}
    assert hosts_after["node2"] == hosts_before["node2"] - 1 and hosts_after["node3"] == hosts_before["node3"] + 1
    assert not (cloud.base / "node2" / "instances" / sid).exists()  # the source kept nothing
    env = {**os.environ, "HVD_URL": cloud.url("node1"), "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret",
           "HVD_PROJECT": "admin"}
    out = subprocess.run([sys.executable, "-m", "hvd", "server", "live-migrate", sid, "--host", "node2",
                          "--block-migration", "auto", "--wait", "-f", "json"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["host"] == "node2", out  # and back, through the CLI
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/stop?wait=true")  # runs on node2's driver now
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/live-migrate", {})
    assert r.status_code == 409, r.text  # a stopped server cannot move live
    actions = cloud.call("node2", "GET", f"/v1/servers/{sid}/actions").json()["actions"]
    assert [a["action"] for a in actions] == ["create", "live-migrate", "live-migrate", "stop"], actions
    assert "live migration to node3" in actions[1]["message"] and "remaining" in actions[1]["message"], actions[1]
    assert cloud.call("node2", "DELETE", f"/v1/servers/{sid}?wait=true").status_code == 204


def test_a_source_that_dies_after_the_switch_over_finishes_the_migration_at_restart(
        cloud: Cluster, image: dict[str, Any]) -> None:
    cloud.stop("node2")  # the fake hypervisor forgets its domains with its process: restart first
    cloud.start("node2", env={"HVD_CRASH_AT": "live_migrate.switched"})
    cloud.wait_ready(IDS)
    server = create(cloud, "node1", "crashmove", image["id"], host="node2")
    sid = server["id"]
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/live-migrate", {"host": "node3"})
    assert r.status_code == 202, r.text
    wait_for(lambda: cloud.procs["node2"].proc.poll() is not None, "node2 to exit at the checkpoint")
    assert cloud.call("node1", "GET", f"/v1/servers/{sid}").json()["task_state"] == "migrating"
    cloud.stop("node2")
    cloud.start("node2")  # its start-up repair finds the guest gone and the destination holding it
    cloud.wait_ready(IDS)
    row = wait_for(lambda: (s := cloud.call("node3", "GET", f"/v1/servers/{sid}").json())["task_state"] is None
                   and s, "the repair to finish the move")
    assert row["host"] == "node3" and row["status"] == "ACTIVE", row
    r = cloud.call("node2", "POST", f"/v1/servers/{sid}/stop?wait=true")  # node3's driver has the domain
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    assert cloud.call("node1", "DELETE", f"/v1/servers/{sid}?wait=true").status_code == 204


def test_cold_migration_and_cross_host_resize_with_confirm_and_revert(cloud: Cluster, image: dict[str, Any]) -> None:
    server = create(cloud, "node1", "cold", image["id"], host="node1")
    sid = server["id"]
    kept = cloud.base / "node1" / "instances" / f"{sid}_resize"
    r = cloud.call("node2", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": "node3"})
    assert r.status_code == 202, r.text
    moved = r.json()
    assert (moved["status"], moved["host"]) == ("VERIFY_RESIZE", "node3"), moved
    assert (cloud.base / "node3" / "instances" / sid / "disk").exists() and kept.is_dir()
    migrate = cloud.call("node3", "GET", f"/v1/servers/{sid}/actions").json()["actions"][-1]
    assert migrate["action"] == "migrate" and "copied disk from node1" in migrate["message"], migrate
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/confirm-resize?wait=true")
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE" and r.json()["host"] == "node3", r.text
    wait_for(lambda: not kept.exists(), "the source to drop its copy")
    # a resize that lands on another host, then reverted: back on node3 with the old flavor
    r = cloud.call("node1", "POST", "/v1/flavors", {"name": "c.small", "vcpus": 1, "ram_mb": 96, "disk_gb": 1})
    assert r.status_code == 201, r.text
    r = cloud.call("node2", "POST", "/v1/servers/" + sid + "/stop?wait=true")
    assert r.json()["status"] == "SHUTOFF", r.text
    cloud.call("node1", "PATCH", "/v1/hosts/node3", {"enabled": False, "reason": "force the resize elsewhere"})
    try:
        r = cloud.call("node1", "POST", f"/v1/servers/{sid}/resize?wait=true", {"flavor": "c.small"})
    finally:
        cloud.call("node1", "PATCH", "/v1/hosts/node3", {"enabled": True})
    resized = r.json()
    assert r.status_code == 202 and resized["status"] == "VERIFY_RESIZE", r.text
    assert resized["host"] != "node3" and resized["flavor"]["name"] == "c.small", resized
    assert resized["power_state"] == 4  # it was stopped: it stays stopped
    r = cloud.call("node3", "POST", f"/v1/servers/{sid}/revert-resize?wait=true")
    back = r.json()
    assert r.status_code == 202 and (back["status"], back["host"], back["flavor"]["name"]) == (
        "SHUTOFF", "node3", "c.tiny"), back
    assert not (cloud.base / resized["host"] / "instances" / sid).exists()
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/start?wait=true")  # node3's driver has it again
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/migrate", {"host": "node3"})
    assert r.status_code == 400 and "UnableToMigrateToSelf" in r.text, r.text
    assert cloud.call("node2", "DELETE", f"/v1/servers/{sid}?wait=true").status_code == 204


def test_a_server_whose_image_was_deleted_moves_cold_and_live_to_hosts_without_its_base(
        cloud: Cluster, image: dict[str, Any], tmp_path: Path) -> None:  # image: the module's flavor too
    img = upload(cloud, "node1", "doomed", tmp_path)
    server = create(cloud, "node2", "orphan", img["id"], host="node1")
    sid = server["id"]
    assert cloud.call("node2", "DELETE", f"/v1/images/{img['id']}").status_code == 204
    wait_for(lambda: not held_by(cloud, img["id"]), "every store copy of the deleted image to go")
    # node3 never cached the base: it copies node1's cached base, the one the server's disk overlays
    r = cloud.call("node2", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": "node3"})
    assert r.status_code == 202 and (r.json()["status"], r.json()["host"]) == ("VERIFY_RESIZE", "node3"), r.text
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/confirm-resize?wait=true")
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/live-migrate?wait=true", {"host": "node2"})
    assert r.status_code == 202 and (r.json()["status"], r.json()["host"]) == ("ACTIVE", "node2"), r.text
    r = cloud.call("node3", "POST", f"/v1/servers/{sid}/stop?wait=true")  # node2's driver has it now
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    # the peer route gives out a cached base only where an instance uses it, and only to peers
    assert cached_base(cloud, "node2", img["id"]).status_code == 200
    assert cached_base(cloud, "node1", img["id"]).status_code == 404  # cached there, no longer used
    assert cached_base(cloud, "node2", "..").status_code == 404  # not even routed
    assert cached_base(cloud, "node2", img["id"].upper()).status_code == 400
    unsigned = requests.get(cloud.url("node2") + f"/internal/v1/images/{img['id']}/cached-base", timeout=30)
    assert unsigned.status_code == 401, unsigned.text
    assert cloud.call("node2", "DELETE", f"/v1/servers/{sid}?wait=true").status_code == 204


def cached_base(cloud: Cluster, node: str, image_id: str) -> requests.Response:
    from hvd.cluster.keys import peer_key
    from hvd.cluster.peer_auth import sign_headers
    from tests.functional.test_cluster import KEY

    path = f"/internal/v1/images/{image_id}/cached-base"
    headers = sign_headers(peer_key(KEY.encode()), "node3", "GET", path, b"")
    return requests.get(cloud.url(node) + path, headers=headers, timeout=30)


def test_drain_empties_a_host_and_leaves_it_disabled(cloud: Cluster, image: dict[str, Any]) -> None:
    servers = [create(cloud, "node3", f"drained-{i}", image["id"], host="node2") for i in range(3)]
    r = cloud.call("node1", "POST", f"/v1/servers/{servers[2]['id']}/stop?wait=true")
    assert r.json()["status"] == "SHUTOFF", r.text
    r = cloud.call("node1", "POST", "/v1/hosts/node2/drain", {})  # runs on node2, the owner of all three
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["left"] == {} and set(report["moved"]) == {s["id"] for s in servers}, report
    assert set(report["moved"].values()) <= {"node1", "node3"}
    node2 = cloud.call("node3", "GET", "/v1/hosts/node2").json()
    assert (node2["enabled"], node2["disabled_reason"], node2["instances"]) == (False, "drained", 0), node2
    statuses = [cloud.call("node1", "GET", f"/v1/servers/{s['id']}").json()["status"] for s in servers]
    assert statuses == ["ACTIVE", "ACTIVE", "SHUTOFF"], statuses  # moved as they were, cold moves confirmed
    assert not list((cloud.base / "node2" / "instances").glob("*_resize"))
    assert cloud.call("node1", "PATCH", "/v1/hosts/node2", {"enabled": True}).status_code == 200
    for s in servers:
        assert cloud.call("node2", "DELETE", f"/v1/servers/{s['id']}?wait=true").status_code == 204


def test_unshelve_boots_on_whichever_host_placement_chooses(cloud: Cluster, image: dict[str, Any]) -> None:
    server = create(cloud, "node1", "shelver", image["id"], host="node3")
    sid = server["id"]
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/shelve?wait=true")
    assert r.status_code == 202 and r.json()["status"] == "SHELVED_OFFLOADED", r.text
    cloud.call("node1", "PATCH", "/v1/hosts/node2", {"enabled": False, "reason": "unshelve elsewhere"})
    try:  # node2 takes the request but may not take the server: it boots on another host
        r = cloud.call("node2", "POST", f"/v1/servers/{sid}/unshelve?wait=true")
    finally:
        cloud.call("node1", "PATCH", "/v1/hosts/node2", {"enabled": True})
    back = r.json()
    assert r.status_code == 202 and back["status"] == "ACTIVE" and back["host"] in ("node1", "node3"), back
    assert cloud.call("node1", "GET", f"/v1/images/{back['image']['id']}").status_code == 404  # snapshot gone
    # only its host cached the deleted snapshot's base: a move copies that host's cached base
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": "node2"})
    assert r.status_code == 202 and (r.json()["status"], r.json()["host"]) == ("VERIFY_RESIZE", "node2"), r.text
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/confirm-resize?wait=true")
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
    r = cloud.call("node2", "POST", f"/v1/servers/{sid}/stop?wait=true")  # its host's driver has it
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    assert cloud.call("node2", "DELETE", f"/v1/servers/{sid}?wait=true").status_code == 204


def test_a_snapshot_is_kept_on_two_hosts_and_boots_on_a_third(cloud: Cluster, image: dict[str, Any]) -> None:
    server = create(cloud, "node1", "snapped", image["id"], host="node2")
    r = cloud.call("node3", "POST", f"/v1/servers/{server['id']}/snapshot?wait=true", {"name": "snap"})
    assert r.status_code == 202, r.text
    snap = r.json()["image_id"]
    copies = wait_for(lambda: held_by(cloud, snap) if len(held_by(cloud, snap)) == 2 else None,
                      "a second copy of the snapshot")
    assert "node2" in copies
    elsewhere = next(n for n in IDS if n not in copies)
    booted = create(cloud, "node1", "from-snap", snap, host=elsewhere)
    assert booted["status"] == "ACTIVE" and booted["host"] == elsewhere, booted
    for s in (server, booted):
        assert cloud.call("node1", "DELETE", f"/v1/servers/{s['id']}?wait=true").status_code == 204
    assert cloud.call("node1", "DELETE", f"/v1/images/{snap}").status_code == 204


def test_a_build_call_from_a_deposed_leader_is_refused(cloud: Cluster) -> None:
    from hvd.cluster.keys import peer_key
    from hvd.cluster.peer_auth import sign_headers
    from hvd.compute.builds import BUILD_PATH
    from tests.functional.test_cluster import KEY

    body = json.dumps({"instance_id": "0" * 36, "action_id": "a", "term": 0, "leader": "node1"}).encode()
    signed = sign_headers(peer_key(KEY.encode()), "node1", "POST", BUILD_PATH, body)
    headers = {**signed, "Content-Type": "application/json"}
    r = requests.post(cloud.url("node2") + BUILD_PATH, data=body, headers=headers, timeout=30)
    assert r.status_code == 409 and "carries term 0" in r.text, r.text
    unsigned = requests.post(cloud.url("node2") + BUILD_PATH, data=body, timeout=30)
    assert unsigned.status_code == 401, unsigned.text
