"""A pure, synchronous Raft node (Ongaro & Ousterhout, Figure 2, §6 membership, §7 compaction).

No I/O, no clock, no randomness except the injected ``random.Random``. The driver feeds it
``tick()``, ``step(msg)`` and client calls, then loops::

    rd = node.ready()      # what to persist, send and apply
    send(rd.before_persist())   # a leader's appends go out while it writes its own log
    persist(rd.snapshot, rd.entries, rd.hard_state)   # fsync BEFORE any vote or reply
    send(rd.after_persist()); apply(rd.committed_entries)
    node.advance(rd)

Extras beyond Figure 2: pre-vote and check-quorum (a partitioned node cannot disrupt, an isolated
leader steps down), conflict-term back-off, InstallSnapshot, single-server membership changes,
leadership transfer (TimeoutNow), read-index, and group commit (all proposals between two
``ready()`` calls leave in one append round).
"""

from __future__ import annotations

import random
from enum import IntEnum

from hvd.cluster.raft.errors import MembershipError, NotLeaderError, ProposalDroppedError
from hvd.cluster.raft.log import RaftLog
from hvd.cluster.raft.messages import (
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    Snapshot,
    SnapshotMeta,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from hvd.cluster.raft.types import ConfChangeOp, RaftConfig, ReadState, Ready, Role

__all__ = ["ConfChangeOp", "RaftConfig", "RaftNode", "ReadState", "Ready", "Role"]


class _PeerState(IntEnum):
    PROBE = 0  # next is a guess: send one batch per round until a success
    REPLICATE = 1  # next advances optimistically as appends leave
    SNAPSHOT = 2  # an InstallSnapshot is in flight


class _PendingRead:
    __slots__ = ("ctx", "index", "seq")

    def __init__(self, ctx: bytes) -> None:
        self.ctx = ctx
        self.index = 0
        self.seq = -1  # -1 until the leader knows its commit index and starts a confirmation round


class _Progress:
    __slots__ = ("acked_seq", "match", "next", "pending_snapshot", "recent_active", "state", "wait")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PeerState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.acked_seq = 0
        self.wait = 0


class RaftNode:
    """One Raft participant. Not thread-safe; the driver serialises all calls."""

    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState,
        snapshot: Snapshot,
        entries: list[Entry],
        applied: int = 0,
    ) -> None:
        """Rebuild from durable state. ``applied`` is the state machine's index (>= snapshot index)."""
        self.cfg = config
        self.id = config.id
        self._rng = rng
        self.log = RaftLog(snapshot, entries)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.applied = max(applied, snapshot.meta.index)
        # what the state machine applied was committed: a commit index that was never written
        # (it is not fsynced on its own, see ``_hard_state_to_persist``) is at least that
        self.commit = max(hard_state.commit, snapshot.meta.index, min(self.applied, self.log.last_index()))
        self.stable = self.log.last_index()
        self._persisted_hs = hard_state
        self._unstable_snapshot: Snapshot | None = None
        self.conf, self._conf_index = self.log.conf_at(self.log.last_index())
        self.role = Role.FOLLOWER
        self.lead: str | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = 0
        self._reset_timeout()
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, _Progress] = {}
        self._msgs: list[Message] = []
        self._need_bcast = False
        self._seq = 0
        self._pending_reads: list[_PendingRead] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self.transferee: str | None = None

    # ------------------------------------------------------------------ queries
    def is_voter(self) -> bool:
        return self.id in self.conf.voters

    def _quorum(self) -> int:
        return len(self.conf.voters) // 2 + 1

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    # ------------------------------------------------------------------ driver loop
    def has_ready(self) -> bool:
        """True when ``ready()`` would return any work."""
        self._flush()
        return bool(
            self._msgs
            or self.log.last_index() > self.stable
            or self._unstable_snapshot is not None
            or self._hard_state_to_persist() is not None
            or min(self.commit, self.log.last_index()) > self.applied
            or self._read_states
            or self._dropped_reads
        )

    def ready(self) -> Ready:
        """Collect pending work. The driver must not call ``ready()`` again before ``advance()``."""
        self._flush()
        first = max(self.stable + 1, self.log.first_index)
        last = self.log.last_index()
        entries = tuple(self.log.slice(first, last + 1))
        committed = tuple(self.log.slice(max(self.applied + 1, self.log.first_index), self.commit + 1))
        rd = Ready(
            hard_state=self._hard_state_to_persist(bool(entries) or self._unstable_snapshot is not None),
            snapshot=self._unstable_snapshot,
            entries=entries,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
            term_durable=self._persisted_hs.term == self.term and self._persisted_hs.vote == self.vote,
        )
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        return rd

    def _hard_state_to_persist(self, writing: bool = False) -> HardState | None:
        """The hard state when it must be written: a new term or vote always (they must be durable
        before any message that depends on them); a commit index alone only together with other
        writes (``writing``), since an fsync per commit advance would double a commit's disk
        work, and a restart recovers it from the leader and the applied index."""
        hs = self.hard_state()
        persisted = self._persisted_hs
        if hs.term != persisted.term or hs.vote != persisted.vote or (writing and hs != persisted):
            return hs
        return None

    def advance(self, rd: Ready) -> None:
        """Record that ``rd`` was persisted, sent and applied."""
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.snapshot is not None:
            if rd.snapshot is self._unstable_snapshot:
                self._unstable_snapshot = None
            self.applied = max(self.applied, rd.snapshot.meta.index)
            self.stable = max(self.stable, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            # a newer leader may have truncated these while they were being written
            if self.log.term(last.index) == last.term:
                self.stable = max(self.stable, last.index)
        if rd.committed_entries:
            self.applied = max(self.applied, rd.committed_entries[-1].index)
        if self.role == Role.LEADER and self._maybe_commit():
            self._need_bcast = True

    # ------------------------------------------------------------------ client calls
    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns (index, term). It is committed iff the entry applied at
        ``index`` has this term."""
        return self._propose(EntryKind.NORMAL, data)

    def _propose(self, kind: EntryKind, data: bytes) -> tuple[int, int]:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.lead)
        if self.transferee is not None:
            raise ProposalDroppedError("leadership transfer in progress")
        index = self.log.last_index() + 1
        self._append_local([Entry(index, self.term, kind, data)])
        return index, self.term

    def change_membership(self, op: ConfChangeOp, node: str, address: str = "") -> tuple[int, int]:
        """Propose a single-server membership change; returns (index, term) of the CONF entry.
        ``address`` (adds only) is where the member's peer API listens; a removal forgets it.

        Refused while another change is uncommitted, or before this leader committed an entry of
        its own term (the fix to single-server changes from Ongaro's 2015 errata).
        """
        if self.role != Role.LEADER:
            raise NotLeaderError(self.lead)
        if self._conf_index > self.commit:
            raise MembershipError("a membership change is already in progress")
        if self.log.term(self.commit) != self.term:
            raise MembershipError("the leader has not committed an entry in its term yet")
        voters, learners = set(self.conf.voters), set(self.conf.learners)
        if op == ConfChangeOp.ADD_VOTER and node not in voters:
            learners.discard(node)
            voters.add(node)
        elif op == ConfChangeOp.ADD_LEARNER and node not in voters | learners:
            learners.add(node)
        elif op == ConfChangeOp.PROMOTE and node in learners:
            learners.discard(node)
            voters.add(node)
        elif op == ConfChangeOp.REMOVE and node in voters | learners:
            voters.discard(node)
            learners.discard(node)
        else:
            raise MembershipError(f"cannot {op} {node} in {sorted(voters)} + learners {sorted(learners)}")
        if not voters:
            raise MembershipError("cannot remove the last voter")
        addresses = self.conf.address_map()
        if op == ConfChangeOp.REMOVE:
            addresses.pop(node, None)
        elif address:
            addresses[node] = address
        conf = ConfState(frozenset(voters), frozenset(learners), tuple(sorted(addresses.items())))
        return self._propose(EntryKind.CONF, conf.to_json())

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter ``to`` once its log is current; aborted after an election timeout."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.lead)
        if to == self.id:
            return
        if to not in self.conf.voters:
            raise MembershipError(f"{to} is not a voter")
        self.transferee = to
        self._election_elapsed = 0
        pr = self._progress[to]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, to))
        else:
            self._send_append(to, pr)

    def read_index(self, ctx: bytes) -> None:
        """Start a linearizable read; its ReadState (or a dropped ctx) comes out of ``ready()``."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.lead)
        self._pending_reads.append(_PendingRead(ctx))
        self._process_reads()

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Replace the log up to ``index`` (<= applied) with the state machine image ``data``."""
        if index > self.applied or index <= self.log.snapshot.meta.index:
            raise ValueError(f"cannot compact to {index} (applied {self.applied})")
        term = self.log.term(index)
        assert term is not None
        conf, _ = self.log.conf_at(index)
        snap = Snapshot(SnapshotMeta(index, term, conf), data)
        self.log.compact(snap)
        return snap

    # ------------------------------------------------------------------ time
    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._election_elapsed += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        elif self._election_elapsed >= self._timeout and self.is_voter():
            self._campaign(pre=True)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        if self._election_elapsed >= self.cfg.election_ticks:
            self._election_elapsed = 0
            active = sum(1 for v in self.conf.voters if v == self.id or self._active(v))
            if active < self._quorum():
                self._become_follower(self.term, None)  # check-quorum: we are probably partitioned
                return
            for pr in self._progress.values():
                pr.recent_active = False
            self.transferee = None
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for peer, pr in self._progress.items():
                if pr.state == _PeerState.SNAPSHOT:
                    pr.wait += 1
                    if pr.wait >= self.cfg.snapshot_resend_ticks:
                        self._send_snapshot(peer, pr)
                else:
                    self._send_append(peer, pr)
            self._need_bcast = False

    def _active(self, peer: str) -> bool:
        pr = self._progress.get(peer)
        return pr is not None and pr.recent_active

    def _reset_timeout(self) -> None:
        self._timeout = self._rng.randint(self.cfg.election_ticks, 2 * self.cfg.election_ticks - 1)

    # ------------------------------------------------------------------ role changes
    def _become_follower(self, term: int, lead: str | None) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        if self.role == Role.LEADER:
            self._dropped_reads.extend(r.ctx for r in self._pending_reads)
            self._pending_reads = []
            self._progress = {}
        self.role = Role.FOLLOWER
        self.lead = lead
        self.transferee = None
        self._election_elapsed = 0
        self._reset_timeout()

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if pre:
            self.role = Role.PRE_CANDIDATE
            ask_term = self.term + 1
        else:
            self.role = Role.CANDIDATE
            self.term += 1
            self.vote = self.id
            ask_term = self.term
        self.lead = None
        self._votes = {self.id: True}
        self._election_elapsed = 0
        self._reset_timeout()
        if self._quorum() <= 1:
            self._become_leader() if not pre else self._campaign(pre=False)
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for v in sorted(self.conf.voters):  # sorted: deterministic under hash randomisation
            if v != self.id:
                self._send(VoteRequest(ask_term, self.id, v, last_index, last_term, pre, transfer))

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.lead = self.id
        self.transferee = None
        self._heartbeat_elapsed = 0
        self._election_elapsed = 0
        nxt = self.log.last_index() + 1
        self._progress = {p: _Progress(nxt) for p in sorted(self.conf.members()) if p != self.id}
        self._append_local([Entry(nxt, self.term, EntryKind.NOOP)])

    # ------------------------------------------------------------------ log helpers
    def _append_local(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        if any(e.kind == EntryKind.CONF for e in entries):
            self._refresh_conf()
        self._need_bcast = True

    def _refresh_conf(self) -> None:
        self.conf, self._conf_index = self.log.conf_at(self.log.last_index())
        if self.role == Role.LEADER:
            members = self.conf.members()
            for p in list(self._progress):
                if p not in members:
                    del self._progress[p]
            for p in sorted(members):
                if p != self.id and p not in self._progress:
                    self._progress[p] = _Progress(self.log.last_index() + 1)
        if self.transferee is not None and self.transferee not in self.conf.voters:
            self.transferee = None

    def _maybe_commit(self) -> bool:
        matches = sorted(
            (self.stable if v == self.id else self._match(v) for v in self.conf.voters), reverse=True
        )
        if not matches:
            return False
        index = matches[self._quorum() - 1]
        # §5.4.2: only entries of the current term are committed by counting replicas
        if index <= self.commit or self.log.term(index) != self.term:
            return False
        self.commit = index
        if self.id not in self.conf.voters and self.commit >= self._conf_index:
            self._become_follower(self.term, None)  # we were removed; the change is now committed
            return False
        self._process_reads()
        return True

    def match_of(self, peer: str) -> int | None:
        """(Leader) the highest index known replicated on ``peer``; None when it is not tracked."""
        pr = self._progress.get(peer)
        return pr.match if pr is not None else None

    def _match(self, peer: str) -> int:
        pr = self._progress.get(peer)
        return pr.match if pr is not None else 0

    # ------------------------------------------------------------------ sending
    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _flush(self) -> None:
        if self._need_bcast and self.role == Role.LEADER:
            for peer, pr in self._progress.items():
                if pr.state != _PeerState.SNAPSHOT:
                    self._send_append(peer, pr)
        self._need_bcast = False

    def _send_append(self, peer: str, pr: _Progress) -> None:
        last = self.log.last_index()
        pr.next = min(pr.next, last + 1)
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            self._send_snapshot(peer, pr)
            return
        entries = tuple(self.log.slice(pr.next, min(last + 1, pr.next + self.cfg.max_entries_per_msg)))
        self._send(AppendRequest(self.term, self.id, peer, prev, prev_term, entries, self.commit, self._seq))
        if entries and pr.state == _PeerState.REPLICATE:
            pr.next = entries[-1].index + 1

    def _send_snapshot(self, peer: str, pr: _Progress) -> None:
        pr.state = _PeerState.SNAPSHOT
        pr.pending_snapshot = self.log.snapshot.meta.index
        pr.wait = 0
        self._send(SnapshotRequest(self.term, self.id, peer, self.log.snapshot, self._seq))

    # ------------------------------------------------------------------ receiving
    def step(self, msg: Message) -> None:
        """Handle one message from a peer (duplicates, reordering and staleness are tolerated)."""
        if msg.to != self.id:
            return
        if msg.term > self.term:
            if isinstance(msg, VoteRequest):
                in_lease = self.lead is not None and self._election_elapsed < self.cfg.election_ticks
                if in_lease and not msg.transfer:
                    return  # we heard from a live leader recently: do not let a stray node disrupt it
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote carries the term we would campaign in, not the voter's
            else:
                lead = msg.frm if isinstance(msg, AppendRequest | SnapshotRequest) else None
                self._become_follower(msg.term, lead)
        elif msg.term < self.term:
            if isinstance(msg, AppendRequest | SnapshotRequest):
                # tell a deposed leader about the newer term (it may be cut off from everyone else)
                self._send(AppendResponse(self.term, self.id, msg.frm, False))
            elif isinstance(msg, VoteRequest) and msg.pre_vote:
                self._send(VoteResponse(self.term, self.id, msg.frm, False, pre_vote=True))
            return

        if isinstance(msg, AppendRequest | SnapshotRequest):
            if self.role != Role.FOLLOWER:
                self._become_follower(msg.term, msg.frm)
            self.lead = msg.frm
            self._election_elapsed = 0
            if isinstance(msg, AppendRequest):
                self._handle_append(msg)
            else:
                self._handle_snapshot(msg)
        elif isinstance(msg, AppendResponse):
            if self.role == Role.LEADER:
                self._handle_append_response(msg)
        elif isinstance(msg, VoteRequest):
            self._handle_vote(msg)
        elif isinstance(msg, VoteResponse):
            self._handle_vote_response(msg)
        elif isinstance(msg, TimeoutNow) and self.is_voter() and self.role != Role.LEADER:
            self._campaign(pre=False, transfer=True)

    def _handle_vote(self, msg: VoteRequest) -> None:
        can_vote = (
            self.vote == msg.frm
            or (self.vote is None and self.lead is None)
            or (msg.pre_vote and msg.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(msg.last_index, msg.last_term):
            if msg.pre_vote:
                self._send(VoteResponse(msg.term, self.id, msg.frm, True, pre_vote=True))
            else:
                self.vote = msg.frm
                self._election_elapsed = 0
                self._send(VoteResponse(self.term, self.id, msg.frm, True))
        else:
            self._send(VoteResponse(self.term, self.id, msg.frm, False, pre_vote=msg.pre_vote))

    def _handle_vote_response(self, msg: VoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self.role != expected or msg.frm not in self.conf.voters:
            return
        self._votes[msg.frm] = msg.granted
        granted = sum(1 for v, g in self._votes.items() if g and v in self.conf.voters)
        if granted >= self._quorum():
            if msg.pre_vote:
                self._campaign(pre=False)
            else:
                self._become_leader()
        elif len(self._votes) - granted >= self._quorum():
            self._become_follower(self.term, None)

    def _handle_append(self, msg: AppendRequest) -> None:
        if msg.prev_index < self.commit:
            self._reply_ok(msg.frm, self.commit, msg.seq)
            return
        if self.log.term(msg.prev_index) == msg.prev_term:
            truncated = self.log.append(msg.entries)
            if truncated is not None:
                self.stable = min(self.stable, truncated - 1)
            if truncated is not None or any(e.kind == EntryKind.CONF for e in msg.entries):
                self._refresh_conf()
            last_new = msg.prev_index + len(msg.entries)
            self.commit = max(self.commit, min(msg.commit, last_new))
            self._reply_ok(msg.frm, last_new, msg.seq)
            return
        last = self.log.last_index()
        if msg.prev_index > last:
            hint_index, hint_term = last + 1, 0
        else:
            hint_term = self.log.term(msg.prev_index) or 0
            hint_index = self.log.first_index_of_term(msg.prev_index)
        self._send(
            AppendResponse(
                self.term, self.id, msg.frm, False, 0, msg.prev_index, hint_index, hint_term, msg.seq
            )
        )

    def _reply_ok(self, to: str, match: int, seq: int) -> None:
        self._send(AppendResponse(self.term, self.id, to, True, match, seq=seq))

    def _handle_snapshot(self, msg: SnapshotRequest) -> None:
        meta = msg.snapshot.meta
        if meta.index <= self.commit:
            self._reply_ok(msg.frm, self.commit, msg.seq)
            return
        if self.log.term(meta.index) == meta.term:
            self.commit = meta.index  # we already hold that prefix; no need to restore
        else:
            self.log = RaftLog(msg.snapshot, [])
            self.stable = min(self.stable, meta.index)
            self._unstable_snapshot = msg.snapshot
            self.commit = meta.index
            self._refresh_conf()
        self._reply_ok(msg.frm, meta.index, msg.seq)

    def _handle_append_response(self, msg: AppendResponse) -> None:
        pr = self._progress.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        if msg.seq > pr.acked_seq:
            pr.acked_seq = msg.seq
            self._process_reads()
        if msg.success:
            if msg.match_index > pr.match:
                pr.match = msg.match_index
                pr.next = max(pr.next, pr.match + 1)
                if pr.state == _PeerState.PROBE or (
                    pr.state == _PeerState.SNAPSHOT and pr.match >= pr.pending_snapshot
                ):
                    pr.state = _PeerState.REPLICATE
                if self._maybe_commit():
                    self._need_bcast = True
                if self.role != Role.LEADER:
                    return
                if self.transferee == msg.frm and pr.match == self.log.last_index():
                    self._send(TimeoutNow(self.term, self.id, msg.frm))
            if pr.state != _PeerState.SNAPSHOT and pr.next <= self.log.last_index():
                self._send_append(msg.frm, pr)
            return
        if pr.match >= msg.prev_index or pr.state == _PeerState.SNAPSHOT:
            return  # stale rejection
        hint = msg.conflict_index
        if msg.conflict_term > 0:
            last_of_term = self.log.last_index_of_term(msg.conflict_term, msg.prev_index)
            if last_of_term is not None:
                hint = last_of_term + 1
        pr.next = max(pr.match + 1, min(hint, msg.prev_index))
        pr.state = _PeerState.PROBE
        self._send_append(msg.frm, pr)

    # ------------------------------------------------------------------ read index
    def _process_reads(self) -> None:
        if self.role != Role.LEADER or not self._pending_reads:
            return
        # a new leader does not know the commit index until an entry of its own term commits
        if self.log.term(self.commit) != self.term:
            return
        fresh = [r for r in self._pending_reads if r.seq == -1]
        if fresh:
            self._seq += 1
            for r in fresh:
                r.index, r.seq = self.commit, self._seq
            for peer, pr in self._progress.items():
                if pr.state != _PeerState.SNAPSHOT:
                    self._send_append(peer, pr)
        acks = sorted(
            (
                self._seq if v == self.id else (p.acked_seq if (p := self._progress.get(v)) else 0)
                for v in self.conf.voters
            ),
            reverse=True,
        )
        confirmed = acks[self._quorum() - 1] if acks else 0
        while self._pending_reads and 0 <= self._pending_reads[0].seq <= confirmed:
            r = self._pending_reads.pop(0)
            self._read_states.append(ReadState(r.index, r.ctx))
