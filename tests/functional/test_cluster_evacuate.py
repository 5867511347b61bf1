"""Evacuation with fencing over three daemons (fake driver; the real-libvirt proof with a cut-off
host is tests/lab/test_cluster_evacuate.py): a server of a host that is up cannot be evacuated;
once its host is dead in gossip for the fence delay the leader fences it, and the server is
rebuilt on another host with its id; the returning host lifts its fence and takes servers again."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_cluster import IDS, Cluster
from tests.functional.test_cluster_compute import create, upload, wait_for

FAST_FENCING = {"HVD_FENCING__FENCE_DELAY_S": "3", "HVD_FENCING__SELF_FENCE_S": "2"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("evac"))
    try:
        for node in IDS:
            c.start(node, env=FAST_FENCING)
        c.wait_ready(IDS)
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


def test_a_fenced_hosts_server_is_rebuilt_elsewhere_once(cloud: Cluster, tmp_path: Path) -> None:
    r = cloud.call("node1", "POST", "/v1/flavors", {"name": "c.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    assert r.status_code == 201, r.text
    image = upload(cloud, "node1", "evac-img", tmp_path)
    victim = "node3" if cloud.wait_ready(IDS) != "node3" else "node2"
    server = create(cloud, "node1", "evacuee", image["id"], host=victim)
    sid = server["id"]
    r = cloud.call("node1", "POST", f"/v1/servers/{sid}/evacuate", {})
    assert r.status_code == 409 and f"its host {victim} is up" in r.text, r.text
    cloud.stop(victim, signal.SIGKILL)
    alive = [n for n in IDS if n != victim]

    def evacuated() -> dict[str, Any] | None:
        r = cloud.call(alive[0], "POST", f"/v1/servers/{sid}/evacuate", {})
        if r.status_code == 409 and ("not fenced yet" in r.text or "is up" in r.text):
            return None  # gossip has not declared it dead yet, or the fence delay runs
        assert r.status_code == 202, r.text
        return dict(r.json())

    started = time.monotonic()
    wait_for(evacuated, "the dead host to be fenced", timeout=60)
    assert time.monotonic() - started >= 3.0 - 0.5  # not before the fence delay (gossip needs ~1.5 s more)
    row = wait_for(lambda: (s := cloud.call(alive[1], "GET", f"/v1/servers/{sid}").json())["task_state"] is None
                   and s, "the rebuild")
    assert row["status"] == "ACTIVE" and row["host"] in alive and row["id"] == sid, row
    actions = [(a["action"], a["result"]) for a in cloud.call(alive[0], "GET", f"/v1/servers/{sid}/actions")
               .json()["actions"]]
    assert actions == [("create", "success"), ("evacuate", "success")], actions
    r = cloud.call(alive[0], "POST", f"/v1/servers/{sid}/stop?wait=true")  # the new host runs it
    assert r.status_code == 202 and r.json()["status"] == "SHUTOFF", r.text
    # the fenced host comes back: it lifts its fence and may take servers again
    cloud.start(victim, env=FAST_FENCING)
    cloud.wait_ready(IDS)

    def placeable() -> dict[str, Any] | None:
        r = cloud.call("node1", "POST", "/v1/servers?wait=true", {"name": "back", "flavor": "c.tiny",
                       "image": image["id"], "networks": "none", "availability_zone": f"nova:{victim}"})
        assert r.status_code == 202, r.text
        back = dict(r.json())
        if back["status"] == "ACTIVE":
            return back
        assert "No valid host" in back["fault"]["message"], back
        cloud.call("node1", "DELETE", f"/v1/servers/{back['id']}?wait=true")
        time.sleep(0.5)
        return None

    back = wait_for(placeable, "the returned host to take servers again", timeout=60)
    assert back["host"] == victim
    for s in (row, back):
        assert cloud.call("node2", "DELETE", f"/v1/servers/{s['id']}?wait=true").status_code == 204
