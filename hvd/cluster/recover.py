"""`hvd cluster recover --force-new-cluster`: a cluster that lost its quorum for good goes on from
one surviving member (like etcd's --force-new-cluster and Consul's peers.json).

On the stopped survivor, the Raft state is replaced by a snapshot of its own catalog (everything
it has applied) whose membership names only itself, as the sole voter. Its next start elects it at
once; other hosts join it again from empty data dirs (`[cluster] join = true`, `hvd cluster add`).
Entries the survivor had logged but not yet applied are dropped: they may never have committed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hvd.catalog.backup import CATALOG_FILE, RAFT_FILE, ensure_stopped, set_aside
from hvd.catalog.db import connect
from hvd.catalog.state import CatalogState
from hvd.cluster.raft.log import RaftLog
from hvd.cluster.raft.messages import ConfState, HardState, Snapshot, SnapshotMeta
from hvd.cluster.raft.storage import SqliteStorage
from hvd.errors import ConfigError, NotFound


@dataclass(frozen=True)
class Recovered:
    """The outcome: the new membership, where the catalog stands, what was dropped, the old log."""

    conf: ConfState
    applied_index: int
    term: int
    dropped_entries: int
    previous_members: frozenset[str]
    kept: Path | None


def survivor_conf(node_id: str, old: ConfState, own_url: str | None) -> ConfState:
    """The new membership: this node alone, as voter, at the address it had (or `own_url`)."""
    url = own_url or old.address_map().get(node_id)
    return ConfState(frozenset({node_id}), frozenset(), ((node_id, url),) if url else ())


def force_new_cluster(data_dir: Path, node_id: str, own_url: str | None = None) -> Recovered:
    """Rewrite `data_dir`'s Raft state to a one-member cluster of `node_id` holding its catalog."""
    catalog_path, raft_path = data_dir / CATALOG_FILE, data_dir / RAFT_FILE
    if not catalog_path.is_file() or not raft_path.is_file():
        raise NotFound(f"no catalog and Raft log in {data_dir}: nothing to recover (is host.data_dir right?)")
    ensure_stopped(data_dir)
    old = SqliteStorage(raft_path)
    try:
        hs, snap, entries = old.load()
    finally:
        old.close()
    log = RaftLog(snap, entries)
    old_conf, _ = log.conf_at(log.last_index())
    if node_id not in old_conf.members():
        raise ConfigError(f"node {node_id!r} is not a member of the cluster in {data_dir}"
                          f" (members: {', '.join(sorted(old_conf.members())) or 'none'}); check [cluster] node_id")
    conn = connect(catalog_path)
    try:
        state = CatalogState(conn)
        index, data = state.snapshot()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{catalog_path} cannot be read: {exc}") from None
    finally:
        conn.close()
    conf = survivor_conf(node_id, old_conf, own_url)
    term = log.term(index) or hs.term  # the applied entry's own term when the log still has it
    kept = set_aside(data_dir, (RAFT_FILE,), "pre-recover")
    new = SqliteStorage(raft_path)
    try:
        # no vote: the next start elects this node (the only voter) in a fresh term above hs.term
        new.persist(HardState(hs.term, None, index), Snapshot(SnapshotMeta(index, term, conf), data), ())
    finally:
        new.close()
    return Recovered(conf, index, hs.term, max(0, log.last_index() - index), old_conf.members(), kept)
