"""Three `hvd daemon` processes on loopback replicating the catalog with Raft.

Writes go through every member (followers forward to the leader), the leader is SIGKILLed, a new
one is elected without losing an acknowledged write, the old leader rejoins and catches up, and a
full restart keeps everything. Peer routes refuse unsigned, forged and replayed requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hvd.cluster.keys import peer_key
from hvd.cluster.peer_auth import sign_headers
from tests.conftest import DaemonProcess, free_port, start_daemon

KEY = "test-cluster-key-0123456789"
IDS = ["node1", "node2", "node3"]


class Cluster:
    """Three daemons under `base`; `procs` holds the running ones (all killed in teardown)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ports = {node: free_port() for node in IDS}
        self.procs: dict[str, DaemonProcess] = {}
        self.tokens: dict[str, str] = {}

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def start(self, node: str, join: bool = False, env: dict[str, str] | None = None) -> None:
        self.ports.setdefault(node, free_port())
        peers = ", ".join(f'"{n}=http://127.0.0.1:{p}"' for n, p in self.ports.items())
        extra = f'[cluster]\npeers = [{peers}]\ncluster_key = "{KEY}"\njoin = {str(join).lower()}\n'
        self.procs[node] = start_daemon(self.base / node, extra=extra, env={"HVD_HOST__NAME": node, **(env or {})},
                                        port=self.ports[node])

    def stop(self, node: str, sig: int = signal.SIGTERM) -> None:
        self.procs.pop(node).stop(sig)

    def health(self, node: str) -> dict[str, Any] | None:
        try:
            r = requests.get(self.url(node) + "/healthz", timeout=2)
        except requests.RequestException:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def wait_ready(self, nodes: list[str], timeout: float = 30) -> str:
        """Wait until every node serves its API and names the same leader; returns the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = {(h or {}).get("leader") for h in (self.health(n) for n in nodes)}
            if len(leaders) == 1 and (leader := leaders.pop()) in nodes:
                return str(leader)
            time.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.procs[n].log()[-3000:]}" for n in nodes if n in self.procs)
        raise AssertionError(f"no common leader among {nodes}:\n{logs}")

    def call(self, node: str, method: str, path: str, body: Any = None) -> requests.Response:
        if node not in self.tokens:
            creds = {"username": "admin", "password": "admin-secret", "project": "admin"}
            r = requests.post(self.url(node) + "/v1/auth/tokens", json=creds, timeout=30)
            assert r.status_code == 201, r.text
            self.tokens[node] = r.json()["token"]
        headers = {"Authorization": f"Bearer {self.tokens[node]}"}
        return requests.request(method, self.url(node) + path, json=body, headers=headers, timeout=30)

    def create_flavor(self, node: str, name: str) -> None:
        r = self.call(node, "POST", "/v1/flavors", {"name": name, "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
        assert r.status_code == 201, r.text

    def flavors(self, node: str) -> set[str]:
        r = self.call(node, "GET", "/v1/flavors?limit=1000")
        assert r.status_code == 200, r.text
        return {f["name"] for f in r.json()["flavors"]}

    def wait_flavors(self, node: str, expected: set[str], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not expected <= (seen := self.flavors(node)):
            assert time.monotonic() < deadline, f"{node} misses {sorted(expected - seen)}"
            time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for node in IDS:
            c.start(node)
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


def test_cluster_survives_leader_kill_and_full_restart(cluster: Cluster) -> None:
    leader = cluster.wait_ready(IDS)
    assert all((cluster.health(n) or {})["host"] == n for n in IDS)
    written = set()
    for node in IDS:  # followers forward to the leader; each write is readable where it was made
        for i in range(3):
            name = f"before-{node}-{i}"
            cluster.create_flavor(node, name)
            written.add(name)
        assert {n for n in written if n.startswith(f"before-{node}")} <= cluster.flavors(node)
    for node in IDS:
        cluster.wait_flavors(node, written)

    old_term = cluster.call(leader, "GET", "/v1/cluster").json()["term"]
    cluster.stop(leader, signal.SIGKILL)
    survivors = [n for n in IDS if n != leader]
    new_leader = cluster.wait_ready(survivors, timeout=15)
    assert new_leader != leader
    # an election among the survivors took place (a new term), not a stale view of the dead leader
    view = cluster.call(new_leader, "GET", "/v1/cluster").json()
    assert view["leader"] == new_leader and view["term"] > old_term, (old_term, view)
    for node in survivors:
        cluster.wait_flavors(node, written, timeout=2)  # nothing acknowledged was lost
        cluster.tokens.pop(node, None)
        name = f"during-{node}"
        cluster.create_flavor(node, name)
        written.add(name)

    cluster.start(leader)  # rejoins as a follower and catches up on what it missed
    cluster.tokens.pop(leader, None)
    cluster.wait_ready(IDS)
    cluster.wait_flavors(leader, written)

    for node in IDS:
        cluster.stop(node)
    cluster.tokens.clear()
    for node in IDS:
        cluster.start(node)
    cluster.wait_ready(IDS)
    for node in IDS:
        cluster.wait_flavors(node, written)
    cluster.create_flavor(IDS[0], "after-restart")


def test_peer_routes_refuse_unsigned_forged_and_replayed_requests(cluster: Cluster) -> None:
    cluster.wait_ready(IDS)
    url = cluster.url("node1")
    status_path = "/internal/v1/cluster/status"
    assert requests.get(url + status_path, timeout=5).status_code == 401

    forged = sign_headers(b"not-the-cluster-key-at-all", "node2", "GET", status_path, b"")
    assert requests.get(url + status_path, headers=forged, timeout=5).status_code == 401

    signed = sign_headers(peer_key(KEY.encode()), "node2", "GET", status_path, b"")
    r = requests.get(url + status_path, headers=signed, timeout=5)
    assert r.status_code == 200 and r.json()["node_id"] == "node1" and r.json()["leader"] in IDS
    assert requests.get(url + status_path, headers=signed, timeout=5).status_code == 401  # replay

    # a forged proposal must not reach the catalog
    name = f"forged-{uuid.uuid4().hex[:6]}"
    cmd = (f'{{"type":"flavor.create","id":"{uuid.uuid4()}","name":"{name}","vcpus":1,"ram_mb":1,'
           f'"disk_gb":1,"created_at":"2026-01-01T00:00:00Z"}}').encode()
    propose = "/internal/v1/raft/propose"
    for node in IDS:
        headers = sign_headers(b"wrong-key-wrong-key-wrong", "node2", "POST", propose, cmd)
        r = requests.post(cluster.url(node) + propose, data=cmd, headers=headers, timeout=5)
        assert r.status_code == 401, r.text
        r = requests.get(cluster.url(node) + "/internal/v1/raft/stream", timeout=5)
        assert r.status_code == 401, r.text
    assert name not in cluster.flavors("node1")


def test_sigterm_while_waiting_for_a_quorum_stops_at_once(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.start("node1")  # the other two voters never come: no quorum, start-up waits
    try:
        time.sleep(1.5)
        r = requests.get(c.url("node1") + "/healthz", timeout=2)
        assert r.status_code == 503, r.text  # the start-up listener answers, nothing else is up
        proc = c.procs.pop("node1")
        assert proc.stop(signal.SIGTERM, timeout=10) == 0  # exited by itself: not killed after 10 s
        log = proc.log()
        # the start-up wait was abandoned (not finished by a quorum that never came)
        assert "stop requested during start-up" in log and " listening on " not in log
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


def members(cluster: Cluster, node: str) -> dict[str, dict[str, Any]]:
    r = cluster.call(node, "GET", "/v1/cluster")
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["members"]}


def wait_leader(cluster: Cluster, node: str, want: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (got := cluster.health(node) or {}).get("leader") != want:
        assert time.monotonic() < deadline, f"{node} sees leader {got.get('leader')}, not {want}"
        time.sleep(0.1)


def test_a_host_joins_takes_over_leadership_and_an_old_member_leaves(cluster: Cluster) -> None:
    leader = cluster.wait_ready(IDS)
    cluster.create_flavor(leader, "before-join")
    cluster.start("node4", join=True)  # empty data dir: it waits, with no membership, to be added
    follower = next(n for n in IDS if n != leader)

    # bad requests change nothing: no such host, wrong node id, already a member, bad URL
    dead = f"http://127.0.0.1:{free_port()}"
    r = cluster.call(follower, "POST", "/v1/cluster/members", {"id": "node5", "url": dead})
    assert r.status_code == 400 and "does not answer" in r.json()["error"]["message"], r.text
    r = cluster.call(follower, "POST", "/v1/cluster/members", {"id": "node5", "url": cluster.url("node4")})
    assert r.status_code == 400 and "is node 'node4'" in r.json()["error"]["message"], r.text
    r = cluster.call(follower, "POST", "/v1/cluster/members", {"id": leader, "url": cluster.url(leader)})
    assert r.status_code == 409, r.text
    r = cluster.call(follower, "POST", "/v1/cluster/members", {"id": "node4", "url": "ftp://x/y"})
    assert r.status_code == 400, r.text
    assert set(members(cluster, leader)) == set(IDS)

    # added through a follower (forwarded to the leader): a learner first, a voter once caught up
    r = cluster.call(follower, "POST", "/v1/cluster/members", {"id": "node4", "url": cluster.url("node4")})
    assert r.status_code == 201, r.text
    assert members(cluster, leader)["node4"]["role"] == "voter"
    cluster.wait_ready([*IDS, "node4"])
    cluster.wait_flavors("node4", {"before-join"})
    cluster.create_flavor("node4", "from-node4")
    cluster.wait_flavors(leader, {"from-node4"})

    # maintenance: hand leadership to the new host, then remove the old leader
    r = cluster.call(follower, "POST", "/v1/cluster/leader", {"to": "node4"})
    assert r.status_code == 200, r.text
    wait_leader(cluster, follower, "node4")
    r = cluster.call(follower, "DELETE", f"/v1/cluster/members/{leader}")
    assert r.status_code == 204, r.text
    assert cluster.call(follower, "DELETE", f"/v1/cluster/members/{leader}").status_code == 404
    deadline = time.monotonic() + 30
    while True:  # the removed host left gossip too, while its process still runs
        states = {h["name"]: h["state"] for h in cluster.call(follower, "GET", "/v1/hosts").json()["hosts"]}
        if states.get(leader) == "left":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    cluster.stop(leader)
    rest = [n for n in [*IDS, "node4"] if n != leader]
    assert set(members(cluster, "node4")) == set(rest)
    cluster.create_flavor(follower, "after-leave")
    for node in rest:
        cluster.wait_flavors(node, {"before-join", "from-node4", "after-leave"})

    # the joined host keeps its membership across a restart (it is in its log, not its config)
    cluster.stop("node4")
    cluster.start("node4", join=True)
    cluster.wait_ready(rest)
    assert "after-leave" in cluster.flavors("node4")

    # the same through the CLI
    env = {**os.environ, "HVD_URL": cluster.url("node4"), "HVD_USERNAME": "admin",
           "HVD_PASSWORD": "admin-secret", "HVD_PROJECT": "admin"}
    out = subprocess.run([sys.executable, "-m", "hvd", "cluster", "show", "-f", "json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert {m["id"]: m["role"] for m in json.loads(out.stdout)} == dict.fromkeys(rest, "voter")
