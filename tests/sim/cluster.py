"""Deterministic cluster simulator: virtual clock, event queue, simulated disks and network.

Each ``SimNode`` runs the pure ``RaftNode`` the way the real driver does: after any input it
takes the Ready a few virtual milliseconds later, sends what a leader may send before its own
write (appends), then schedules a "disk write" that persists the Ready, and only then sends the
other messages (votes, replies) and applies committed entries. A crash in between loses the
state that was never persisted, exactly like a power cut.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from hvd.cluster.raft.messages import ConfState, EntryKind, Message, Snapshot, SnapshotMeta
from hvd.cluster.raft.node import RaftConfig, RaftNode, Ready, Role
from hvd.cluster.raft.storage import MemoryStorage
from tests.sim.checkers import Observer
from tests.sim.kv import KVStateMachine
from tests.sim.network import SimNetwork

TICK_MS = 10


class SimNode:
    """One simulated host: durable storage + durable state machine + (while up) a RaftNode."""

    def __init__(self, sim: Sim, node_id: str, storage: MemoryStorage) -> None:
        self.sim = sim
        self.id = node_id
        self.storage = storage
        self.sm = KVStateMachine()
        self.raft: RaftNode | None = None
        self.incarnation = 0
        self.ready_pending = False
        # proposal index -> [(term, callback(result or None when overwritten))]
        self.waiters: dict[int, list[tuple[int, Callable[[bytes | None], None]]]] = {}
        self.read_waiters: dict[bytes, Callable[[int | None], None]] = {}
        self.apply_waiters: list[tuple[int, Callable[[], None]]] = []

    @property
    def up(self) -> bool:
        return self.raft is not None

    def start(self) -> None:
        hs, snap, entries = self.storage.load()
        if self.sm.applied_index() < snap.meta.index:
            self.sm.restore(snap.meta.index, snap.data)
        self.sim.obs.restored(self.id, self.sm.applied_index())
        cfg = RaftConfig(
            self.id,
            election_ticks=self.sim.election_ticks,
            heartbeat_ticks=self.sim.heartbeat_ticks,
            max_entries_per_msg=self.sim.max_entries_per_msg,
        )
        self.raft = RaftNode(
            cfg, random.Random(self.sim.rng.random()), hs, snap, entries, self.sm.applied_index()
        )
        self.sim.log(f"start {self.id} term={hs.term} vote={hs.vote} last={self.raft.log.last_index()}")

    def crash(self) -> None:
        self.raft = None
        self.incarnation += 1
        self.ready_pending = False
        self.waiters.clear()
        self.read_waiters.clear()
        self.apply_waiters.clear()
        self.sim.log(f"crash {self.id}")

    def call(self, fn: Callable[[RaftNode], object]) -> object:
        """Run ``fn`` against the live node, then observe and schedule its Ready."""
        assert self.raft is not None
        try:
            return fn(self.raft)
        finally:
            self.sim.obs.observe(self.sim, self)
            self.kick()

    def kick(self) -> None:
        if not self.ready_pending and self.raft is not None and self.raft.has_ready():
            self.ready_pending = True
            inc = self.incarnation
            self.sim.schedule(self.sim.rng.randint(0, self.sim.disk_ms), lambda: self.process_ready(inc))

    def process_ready(self, incarnation: int) -> None:
        """Take the Ready and send what may leave before the disk write (a leader's appends),
        then schedule the write itself; a crash before it lands loses everything it held."""
        if incarnation != self.incarnation or self.raft is None:
            return
        rd = self.raft.ready()
        for m in rd.before_persist():
            self.sim.net.send(m)
        self.sim.schedule(self.sim.rng.randint(0, self.sim.disk_ms), lambda: self.finish_ready(incarnation, rd))

    def finish_ready(self, incarnation: int, rd: Ready) -> None:
        if incarnation != self.incarnation or self.raft is None:
            return
        self.ready_pending = False
        raft = self.raft
        self.storage.persist(rd.hard_state, rd.snapshot, rd.entries)  # durable before any reply
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.meta.index, rd.snapshot.data)
            self.sim.obs.restored(self.id, rd.snapshot.meta.index)
            self.sim.log(f"{self.id} installed snapshot @{rd.snapshot.meta.index}")
        for m in rd.after_persist():
            self.sim.net.send(m)
        for e in rd.committed_entries:
            result = self.sm.apply(e.index, e.data) if e.kind == EntryKind.NORMAL else b""
            self.sim.obs.applied(self.id, e)
            for term, cb in self.waiters.pop(e.index, ()):
                cb(result if term == e.term else None)
        for rs in rd.read_states:
            read_cb = self.read_waiters.pop(rs.ctx, None)
            if read_cb is not None:
                read_cb(rs.index)
        for ctx in rd.dropped_reads:
            read_cb = self.read_waiters.pop(ctx, None)
            if read_cb is not None:
                read_cb(None)
        raft.advance(rd)
        if raft.applied - raft.log.snapshot.meta.index >= self.sim.snapshot_every:
            self.storage.compact(raft.compact(raft.applied, self.sm.snapshot()[1]))
        if self.apply_waiters:
            ready_now = [cb for idx, cb in self.apply_waiters if idx <= raft.applied]
            self.apply_waiters = [(i, cb) for i, cb in self.apply_waiters if i > raft.applied]
            for cb in ready_now:
                cb()
        self.sim.obs.observe(self.sim, self)
        self.kick()


class Sim:
    """The whole simulated cluster. Same seed, same run."""

    def __init__(
        self,
        seed: int,
        voters: int = 3,
        spares: int = 0,
        verbose: bool = False,
        election_ticks: int = 10,
        heartbeat_ticks: int = 3,
        snapshot_every: int = 24,
        storages: dict[str, MemoryStorage] | None = None,
        max_entries_per_msg: int = 64,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self.verbose = verbose
        self.trace: list[str] = []
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.snapshot_every = snapshot_every
        self.max_entries_per_msg = max_entries_per_msg
        self.disk_ms = 3  # fsync latency bound: the window in which a crash loses state
        self.obs = Observer()
        # paused hosts (a stalled process: GC, swap, SIGSTOP) neither tick nor read messages
        self.paused: set[str] = set()
        self.net = SimNetwork(random.Random(self.rng.random()), self.schedule)
        self.net.deliver = self._deliver
        if storages is None:
            ids = [f"n{i + 1}" for i in range(voters + spares)]
            boot = Snapshot(SnapshotMeta(0, 0, ConfState(frozenset(ids[:voters]))))
            storages = {i: MemoryStorage(snapshot=boot if n < voters else None) for n, i in enumerate(ids)}
        self.nodes = {i: SimNode(self, i, st) for i, st in storages.items()}
        for node in self.nodes.values():
            node.start()
        self.schedule(TICK_MS, self._tick)

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now:6d} {text}")

    def schedule(self, delay: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn))

    def clock(self) -> int:
        """A global event counter for client histories (strictly orders same-millisecond events)."""
        self._seq += 1
        return self._seq

    def run_until(self, t: int) -> None:
        q = self._queue
        while q and q[0][0] <= t:
            when, _, fn = heapq.heappop(q)
            self.now = when
            fn()
        self.now = t

    def _tick(self) -> None:
        for node in self.nodes.values():
            if node.raft is not None and node.id not in self.paused:
                node.call(RaftNode.tick)
        self.schedule(TICK_MS, self._tick)

    def _deliver(self, msg: Message) -> None:
        node = self.nodes.get(msg.to)
        if node is None or node.raft is None or msg.to in self.paused:
            return
        if self.verbose:
            self.log(f"deliver {msg}")
        node.call(lambda r: r.step(msg))

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        best: SimNode | None = None
        for node in self.nodes.values():
            r = node.raft
            if r is not None and r.role == Role.LEADER and (best is None or r.term > best.raft.term):  # type: ignore[union-attr]
                best = node
        return best

    def pause(self, node_id: str) -> None:
        """Stall ``node_id``: its clock stops and what arrives meanwhile is lost. A paused leader
        still believes it leads when it resumes: the deposed-leader case reads must survive."""
        self.paused.add(node_id)
        self.log(f"pause {node_id}")

    def resume(self, node_id: str) -> None:
        if node_id in self.paused:
            self.paused.discard(node_id)
            self.log(f"resume {node_id}")

    def crash(self, node_id: str) -> None:
        if self.nodes[node_id].up:
            self.nodes[node_id].crash()

    def restart(self, node_id: str) -> None:
        if not self.nodes[node_id].up:
            self.nodes[node_id].start()
            self.nodes[node_id].kick()
