"""Durable Raft state: hard state, log entries and the latest snapshot.

``SqliteStorage`` is the production store (WAL, ``synchronous=FULL``: a returned ``persist`` is
on disk). ``MemoryStorage`` is for the simulation: only what went through ``persist``/``compact``
survives a simulated crash, which is exactly "lost unless persisted".
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Protocol

from hvd.cluster.raft.messages import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from hvd.private_files import private_file


class Storage(Protocol):
    """What a Raft driver needs from durable storage."""

    def load(self) -> tuple[HardState, Snapshot, list[Entry]]:
        """Everything persisted so far (entries follow the snapshot)."""
        ...

    def persist(
        self, hard_state: HardState | None, snapshot: Snapshot | None, entries: tuple[Entry, ...]
    ) -> None:
        """Durably and atomically: install ``snapshot`` (dropping the whole log), then replace entries
        at index >= ``entries[0].index`` by ``entries``, then store ``hard_state``."""
        ...

    def compact(self, snapshot: Snapshot) -> None:
        """Store a locally taken snapshot and drop the entries it covers (the suffix stays)."""
        ...


class MemoryStorage:
    """In-memory storage whose contents model the disk of a simulated host."""

    def __init__(self, hard_state: HardState | None = None, snapshot: Snapshot | None = None) -> None:
        self.hard_state = hard_state or HardState()
        self.snapshot = snapshot or Snapshot()
        self.entries: list[Entry] = []

    def load(self) -> tuple[HardState, Snapshot, list[Entry]]:
        return self.hard_state, self.snapshot, list(self.entries)

    def persist(
        self, hard_state: HardState | None, snapshot: Snapshot | None, entries: tuple[Entry, ...]
    ) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = []
        if entries:
            first = entries[0].index
            base = self.snapshot.meta.index + 1
            del self.entries[max(0, first - base) :]
            self.entries.extend(e for e in entries if e.index >= base)
        if hard_state is not None:
            self.hard_state = hard_state

    def compact(self, snapshot: Snapshot) -> None:
        if snapshot.meta.index <= self.snapshot.meta.index:
            return
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]
        self.snapshot = snapshot


_SCHEMA = """
CREATE TABLE IF NOT EXISTS raft_hard_state (id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER NOT NULL, vote TEXT, commit_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS raft_snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, conf TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
    kind INTEGER NOT NULL, data BLOB NOT NULL);
"""


class SqliteStorage:
    """Raft state in one SQLite file. Blocking: call it from a dedicated executor thread."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            private_file(path)  # the log carries every command: password hashes, user data
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # Raft replies promise durability
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def bootstrap(self, conf: ConfState) -> None:
        """Give a brand-new member of the initial cluster its membership (no-op if state exists)."""
        if self._db.execute("SELECT 1 FROM raft_snapshot").fetchone() is None:
            self.persist(None, Snapshot(SnapshotMeta(0, 0, conf)), ())

    def load(self) -> tuple[HardState, Snapshot, list[Entry]]:
        row = self._db.execute("SELECT term, vote, commit_index FROM raft_hard_state").fetchone()
        hs = HardState(row[0], row[1], row[2]) if row else HardState()
        srow = self._db.execute("SELECT idx, term, conf, data FROM raft_snapshot").fetchone()
        snap = Snapshot()
        if srow:
            snap = Snapshot(SnapshotMeta(srow[0], srow[1], ConfState.from_json(srow[2].encode())), srow[3])
        entries = [
            Entry(i, t, EntryKind(k), bytes(d))
            for i, t, k, d in self._db.execute(
                "SELECT idx, term, kind, data FROM raft_log WHERE idx > ? ORDER BY idx", (snap.meta.index,)
            )
        ]
        return hs, snap, entries

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        conf = snapshot.meta.conf.to_json().decode()
        self._db.execute(
            "INSERT OR REPLACE INTO raft_snapshot (id, idx, term, conf, data) VALUES (1, ?, ?, ?, ?)",
            (snapshot.meta.index, snapshot.meta.term, conf, snapshot.data),
        )

    def persist(
        self, hard_state: HardState | None, snapshot: Snapshot | None, entries: tuple[Entry, ...]
    ) -> None:
        with self._transaction():
            if snapshot is not None:
                self._write_snapshot(snapshot)
                self._db.execute("DELETE FROM raft_log")
            if entries:
                self._db.execute("DELETE FROM raft_log WHERE idx >= ?", (entries[0].index,))
                self._db.executemany(
                    "INSERT INTO raft_log (idx, term, kind, data) VALUES (?, ?, ?, ?)",
                    [(e.index, e.term, int(e.kind), e.data) for e in entries],
                )
            if hard_state is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO raft_hard_state (id, term, vote, commit_index)"
                    " VALUES (1, ?, ?, ?)",
                    (hard_state.term, hard_state.vote, hard_state.commit),
                )

    def compact(self, snapshot: Snapshot) -> None:
        with self._transaction():
            self._write_snapshot(snapshot)
            self._db.execute("DELETE FROM raft_log WHERE idx <= ?", (snapshot.meta.index,))

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (keeping that error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        if self._db.in_transaction:  # a failed COMMIT (disk full) can leave it open: start clean
            self._db.execute("ROLLBACK")
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            # after SQLITE_FULL SQLite may have rolled back by itself; a failing ROLLBACK must not
            # replace the error the driver needs to see (it decides between waiting and giving up)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
