"""A rolling upgrade with three `hvd daemon` processes on loopback: node3 advertises the older
catalog protocol level 1 (``[cluster] advertise_protocol``, as an hvd 0.1.0 member would), so
ordinary writes keep committing through every member while a level-2 command is refused, naming
node3, without being appended; once node3 "upgrades" (restarts advertising this build's level)
the same command commits.
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

import hvd
from hvd.catalog.protocol import PROTOCOL
from tests.conftest import REPO, DaemonProcess, free_port, start_daemon

KEY = "rolling-upgrade-key-0123456789"
IDS = ["node1", "node2", "node3"]
OLD = {"HVD_CLUSTER__ADVERTISE_PROTOCOL": "1"}  # node3 plays a member that still runs an older build


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.ports = {node: free_port() for node in IDS}
        self.procs: dict[str, DaemonProcess] = {}
        self.token = ""

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def start(self, node: str, env: dict[str, str] | None = None) -> None:
        peers = ", ".join(f'"{n}=http://127.0.0.1:{p}"' for n, p in self.ports.items())
        extra = f'[cluster]\npeers = [{peers}]\ncluster_key = "{KEY}"\n'
        self.procs[node] = start_daemon(self.base / node, extra=extra, env={"HVD_HOST__NAME": node, **(env or {})},
                                        port=self.ports[node])

    def call(self, node: str, method: str, path: str, body: Any = None) -> requests.Response:
        if not self.token:
            creds = {"username": "admin", "password": "admin-secret", "project": "admin"}
            r = requests.post(self.url(node) + "/v1/auth/tokens", json=creds, timeout=30)
            assert r.status_code == 201, r.text
            self.token = r.json()["token"]
        return requests.request(method, self.url(node) + path, json=body, timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"})

    def view(self, node: str) -> dict[str, Any]:
        try:
            r = self.call(node, "GET", "/v1/cluster")
        except (requests.RequestException, AssertionError):  # still starting
            return {}
        return dict(r.json()) if r.status_code == 200 else {}

    def wait_levels(self, usable: int, node3: int, timeout: float = 30) -> str:
        """Wait until every member sees one leader, every member's level, and ``usable``; the leader."""
        deadline = time.monotonic() + timeout
        want = {"node1": PROTOCOL, "node2": PROTOCOL, "node3": node3}
        views: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            views = [self.view(n) for n in IDS]
            ok = all(v and v["protocol"]["usable"] == usable and {m["id"]: m["protocol"] for m in v["members"]} == want
                     for v in views)
            if ok and len({v["leader"] for v in views}) == 1 and views[0]["leader"] in IDS:
                return str(views[0]["leader"])
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{p.log()[-2000:]}" for n, p in self.procs.items())
        raise AssertionError(f"levels never settled: {json.dumps(views)}\n{logs}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for node in IDS:
            c.start(node, OLD if node == "node3" else None)
        yield c
    finally:
        for proc in c.procs.values():
            proc.stop(signal.SIGKILL)


def cli(cluster: Cluster, node: str, *args: str) -> str:
    env = {**os.environ, "HVD_URL": cluster.url(node), "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret",
           "HVD_PROJECT": "admin"}
    out = subprocess.run([sys.executable, "-m", "hvd", *args], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def types(cluster: Cluster, node: str) -> set[str]:
    r = cluster.call(node, "GET", "/v1/volume-types")
    assert r.status_code == 200, r.text
    return {t["name"] for t in r.json()["volume_types"]}


def test_a_member_at_an_older_level_holds_newer_commands_back_until_it_is_upgraded(cluster: Cluster) -> None:
    cluster.wait_levels(usable=1, node3=1)
    view = cluster.view("node1")
    assert {m["id"]: m["hvd_version"] for m in view["members"]}["node3"]  # gossip carries versions
    assert view["protocol"] == {"usable": 1, "newest": PROTOCOL, "behind": ["node3"]}
    shown = cli(cluster, "node2", "cluster", "show")
    assert "catalog protocol in use: 1" in shown and "still to upgrade: node3" in shown, shown

    # ordinary (level-1) writes keep committing through every member, the old one included
    for node in IDS:
        r = cluster.call(node, "POST", "/v1/flavors", {"name": f"f-{node}", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
        assert r.status_code == 201, r.text

    # a level-2 command (volume types came with protocol 2) is refused wherever it is asked for,
    # naming the member behind, and leaves nothing behind
    for node in IDS:
        r = cluster.call(node, "POST", "/v1/volume-types", {"name": "fast"})
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["title"] == "Upgrade In Progress", error
        assert error["message"] == (f"volume_type.create needs protocol 2; node3 runs hvd {hvd.__version__}"
                                    " (protocol 1): finish the upgrade first"), error
    assert "fast" not in types(cluster, "node1")

    # node3 is upgraded: restarted with this build's level; the same request now commits
    cluster.procs.pop("node3").stop()
    cluster.start("node3")
    cluster.wait_levels(usable=PROTOCOL, node3=PROTOCOL)
    r = cluster.call("node3", "POST", "/v1/volume-types", {"name": "fast"})
    assert r.status_code == 201, r.text
    assert "fast" in types(cluster, "node1")
    assert "every member is upgraded" in cli(cluster, "node3", "cluster", "show")
