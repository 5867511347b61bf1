"""Volumes in a cluster of three daemons (fake compute driver, real files): any host takes a
request, the volume scheduler places it by every host's reported backends, and the volume's host
does the work (create, extend, backup, delete) it finds in the catalog; verify is forwarded there."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.functional.test_cluster import IDS, Cluster

SMALL_GB = 3


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("vcloud"))
    fs = os.statvfs(c.base)
    small = max(0, (fs.f_blocks * fs.f_frsize >> 30) - SMALL_GB)  # file-3 takes SMALL_GB of volumes
    try:
        for i, node in enumerate(IDS, start=1):
            # no over-subscription: the reserve alone makes file-3 a 3 GiB backend
            reserve = f', "reserved_gb": {small}, "max_over_subscription_ratio": 1.0' if i == 3 else ""
            backends = f'[{{"name": "file-{i}", "driver": "file"{reserve}}}]'
            c.start(node, env={"HVD_VOLUMES__BACKENDS": backends})
        c.wait_ready(IDS)
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


def ok(r: Any, status: int | tuple[int, ...] = (200, 201, 202, 204)) -> Any:
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, r.text
    return r.json() if r.content else None


def test_a_volume_is_made_and_served_by_the_host_its_type_names(cloud: Cluster) -> None:
    ok(cloud.call("node1", "POST", "/v1/volume-types", {"name": "on-2",
                                                        "extra_specs": {"volume_backend_name": "file-2"}}))
    deadline = time.monotonic() + 30
    while (r := cloud.call("node1", "POST", "/v1/volumes?wait=true", {"name": "far", "size_gb": 1,
                                                                      "volume_type": "on-2"})).status_code == 409:
        assert time.monotonic() < deadline, r.text  # node2's backend report has not reached node1 yet
        time.sleep(0.2)
    vol = ok(r)
    assert (vol["status"], vol["host"]) == ("available", "node2@file-2")
    path = cloud.base / "node2" / "data" / "volumes" / f"volume-{vol['id']}"
    assert path.stat().st_size == 1 << 30
    grown = ok(cloud.call("node3", "POST", f"/v1/volumes/{vol['id']}/extend?wait=true", {"new_size_gb": 2}))
    assert grown["size_gb"] == 2 and path.stat().st_size == 2 << 30
    backup = ok(cloud.call("node1", "POST", "/v1/backups?wait=true", {"volume": vol["id"]}))
    assert backup["status"] == "available"
    assert (cloud.base / "node2" / "data" / "backups" / f"volume-{vol['id']}").is_dir()
    verdict = ok(cloud.call("node3", "POST", f"/v1/backups/{backup['id']}/verify"))  # forwarded to node2
    assert verdict["ok"] is True and verdict["chunks"] == 512
    ok(cloud.call("node1", "DELETE", f"/v1/backups/{backup['id']}?wait=true"), 204)
    ok(cloud.call("node1", "DELETE", f"/v1/volumes/{vol['id']}?wait=true"), 204)
    assert not path.exists()


def _placed(cloud: Cluster, node: str, body: dict[str, Any]) -> Any:
    """Create a volume, waiting out the first backend reports' gossip (409 until they arrive)."""
    deadline = time.monotonic() + 30
    while (r := cloud.call(node, "POST", "/v1/volumes?wait=true", body)).status_code == 409:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    return ok(r)


def test_restore_into_a_volume_of_a_host_without_the_backup_is_refused_and_changes_nothing(cloud: Cluster) -> None:
    for i in (1, 2):
        ok(cloud.call("node1", "POST", "/v1/volume-types", {"name": f"only-{i}",
                                                            "extra_specs": {"volume_backend_name": f"file-{i}"}}))
    source = _placed(cloud, "node1", {"name": "bk-src", "size_gb": 1, "volume_type": "only-2"})
    target = _placed(cloud, "node1", {"name": "bk-dst", "size_gb": 1, "volume_type": "only-1"})
    backup = ok(cloud.call("node3", "POST", "/v1/backups?wait=true", {"volume": source["id"]}))
    assert backup["status"] == "available"
    # node3 takes it; node1 (the volume's host, asked by node3) does not see node2's backup_dir
    err = ok(cloud.call("node3", "POST", f"/v1/backups/{backup['id']}/restore", {"volume": target["id"]}), 409)
    message = err["error"]["message"]
    assert f"backup_dir of host node2, which host node1 (volume {target['id']}'s) does not see" in message
    after = ok(cloud.call("node1", "GET", f"/v1/volumes/{target['id']}"))
    assert after["status"] == "available"
    assert ok(cloud.call("node1", "GET", f"/v1/backups/{backup['id']}"))["status"] == "available"
    made = ok(cloud.call("node1", "POST", f"/v1/backups/{backup['id']}/restore?wait=true", {}))  # a new one: on node2
    assert (made["volume"]["status"], made["volume"]["host"]) == ("available", "node2@file-2")
    ok(cloud.call("node1", "POST", f"/v1/backups/{backup['id']}/restore?wait=true", {"volume": source["id"]}))
    for vid in (made["volume_id"], target["id"], source["id"]):
        ok(cloud.call("node1", "DELETE", f"/v1/volumes/{vid}?wait=true"), 204)
    ok(cloud.call("node1", "DELETE", f"/v1/backups/{backup['id']}?wait=true"), 204)


def test_no_host_has_the_named_backend_names_every_rejection(cloud: Cluster) -> None:
    ok(cloud.call("node2", "POST", "/v1/volume-types", {"name": "nowhere",
                                                        "extra_specs": {"volume_backend_name": "file-9"}}))
    err = ok(cloud.call("node2", "POST", "/v1/volumes", {"size_gb": 1, "volume_type": "nowhere"}), 409)
    for i, node in enumerate(IDS, start=1):
        assert f"{node}@file-{i}: volume_backend_name file-9 does not match" in err["error"]["message"]


def test_hosts_report_their_free_volume_space_in_gossip(cloud: Cluster) -> None:
    deadline = time.monotonic() + 30
    while True:  # reports are recomputed every 10 s: the first one may predate the volume service
        hosts = {h["name"]: h for h in ok(cloud.call("node1", "GET", "/v1/hosts"))["hosts"]}
        free = {name: (h["reported"] or {}).get("volume_gb_free", 0) for name, h in hosts.items()}
        if all(free.get(node, 0) > 0 for node in IDS):
            break
        assert time.monotonic() < deadline, free
        time.sleep(0.5)


def test_concurrent_creates_never_overfill_a_small_backend(cloud: Cluster) -> None:
    ok(cloud.call("node1", "POST", "/v1/volume-types", {"name": "on-3",
                                                        "extra_specs": {"volume_backend_name": "file-3"}}))
    deadline = time.monotonic() + 30
    for node in IDS:  # every member has node3's report: an oversized request is refused for its size
        while f"node3@file-3: {SMALL_GB} GiB free" not in (r := cloud.call(
                node, "POST", "/v1/volumes", {"size_gb": SMALL_GB + 1, "volume_type": "on-3"})).text:
            assert r.status_code == 409 and time.monotonic() < deadline, r.text
            time.sleep(0.2)

    def create(i: int) -> Any:
        return cloud.call(IDS[i % 3], "POST", "/v1/volumes?wait=true", {"name": f"race-{i}", "size_gb": 1,
                                                                         "volume_type": "on-3"})

    with ThreadPoolExecutor(6) as pool:  # twice what fits, taken by all three members at once
        answers = list(pool.map(create, range(2 * SMALL_GB)))
    made = [ok(r, 202) for r in answers if r.status_code == 202]
    refused = [r.json()["error"]["message"] for r in answers if r.status_code != 202]
    assert len(made) == SMALL_GB and all(v["status"] == "available" for v in made), [v["status"] for v in made]
    assert len(refused) == SMALL_GB and all(r.status_code == 409 for r in answers if r.status_code != 202)
    assert all("node3@file-3" in m for m in refused), refused
    listed = ok(cloud.call("node2", "GET", "/v1/volumes"))["volumes"]
    assert not [v for v in listed if v["name"].startswith("race-") and v["status"] == "error"]
    grow = cloud.call("node1", "POST", f"/v1/volumes/{made[0]['id']}/extend", {"new_size_gb": 2})
    assert grow.status_code == 409 and "1 GiB more does not fit" in grow.text  # growth is claimed too
    for v in made:
        ok(cloud.call("node1", "DELETE", f"/v1/volumes/{v['id']}?wait=true"), 204)
    again = ok(cloud.call("node2", "POST", "/v1/volumes?wait=true", {"size_gb": SMALL_GB, "volume_type": "on-3"}))
    assert again["status"] == "available"  # the deleted volumes gave their claims back
    ok(cloud.call("node1", "DELETE", f"/v1/volumes/{again['id']}?wait=true"), 204)
