"""Fencing on real hosts (three lab hosts, libvirt under TCG): a host cut off the network stops its
guest itself, the leader fences it after the delay and rebuilds the server on another host
(automatic evacuation), never with two copies running; when the host returns it removes the
stale domain and lifts its fence."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.lab.cluster import LabCluster, lab_available
from tests.lab.test_cluster_compute import HOSTS, create, delete_all, state, upload

FENCING = {"fence_delay_s": 10.0, "self_fence_s": 5.0, "auto_evacuate": True}


@pytest.fixture(scope="module")
def lab() -> Iterator[LabCluster]:
    if reason := lab_available():
        pytest.skip(reason)
    with LabCluster(hosts=3, config={"fencing": FENCING}) as cluster:
        yield cluster


def running_on(lab: LabCluster, sid: str) -> list[str]:
    return [h for h in HOSTS if state(lab, h, sid) == "running"]


def test_a_cut_off_host_self_fences_and_its_server_comes_back_elsewhere_once(lab: LabCluster) -> None:
    r = lab.call("h1", "POST", "/v1/flavors", {"name": "c.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1})
    assert r.status_code == 201, r.text
    image = upload(lab, "h1", "guest")
    leader = lab.leader()
    victim = next(h for h in HOSTS if h != leader)
    others = [h for h in HOSTS if h != victim]
    [server] = create(lab, leader, "evacuee", image, availability_zone=f"nova:{victim}")
    sid = server["id"]
    assert running_on(lab, sid) == [victim]
    lab.isolate(victim)
    try:
        deadline = time.monotonic() + 180
        self_fenced_at = moved_at = None
        while True:  # never two running copies, at any moment
            where = running_on(lab, sid)
            assert len(where) <= 1, where
            if self_fenced_at is None and state(lab, victim, sid) == "shut off":
                self_fenced_at = time.monotonic()
            row = lab.call(leader, "GET", f"/v1/servers/{sid}").json()
            if row["task_state"] is None and row["host"] in others and where == [row["host"]]:
                moved_at = time.monotonic()
                break
            assert time.monotonic() < deadline, (row["status"], row["host"], where)
            time.sleep(0.5)
        assert self_fenced_at is not None and self_fenced_at <= moved_at  # stopped before rebuilt elsewhere
        assert row["status"] == "ACTIVE", row
        actions = [a["action"] for a in lab.call(others[0], "GET", f"/v1/servers/{sid}/actions").json()["actions"]]
        assert actions == ["create", "evacuate"], actions
    finally:
        lab.rejoin(victim)
    deadline = time.monotonic() + 120
    while state(lab, victim, sid) != "absent":  # the returned host removed its stale copy
        assert time.monotonic() < deadline, state(lab, victim, sid)
        time.sleep(1)
    assert running_on(lab, sid) == [row["host"]]
    delete_all(lab, others[0], [row])
