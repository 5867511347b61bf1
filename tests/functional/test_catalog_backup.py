"""Catalog backup, restore and recovery from a lost quorum, with real daemons and the `hvd` CLI.

backup (online) → wipe → restore gives the same catalog, table by table; a survivor of a cluster
that lost its quorum goes on alone with its catalog after `hvd cluster recover --force-new-cluster`;
a catalog written by a newer schema is refused with a message that names the way out.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from hvd.catalog.schema import MIGRATIONS
from tests.conftest import REPO, start_daemon, write_config
from tests.functional.test_cluster import IDS, Cluster

ADMIN = {"HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret", "HVD_PROJECT": "admin"}


def hvd(*argv: str, env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HVD_")}
    out = subprocess.run([sys.executable, "-m", "hvd", *argv], capture_output=True, text=True, cwd=REPO,
                         env={**clean, **(env or {})}, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    if ok:
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
    return out


def table_sums(path: Path | None = None, config: Path | None = None) -> dict[str, str]:
    argv = ["catalog", "checksum", "--tables"]
    argv += ["--file", str(path)] if path else ["-c", str(config)]
    sums: dict[str, str] = json.loads(hvd(*argv).stdout)
    return sums


def test_backup_wipe_restore_gives_the_same_catalog(tmp_path: Path) -> None:
    base = tmp_path / "hvd"
    d = start_daemon(base)
    env = {"HVD_URL": d.url, **ADMIN}
    try:
        for name in ("b.tiny", "b.small", "b.large"):
            hvd("flavor", "create", name, "--vcpus", "1", "--ram", "64", env=env)
        hvd("project", "create", "lab", env=env)
        hvd("user", "create", "alice", "--password", "alice-secret", "--project", "lab", env=env)
        backup = tmp_path / "catalog.backup"
        out = hvd("catalog", "backup", str(backup), "-c", str(d.config))  # online: the daemon runs
        assert "backed up the catalog" in out.stdout
        assert oct(backup.stat().st_mode & 0o777) == oct(0o600)
        refused = hvd("catalog", "restore", str(backup), "-c", str(d.config), ok=False)
        assert refused.returncode == 1 and "stop hvd first" in refused.stderr
    finally:
        assert d.stop() == 0
    sums = table_sums(backup)
    assert {"flavors", "users", "projects", "meta"} <= set(sums)

    shutil.rmtree(base / "data")  # the host lost its disk
    out = hvd("catalog", "restore", str(backup), "-c", str(d.config))
    assert "restored" in out.stdout
    assert table_sums(config=d.config) == sums  # every table, row for row

    # the restored catalog serves: the users and flavors of before, the membership of [cluster]
    d = start_daemon(base, port=int(d.url.rsplit(":", 1)[1]))
    try:
        alice = {"HVD_URL": d.url, "HVD_USERNAME": "alice", "HVD_PASSWORD": "alice-secret", "HVD_PROJECT": "lab"}
        names = {f["name"] for f in json.loads(hvd("flavor", "list", "-f", "json", env=alice).stdout)}
        assert {"b.tiny", "b.small", "b.large"} <= names
        hvd("flavor", "create", "b.after", "--vcpus", "1", "--ram", "64", env={"HVD_URL": d.url, **ADMIN})
    finally:
        assert d.stop() == 0


def test_a_damaged_or_foreign_file_is_not_restored(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "hvd", 1)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database" * 100)
    out = hvd("catalog", "restore", str(junk), "-c", str(cfg), ok=False)
    assert out.returncode == 1 and "is not an hvd catalog" in out.stderr
    assert not (tmp_path / "hvd" / "data" / "catalog.db").exists()


def test_a_catalog_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "hvd"
    cfg = write_config(base, 1)
    (base / "data").mkdir()
    newer = len(MIGRATIONS) + 1
    conn = sqlite3.connect(base / "data" / "catalog.db")
    conn.executescript(f"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       f"INSERT INTO meta VALUES ('applied_index', '7'); PRAGMA user_version={newer};")
    conn.close()
    started = subprocess.run([sys.executable, "-m", "hvd", "daemon", "-c", str(cfg)], capture_output=True,
                             text=True, timeout=60, cwd=REPO)
    assert started.returncode == 1
    assert f"catalog schema {newer}, newer than this hvd's {len(MIGRATIONS)}" in started.stderr
    assert "Downgrades are not supported" in started.stderr
    backup = tmp_path / "newer.backup"
    shutil.copy(base / "data" / "catalog.db", backup)
    out = hvd("catalog", "restore", str(backup), "-c", str(cfg), ok=False)
    assert out.returncode == 1 and "newer than this hvd's" in out.stderr


def test_survivor_of_a_lost_quorum_goes_on_alone(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        for node in IDS:
            cluster.start(node)
        leader = cluster.wait_ready(IDS)
        cluster.create_flavor(leader, "before-loss")
        survivor = "node3"
        cluster.wait_flavors(survivor, {"before-loss"})
        for node in IDS:
            cluster.stop(node)  # two of three are gone for good; the survivor is stopped to recover
        config = tmp_path / survivor / "hvd.toml"
        refused = hvd("cluster", "recover", "-c", str(config), ok=False)
        assert refused.returncode == 1 and "--force-new-cluster" in refused.stderr
        out = hvd("cluster", "recover", "--force-new-cluster", "-c", str(config),
                  env={"HVD_HOST__NAME": survivor})
        assert f"{survivor} is now the only member" in out.stdout
        for lost in ("node1", "node2"):
            shutil.rmtree(tmp_path / lost)

        cluster.start(survivor)  # its hvd.toml still lists the lost peers: the Raft log decides
        assert cluster.wait_ready([survivor]) == survivor
        assert "before-loss" in cluster.flavors(survivor)
        cluster.create_flavor(survivor, "after-recovery")  # commits with a quorum of one
        members = cluster.call(survivor, "GET", "/v1/cluster").json()["members"]
        assert [m["id"] for m in members] == [survivor]
    finally:
        for node in list(cluster.procs):
            cluster.stop(node)


def test_recover_refuses_a_node_that_is_not_a_member(tmp_path: Path) -> None:
    name = "node9"
    d = start_daemon(tmp_path / "hvd")
    assert d.stop() == 0
    out = hvd("cluster", "recover", "--force-new-cluster", "-c", str(d.config), env={"HVD_CLUSTER__NODE_ID": name},
              ok=False)
    assert out.returncode == 1 and f"node {name!r} is not a member" in out.stderr
