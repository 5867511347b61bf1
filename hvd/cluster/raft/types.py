"""Public value types of the Raft node: roles, configuration, Ready and read states."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hvd.cluster.raft.messages import AppendRequest, Entry, HardState, Message, Snapshot, SnapshotRequest, TimeoutNow


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ConfChangeOp(StrEnum):
    ADD_VOTER = "add_voter"
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timing and batching knobs, in ticks (the driver chooses the tick length)."""

    id: str
    election_ticks: int = 10  # randomized timeout is drawn from [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1  # must be well below election_ticks
    max_entries_per_msg: int = 64  # bounds catch-up message size
    snapshot_resend_ticks: int = 5  # heartbeats to wait before re-sending a possibly lost snapshot


@dataclass(frozen=True, slots=True)
class ReadState:
    """Read-index result: once ``applied >= index`` a local read reflects every write before ``ctx``."""

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Work for the driver; process in field order, then call ``advance(rd)``."""

    hard_state: HardState | None  # persist when not None (changed)
    snapshot: Snapshot | None  # persist and restore into the state machine (from a leader)
    entries: tuple[Entry, ...]  # persist: replaces any stored entries at index >= entries[0].index
    messages: tuple[Message, ...]  # send only after the above is durable (except ``before_persist()``)
    committed_entries: tuple[Entry, ...]  # apply in order (NORMAL only reach the state machine)
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[bytes, ...]  # ctx of read_index calls aborted by losing leadership
    term_durable: bool = True  # the current term and vote are already on disk (not in hard_state)

    def before_persist(self) -> tuple[Message, ...]:
        """Messages that may leave before this Ready is durable: a leader's appends, snapshots and
        TimeoutNow (Raft thesis §10.2.1, the leader writes its log in parallel with replication),
        once its term and vote are durable (a sole voter becomes leader in the same step as it
        takes the term). The leader counts its own log towards a commit only once persisted
        (``stable``). Votes and replies always wait for the disk."""
        if not self.term_durable:
            return ()
        return tuple(m for m in self.messages if isinstance(m, _LEADER_MESSAGES))

    def after_persist(self) -> tuple[Message, ...]:
        """The other messages: they promise durability of what this Ready holds."""
        if not self.term_durable:
            return self.messages
        return tuple(m for m in self.messages if not isinstance(m, _LEADER_MESSAGES))


_LEADER_MESSAGES = (AppendRequest, SnapshotRequest, TimeoutNow)
