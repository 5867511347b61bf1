"""One cloud over three lab hosts (real libvirt under TCG, one libvirtd per host).

Placement runs on the leader and the chosen host builds; operations sent to any host run on the
owner; an image uploaded to one host boots on the others; a host that fails a build loses the
server to another; killing the leader's daemon during parallel creates leaves every accepted
server ACTIVE or ERROR (with a reason), each built once, and no domain the catalog does not know.
Each host's own libvirtd is asked for the truth.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.guest.helpers import guest_image_path
from tests.lab.cluster import LabCluster, lab_available
from tests.lab.test_compute_libvirt import MARK_SCRIPT

HOSTS = ["h1", "h2", "h3"]
INSTANCES = "/var/lib/libvirt/hvd-instances"  # the lab's instances_path on every host


@pytest.fixture(scope="module")
def lab() -> Iterator[LabCluster]:
    if reason := lab_available():
        pytest.skip(reason)
    with LabCluster(hosts=3) as cluster:
        yield cluster


def upload(lab: LabCluster, host: str, name: str) -> str:
    r = lab.call(host, "POST", "/v1/images", {"name": name, "disk_format": "qcow2", "visibility": "public"})
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    r = lab.call(host, "PUT", f"/v1/images/{image_id}/file", data=guest_image_path("main").read_bytes(),
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    return image_id


@pytest.fixture(scope="module")
def image(lab: LabCluster) -> str:
    r = lab.call("h1", "POST", "/v1/flavors", {"name": "c.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1})
    assert r.status_code == 201, r.text
    return upload(lab, "h1", "guest")


def create(lab: LabCluster, via: str, name: str, image: str, count: int = 1, **extra: Any) -> list[dict[str, Any]]:
    body = {"name": name, "flavor": "c.tiny", "image": image, "networks": "none", "min_count": count, **extra}
    r = lab.call(via, "POST", "/v1/servers?wait=true", body, timeout=600)
    assert r.status_code == 202, r.text
    out = r.json()
    return list(out["servers"]) if count > 1 else [out]


def domains(lab: LabCluster, host: str) -> set[str]:
    """UUIDs of every domain the host's own libvirtd has (running or not)."""
    return {line.strip() for line in lab.virsh(host, "list", "--all", "--uuid").stdout.splitlines() if line.strip()}


def state(lab: LabCluster, host: str, server_id: str) -> str:
    r = lab.virsh(host, "domstate", server_id, check=False)
    return r.stdout.strip() if r.returncode == 0 else "absent"


def delete_all(lab: LabCluster, via: str, servers: list[dict[str, Any]]) -> None:
    for s in servers:
        r = lab.call(via, "DELETE", f"/v1/servers/{s['id']}?wait=true", timeout=300)
        assert r.status_code == 204, r.text


def test_parallel_creates_spread_three_by_three_and_each_host_runs_its_own(lab: LabCluster, image: str) -> None:
    servers = create(lab, "h2", "spread", image, count=9)
    assert {s["status"] for s in servers} == {"ACTIVE"}, [(s["name"], s["status"], s["fault"]) for s in servers]
    assert Counter(s["host"] for s in servers) == {"h1": 3, "h2": 3, "h3": 3}
    for s in servers:  # the image was uploaded to h1: h2 and h3 fetched it from a holder
        assert {h: state(lab, h, s["id"]) for h in HOSTS} == {
            h: ("running" if h == s["host"] else "absent") for h in HOSTS}
    delete_all(lab, "h3", servers)
    for host in HOSTS:
        assert not domains(lab, host) & {s["id"] for s in servers}


def test_create_through_a_follower_and_operations_through_a_third_host(lab: LabCluster, image: str) -> None:
    leader = lab.leader()
    follower, third = [h for h in HOSTS if h != leader][:2]
    owner = leader  # forced onto another host than the one that received the request
    [server] = create(lab, follower, "routed", image, availability_zone=f"nova:{owner}")
    sid = server["id"]
    assert server["status"] == "ACTIVE" and server["host"] == owner
    r = lab.call(third, "POST", f"/v1/servers/{sid}/stop?wait=true", timeout=300)
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    assert state(lab, owner, sid) == "shut off"
    r = lab.call(follower, "POST", f"/v1/servers/{sid}/start?wait=true", timeout=300)
    assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
    assert state(lab, owner, sid) == "running"
    deadline = time.monotonic() + 180
    while True:  # the console log is read on the owner and returned through the third host
        r = lab.call(third, "GET", f"/v1/servers/{sid}/console-log?lines=200")
        assert r.status_code == 200, r.text
        if "HVD-GUEST" in r.json()["output"]:
            break
        assert time.monotonic() < deadline, r.json()["output"][-2000:]
        time.sleep(1)
    delete_all(lab, third, [server])
    assert state(lab, owner, sid) == "absent"
    assert not lab.host(owner).path(f"{INSTANCES}/{sid}").exists()


def test_a_disabled_host_is_skipped(lab: LabCluster, image: str) -> None:
    r = lab.call("h3", "PATCH", "/v1/hosts/h1", {"enabled": False, "reason": "maintenance"})
    assert r.status_code == 200, r.text
    try:
        servers = create(lab, "h1", "skip", image, count=2)
        assert sorted(s["host"] for s in servers) == ["h2", "h3"], servers
        assert not domains(lab, "h1") & {s["id"] for s in servers}
    finally:
        r = lab.call("h2", "PATCH", "/v1/hosts/h1", {"enabled": True})
        assert r.status_code == 200, r.text
    delete_all(lab, "h2", servers)


def test_a_build_that_fails_on_a_host_lands_the_server_on_another(lab: LabCluster) -> None:
    image = upload(lab, "h3", "guest-b")
    # h1 and h2 cannot cache this image (a directory squats on its cache path): their builds fail
    squat = f"{INSTANCES}/_base/{hashlib.sha1(image.encode()).hexdigest()}"
    for host in ("h1", "h2"):
        lab.host(host).path(f"{squat}/squatter").mkdir(parents=True)
    try:
        [server] = create(lab, "h1", "retried", image)
        assert server["status"] == "ACTIVE" and server["host"] == "h3", server
        assert state(lab, "h3", server["id"]) == "running"
        for host in ("h1", "h2"):
            assert state(lab, host, server["id"]) == "absent"
            assert not lab.host(host).path(f"{INSTANCES}/{server['id']}").exists()
        assert lab.call("h2", "GET", "/v1/hosts/h1").json()["instances"] == 0  # its claim was released
    finally:
        for host in ("h1", "h2"):
            lab.exec(host, ["rm", "-rf", squat], check=True)
    delete_all(lab, "h3", [server])


def test_killing_the_leader_during_parallel_creates_builds_each_server_once(lab: LabCluster, image: str) -> None:
    leader = lab.leader()
    followers = [h for h in HOSTS if h != leader]

    def one(n: int) -> tuple[int, Any]:
        body = {"name": f"storm-{n}", "flavor": "c.tiny", "image": image, "networks": "none"}
        try:
            r = lab.call(followers[n % 2], "POST", "/v1/servers", body, timeout=120)
        except Exception as exc:  # a request cut off by the kill is simply not accepted
            return 0, repr(exc)
        return r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(one, n) for n in range(20)]
        time.sleep(0.5)
        lab.kill_daemon(leader, signal.SIGKILL)
        results = [f.result() for f in futures]
    accepted = [body["id"] for status, body in results if status == 202]
    assert accepted, results
    time.sleep(3)
    lab.start_daemon(leader)  # its own half-done builds are repaired at its start
    deadline = time.monotonic() + 600
    while True:
        rows = {sid: lab.call(followers[0], "GET", f"/v1/servers/{sid}").json() for sid in accepted}
        if all(r["task_state"] is None for r in rows.values()):
            break
        assert time.monotonic() < deadline, {k: (v["status"], v["task_state"], v["host"]) for k, v in rows.items()}
        time.sleep(2)
    for row in rows.values():
        assert row["status"] in ("ACTIVE", "ERROR"), row
        if row["status"] == "ERROR":
            assert row["fault"] and row["fault"]["message"], row
    held = {h: domains(lab, h) for h in HOSTS}
    for sid, row in rows.items():  # built exactly once, on the host the catalog names
        where = [h for h in HOSTS if sid in held[h]]
        assert where == ([row["host"]] if row["status"] == "ACTIVE" else []), (sid, row["status"], where)
    listed = lab.call(followers[0], "GET", "/v1/servers?all_projects=true&limit=1000").json()["servers"]
    known = {s["id"] for s in listed}
    for host in HOSTS:
        assert held[host] <= known, f"orphan domains on {host}: {held[host] - known}"
    delete_all(lab, followers[1], list(rows.values()))




def console_until(lab: LabCluster, via: str, sid: str, pattern: str, timeout: float = 240) -> str:
    """The server's console log (read on its owner, through ``via``) once it matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        r = lab.call(via, "GET", f"/v1/servers/{sid}/console-log")
        assert r.status_code == 200, r.text
        text = str(r.json()["output"])
        if re.search(pattern, text):
            return text
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{text[-2000:]}"
        time.sleep(1)


def heartbeats(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"HVD-GUEST heartbeat (\d+)", text)]


def test_live_migration_keeps_the_guest_running_and_its_disk(lab: LabCluster, image: str) -> None:
    [server] = create(lab, "h3", "live", image, availability_zone="nova:h1", user_data=MARK_SCRIPT)
    sid = server["id"]
    assert server["host"] == "h1", server
    before = max(heartbeats(console_until(lab, "h2", sid, r"HVD-MARK written[\s\S]*heartbeat 3")))
    r = lab.call("h3", "POST", f"/v1/servers/{sid}/live-migrate?wait=true", {"host": "h2"}, timeout=600)
    assert r.status_code == 202, r.text
    moved = r.json()
    assert moved["host"] == "h2" and moved["status"] == "ACTIVE" and moved["task_state"] is None, moved
    assert state(lab, "h2", sid) == "running" and state(lab, "h1", sid) == "absent"
    assert not lab.host("h1").path(f"{INSTANCES}/{sid}").exists()
    # the same guest goes on counting on h2 (a restarted guest would count from 1 and print "boot")
    after = console_until(lab, "h1", sid, rf"heartbeat (?:{before + 5}|{before + 6}|{before + 7})\b")
    assert "HVD-GUEST boot" not in after and min(heartbeats(after)) > 1, after[-1500:]
    r = lab.call("h1", "POST", f"/v1/servers/{sid}/reboot?wait=true", {"type": "hard"}, timeout=300)
    assert r.status_code == 202 and r.json()["host"] == "h2", r.text
    console_until(lab, "h3", sid, r"HVD-MARK found kept")  # the disk's contents came along
    delete_all(lab, "h1", [server])
    assert state(lab, "h2", sid) == "absent"


def test_cold_migration_carries_the_disk_and_a_revert_brings_the_server_back(lab: LabCluster, image: str) -> None:
    [server] = create(lab, "h2", "cold", image, availability_zone="nova:h3", user_data=MARK_SCRIPT)
    sid = server["id"]
    console_until(lab, "h1", sid, r"HVD-MARK written")
    r = lab.call("h1", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": "h1"}, timeout=600)
    assert r.status_code == 202, r.text
    moved = r.json()
    assert (moved["status"], moved["host"]) == ("VERIFY_RESIZE", "h1"), moved
    assert state(lab, "h1", sid) == "running" and state(lab, "h3", sid) == "absent"
    console_until(lab, "h2", sid, r"HVD-MARK found kept")  # the overlay came along (its base was fetched)
    assert lab.host("h3").path(f"{INSTANCES}/{sid}_resize/disk").is_file()  # kept for a revert
    r = lab.call("h2", "POST", f"/v1/servers/{sid}/revert-resize?wait=true", timeout=300)
    assert r.status_code == 202, r.text
    back = r.json()
    assert (back["status"], back["host"]) == ("ACTIVE", "h3"), back
    assert state(lab, "h3", sid) == "running" and state(lab, "h1", sid) == "absent"
    assert not lab.host("h1").path(f"{INSTANCES}/{sid}").exists()
    # h3's console log held only the first boot ("written"): a "found" now is the kept copy booting again
    console_until(lab, "h1", sid, r"HVD-MARK found kept")
    delete_all(lab, "h1", [server])


def test_a_server_whose_image_was_deleted_cold_migrates_to_a_host_without_its_base(
        lab: LabCluster, image: str) -> None:  # image: the module's flavor too
    doomed = upload(lab, "h2", "doomed")  # no host has booted it: only h3 will cache its base
    [server] = create(lab, "h1", "orphan", doomed, availability_zone="nova:h3", user_data=MARK_SCRIPT)
    sid = server["id"]
    console_until(lab, "h1", sid, r"HVD-MARK written")
    r = lab.call("h1", "DELETE", f"/v1/images/{doomed}")  # allowed while in use, as in Glance
    assert r.status_code == 204, r.text
    r = lab.call("h1", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": "h2"}, timeout=600)
    assert r.status_code == 202 and (r.json()["status"], r.json()["host"]) == ("VERIFY_RESIZE", "h2"), r.text
    r = lab.call("h1", "POST", f"/v1/servers/{sid}/confirm-resize?wait=true", timeout=300)
    assert r.status_code == 202 and (r.json()["status"], r.json()["host"]) == ("ACTIVE", "h2"), r.text
    assert state(lab, "h2", sid) == "running" and state(lab, "h3", sid) == "absent"
    # h2's base came from h3's image cache: the moved overlay boots on it and finds its mark
    console_until(lab, "h3", sid, r"HVD-MARK found kept")
    delete_all(lab, "h1", [server])


PINGER = """#!/bin/sh
while :; do
  if ping -c 1 -W 1 {peer} >/dev/null 2>&1; then echo "HVD-PING ok"; else echo "HVD-PING lost"; fi
  sleep 0.2
done
"""


def pings(text: str) -> list[str]:
    return re.findall(r"HVD-PING (ok|lost)", text)


def test_a_server_moved_live_then_cold_keeps_its_address_and_its_peer_reaches_it_again(
        lab: LabCluster, image: str) -> None:
    r = lab.call("h1", "POST", "/v1/networks", {"name": "movenet"})
    assert r.status_code == 201, r.text
    net = r.json()["id"]
    r = lab.call("h1", "POST", "/v1/subnets", {"name": "movesub", "network": net, "cidr": "10.78.0.0/24"})
    assert r.status_code == 201, r.text
    [mover] = create(lab, "h1", "mover", image, availability_zone="nova:h1",
                     networks=[{"network": net, "fixed_ip": "10.78.0.51"}])
    [pinger] = create(lab, "h1", "pinger", image, availability_zone="nova:h2",
                      networks=[{"network": net, "fixed_ip": "10.78.0.50"}],
                      user_data=PINGER.format(peer="10.78.0.51"))
    console_until(lab, "h3", pinger["id"], r"(HVD-PING ok\s+){5}")  # across hosts, over hvd's VXLAN
    sid = mover["id"]

    def ping_log() -> list[str]:
        return pings(lab.call("h3", "GET", f"/v1/servers/{pinger['id']}/console-log?lines=100000").json()["output"])

    def reaches_again(after: int) -> int:
        """Pings lost after the first ``after`` ping lines, once the peer answers three in a row again."""
        deadline = time.monotonic() + 180
        while True:
            seen = ping_log()[after:]
            if len(seen) >= 10 and seen[-3:] == ["ok", "ok", "ok"]:
                return seen.count("lost")
            assert time.monotonic() < deadline, seen[-30:]
            time.sleep(1)

    before = len(ping_log())
    r = lab.call("h2", "POST", f"/v1/servers/{sid}/live-migrate?wait=true", {"host": "h3"}, timeout=600)
    assert r.status_code == 202 and r.json()["host"] == "h3", r.text
    assert "10.78.0.51" in str(r.json()["addresses"])
    live_lost = reaches_again(before)
    before = len(ping_log())
    r = lab.call("h2", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": "h1"}, timeout=600)
    assert r.status_code == 202 and r.json()["host"] == "h1", r.text
    assert "10.78.0.51" in str(r.json()["addresses"])
    cold_lost = reaches_again(before)
    # a cold move stops the guest (the pinger must see that, or it proves nothing); a live one barely pauses it
    assert cold_lost >= 1 and live_lost <= cold_lost, (live_lost, cold_lost)
    print(f"pings lost (0.2 s interval): live migration {live_lost}, cold migration {cold_lost}")
    r = lab.call("h1", "POST", f"/v1/servers/{sid}/confirm-resize?wait=true", timeout=300)
    assert r.status_code == 202, r.text
    delete_all(lab, "h2", [mover, pinger])
