"""A real rolling upgrade: three hvd 0.1.0 daemons (the released code, from
tests/fixtures/upgrade/hvd-0.1.0.tar.gz) found a cluster on loopback, then each host in turn is
stopped and started again with this build on the same data_dir, the leader last, as
docs/operations.md says. After every step the cluster keeps committing writes through every
member, and a level-2 command (volume types) is refused with 409 naming the members still on
0.1.0; after the last one it commits and the three catalogs agree.

0.1.0 signs peer requests with the raw cluster key and 0.2.0 with a derived one
(hvd/cluster/keys.py): this is the test that a mixed cluster forms at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import hvd
from hvd.catalog.backup import backup
from hvd.catalog.protocol import PROTOCOL
from tests.conftest import REPO, DaemonProcess, free_port, wait_listening, write_config

OLD_BUILD = REPO / "tests" / "fixtures" / "upgrade" / "hvd-0.1.0.tar.gz"
OLD_VERSION = "0.1.0"
KEY = "rolling-upgrade-key-0123456789"
IDS = ["node1", "node2", "node3"]


class Cluster:
    """Three daemons on 127.0.0.1, each started from the old build or from this one."""

    def __init__(self, base: Path, old_root: Path) -> None:
        self.base = base
        self.old_root = old_root
        self.ports = {node: free_port() for node in IDS}
        self.procs: dict[str, DaemonProcess] = {}
        self.version: dict[str, str] = {}
        self.token = ""

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def start(self, node: str, old: bool) -> None:
        peers = ", ".join(f'"{n}=http://127.0.0.1:{p}"' for n, p in self.ports.items())
        cfg = write_config(self.base / node, self.ports[node], "fake",
                           f'[cluster]\npeers = [{peers}]\ncluster_key = "{KEY}"\n')
        root = self.old_root if old else REPO
        env = {**os.environ, "HVD_HOST__NAME": node, "PYTHONPATH": str(root)}
        log_path = self.base / node / "daemon.log"
        with open(log_path, "ab") as fh:
            fh.write(f"==== hvd {OLD_VERSION if old else hvd.__version__}\n".encode())
            fh.flush()
            # cwd: the build's own tree comes first on sys.path (the venv holds this build editable)
            proc = subprocess.Popen([sys.executable, "-m", "hvd", "daemon", "-c", str(cfg)], cwd=root, env=env,
                                    stdout=fh, stderr=subprocess.STDOUT)
        self.procs[node] = DaemonProcess(cfg, self.url(node), log_path, proc)
        self.version[node] = OLD_VERSION if old else hvd.__version__
        wait_listening(self.ports[node], proc, 30)

    def stop(self, node: str) -> None:
        assert self.procs.pop(node).stop() is not None

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log()[-3000:]}" for n, p in self.procs.items())

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

    def settle(self, timeout: float = 45) -> str:
        """Wait until every member names the same leader and every upgraded member has heard every
        member's version and level; returns the leader."""
        deadline = time.monotonic() + timeout
        want = {n: (PROTOCOL if v == hvd.__version__ else 1, v) for n, v in self.version.items()}
        views: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            views = {n: self.view(n) for n in IDS}
            leaders = {v.get("leader") for v in views.values()}
            heard = all(
                {m["id"]: (m["protocol"], m["hvd_version"]) for m in views[n]["members"]} == want
                for n in IDS if self.version[n] != OLD_VERSION and views[n]
            )
            if all(views.values()) and len(leaders) == 1 and leaders <= set(IDS) and heard:
                return str(leaders.pop())
            time.sleep(0.3)
        raise AssertionError(f"the cluster never settled: {json.dumps(views)}\n{self.logs()}")


@pytest.fixture(scope="module")
def old_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hvd-0.1.0")
    with tarfile.open(OLD_BUILD) as tar:
        tar.extractall(root, filter="data")
    out = subprocess.run([sys.executable, "-c", "import hvd.daemon, hvd; print(hvd.__version__)"], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == OLD_VERSION, out.stderr  # the old code imports with today's locked deps
    return root


@pytest.fixture
def cluster(tmp_path: Path, old_build: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, old_build)
    try:
        for node in IDS:
            c.start(node, old=True)
        yield c
    finally:
        for proc in c.procs.values():
            proc.stop(signal.SIGKILL)


def write_through_every_member(cluster: Cluster, step: str) -> None:
    for node in IDS:
        r = cluster.call(node, "POST", "/v1/flavors",
                         {"name": f"{step}-{node}", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
        assert r.status_code == 201, f"{node} ({cluster.version[node]}): {r.text}\n{cluster.logs()}"
    for node in IDS:  # every replica has every write (a member read waits for nothing: poll)
        deadline = time.monotonic() + 15
        while True:
            r = cluster.call(node, "GET", "/v1/flavors?limit=1000")
            names = {f["name"] for f in r.json()["flavors"]}
            if {f"{step}-{n}" for n in IDS} <= names:
                break
            assert time.monotonic() < deadline, f"{node} misses {step} flavors: {names}"
            time.sleep(0.2)


def test_0_1_0_cluster_upgraded_host_by_host_keeps_committing(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.settle()
    write_through_every_member(cluster, "before")
    r = cluster.call("node1", "POST", "/v1/users", {"name": "alice", "password": "alice-secret-1"})
    assert r.status_code == 201, r.text

    order = [n for n in IDS if n != leader] + [leader]  # the leader last (docs/operations.md)
    for step, node in enumerate(order, 1):
        if step == len(order):  # its turn: hand leadership to an upgraded member first, as documented
            r = cluster.call(leader, "POST", "/v1/cluster/leader", {"to": order[0]})
            assert r.status_code == 200, r.text
            assert cluster.settle() == order[0]
        cluster.stop(node)
        cluster.start(node, old=False)  # same data_dir: the catalog schema migration runs
        cluster.settle()
        write_through_every_member(cluster, f"step{step}")
        still_old = [n for n in IDS if cluster.version[n] == OLD_VERSION]
        for upgraded in (n for n in IDS if cluster.version[n] != OLD_VERSION):
            r = cluster.call(upgraded, "POST", "/v1/volume-types", {"name": "fast"})
            if not still_old:
                break
            assert r.status_code == 409, r.text
            message = r.json()["error"]["message"]
            assert all(f"{n} runs hvd {OLD_VERSION} (protocol 1)" in message for n in still_old), message

    assert r.status_code == 201, r.text  # the last host is upgraded: level 2 commits
    r = cluster.call("node2", "GET", "/v1/volume-types")
    assert "fast" in {t["name"] for t in r.json()["volume_types"]}
    r = cluster.call("node3", "GET", "/v1/users")
    assert "alice" in {u["name"] for u in r.json()["users"]}  # written under 0.1.0

    # every catalog the same (online backups at one applied index)
    deadline = time.monotonic() + 20
    while True:
        infos = [backup(tmp_path / n / "data", tmp_path / f"{n}.backup.db") for n in IDS]
        if len({(i.applied_index, i.checksum) for i in infos}) == 1:
            break
        assert time.monotonic() < deadline, [(i.applied_index, i.checksum) for i in infos]
        time.sleep(0.5)
        for n in IDS:
            (tmp_path / f"{n}.backup.db").unlink()
    assert infos[0].schema_version >= 6
