"""Upgrading in place: every catalog and Raft log kept under tests/fixtures/upgrade/ (written by the
release that shipped that schema) opens under today's code.

Replaying such a Raft log into an empty catalog with today's apply must give the catalog that
release wrote (commands of older releases stay decodable and deterministic), and a daemon started
on such a data dir migrates it, serves what it held and commits new writes.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import requests

import hvd.catalog.all_commands  # noqa: F401 - registers every command handler apply needs
from hvd.catalog.backup import table_checksums
from hvd.catalog.db import connect
from hvd.catalog.schema import MIGRATIONS
from hvd.catalog.state import CatalogState
from hvd.cluster.raft.messages import EntryKind
from hvd.cluster.raft.storage import SqliteStorage
from tests.conftest import start_daemon

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "upgrade").glob("schema-*"))


def load(sql: Path, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(sql.read_text())
    finally:
        conn.close()


def test_there_is_a_fixture_of_the_current_schema() -> None:
    assert f"schema-{len(MIGRATIONS)}" in {f.name for f in FIXTURES}, (
        "a new catalog migration needs its upgrade fixture: run python -m tests.fixtures.upgrade.make_fixture")


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_the_old_raft_log_replays_into_the_old_catalog(fixture: Path, tmp_path: Path) -> None:
    load(fixture / "catalog.sql", tmp_path / "old.db")
    load(fixture / "raft.sql", tmp_path / "raft.db")
    old = connect(tmp_path / "old.db")
    CatalogState(old)  # migrated to today's schema, as a start-up would
    storage = SqliteStorage(tmp_path / "raft.db")
    _, snapshot, entries = storage.load()
    storage.close()
    fresh = connect(tmp_path / "fresh.db")
    state = CatalogState(fresh)
    if snapshot.meta.index:
        state.restore(snapshot.meta.index, snapshot.data)
    normal = [(e.index, e.data) for e in entries if e.kind == EntryKind.NORMAL]
    assert normal, "the fixture's log holds commands"
    state.apply_batch(normal, contiguous=False)
    assert table_checksums(fresh) == table_checksums(old)
    old.close()
    fresh.close()


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_a_daemon_starts_on_an_old_data_dir(fixture: Path, tmp_path: Path) -> None:
    base = tmp_path / "hvd"
    (base / "data").mkdir(parents=True)
    for name in ("catalog", "raft"):
        load(fixture / f"{name}.sql", base / "data" / f"{name}.db")
    d = start_daemon(base)  # the fixture's host: same name and node id (hvd-test)
    try:
        alice = {"username": "alice", "password": "alice-secret", "project": "lab"}
        assert requests.post(f"{d.url}/v1/auth/tokens", json=alice, timeout=30).status_code == 201
        admin = {"username": "admin", "password": "admin-secret", "project": "admin"}
        r = requests.post(f"{d.url}/v1/auth/tokens", json=admin, timeout=30)
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        servers = requests.get(f"{d.url}/v1/servers", headers=headers, timeout=30).json()["servers"]
        # (its status is the fake driver's business: its domains do not outlive a daemon)
        assert [s["name"] for s in servers] == ["fx-vm"]
        body = {"name": "after-upgrade", "vcpus": 1, "ram_mb": 64}
        r = requests.post(f"{d.url}/v1/flavors", json=body, headers=headers, timeout=30)
        assert r.status_code == 201, r.text
    finally:
        assert d.stop() == 0
    conn = sqlite3.connect(base / "data" / "catalog.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    shutil.rmtree(base)
