"""Assemble this host's Raft member from ``[cluster]``: storage, initial membership, timing, transport.

At bootstrap every founding member lists the same peers, sorts all node ids, and the first
``voters`` of them vote while the rest replicate as learners. A member that already has Raft state
ignores this (its log holds the membership, addresses included). A joining member (``join``)
starts with no membership at all and learns it from the leader once a member adds it.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from hvd.catalog.db import Database
from hvd.catalog.state import CatalogState
from hvd.cluster.coordinator import CatalogStateMachine, RaftCoordinator
from hvd.cluster.http_transport import HttpTransport, PeerClient
from hvd.cluster.keys import KeySource, peer_key
from hvd.cluster.raft.driver import RaftDriver
from hvd.cluster.raft.log import RaftLog
from hvd.cluster.raft.messages import ConfState, Snapshot, SnapshotMeta
from hvd.cluster.raft.node import RaftConfig
from hvd.cluster.raft.storage import SqliteStorage
from hvd.cluster.raft.transport import InMemoryNetwork, Transport
from hvd.config import ClusterSection
from hvd.errors import ConfigError

log = logging.getLogger(__name__)


def initial_conf(node_id: str, members: list[str], voters: int,
                 addresses: dict[str, str] | None = None) -> ConfState:
    """The bootstrap membership: the first ``voters`` ids in sorted order vote, the others learn."""
    ordered = sorted(set(members) | {node_id})
    return ConfState(frozenset(ordered[:voters]), frozenset(ordered[voters:]),
                     tuple(sorted((addresses or {}).items())))


def raft_timing(cluster: ClusterSection) -> tuple[float, RaftConfig]:
    """(tick seconds, node config): two ticks per heartbeat, the election timeout in ticks."""
    tick_ms = cluster.heartbeat_ms / 2
    return tick_ms / 1000, RaftConfig(
        id="",
        election_ticks=max(6, round(cluster.election_timeout_ms / tick_ms)),
        heartbeat_ticks=2,
    )


def bootstrap_storage(storage: SqliteStorage, sm: CatalogStateMachine, conf: ConfState) -> None:
    """Give brand-new Raft state its membership. A catalog that was written before Raft (one host
    without a log) becomes the first snapshot, so its applied entries are never expected again."""
    hs, snap, entries = storage.load()
    if hs.term or entries or snap.meta.index or snap.meta.conf.voters:
        return
    if sm.applied_index() == 0:
        storage.bootstrap(conf)
        return
    index, data = sm.snapshot()
    log.info("adopting the existing catalog (applied index %d) as the first Raft snapshot", index)
    storage.persist(None, Snapshot(SnapshotMeta(index, 0, conf), data), ())


def refuse_stale_joiner(node_id: str, storage: SqliteStorage, sm: CatalogStateMachine) -> None:
    """A joining host takes the cluster's catalog; one with a history of its own (it ran alone, or
    in another cluster) would mix two histories or elect itself, so it must start from an empty
    data_dir. A host that already joined (its log names other members) restarts normally."""
    hs, snap, entries = storage.load()
    log_ = RaftLog(snap, entries)
    conf, _ = log_.conf_at(log_.last_index())
    fresh = not (hs.term or entries or snap.meta.index or conf.voters)
    alone = conf.voters == frozenset({node_id}) and not conf.learners
    if (fresh and sm.applied_index() > 0) or alone:
        storage.close()
        raise ConfigError("[cluster] join = true needs an empty host.data_dir: this host already has a catalog"
                          f" of its own ({sm.applied_index()} applied entries; it ran alone or in another cluster)")


def open_raft_coordinator(
    cluster: ClusterSection,
    node_id: str,
    raft_path: Path,
    db: Database,
    state: CatalogState,
    *,
    snapshot_every: int = 10_000,  # a snapshot copies the whole catalog: not too often
    network: InMemoryNetwork | None = None,
    ssl_context: ssl.SSLContext | None = None,
    peer_keys: KeySource | None = None,
) -> RaftCoordinator:
    """A RaftCoordinator for this host (``network`` replaces HTTP in tests; ``ssl_context``: the
    cluster's client TLS context when [tls] is enabled; ``peer_keys``: what signs peer requests,
    by default the derived key alone)."""
    peers = cluster.peer_urls()
    conf = initial_conf(node_id, list(peers), cluster.voters, peers)
    sm = CatalogStateMachine(db, state)
    storage = SqliteStorage(raft_path)
    if not cluster.join:
        bootstrap_storage(storage, sm, conf)
    else:
        refuse_stale_joiner(node_id, storage, sm)
    tick, base = raft_timing(cluster)
    config = RaftConfig(id=node_id, election_ticks=base.election_ticks, heartbeat_ticks=base.heartbeat_ticks)
    client: PeerClient | None = None
    http: HttpTransport | None = None
    transport: Transport
    if network is not None:
        transport = network.endpoint(node_id)
    else:
        key = peer_keys if peer_keys is not None else peer_key(cluster.cluster_key.encode())
        client = PeerClient(node_id, peers, key, ssl_context)
        transport = http = HttpTransport(client)
    driver = RaftDriver(config, storage, transport, sm, tick_seconds=tick, snapshot_every=snapshot_every,
                        apply_executor=db.executor)
    return RaftCoordinator(driver, node_id, client=client, transport=http, propose_timeout=cluster.propose_timeout_s,
                           storage=storage)
