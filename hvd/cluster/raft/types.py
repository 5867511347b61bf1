"""Public value types of the Raft node: roles, configuration, Ready and read states."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hvd.cluster.raft.messages import Entry, HardState, Message, Snapshot


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
    messages: tuple[Message, ...]  # send only after the above is durable
    committed_entries: tuple[Entry, ...]  # apply in order (NORMAL only reach the state machine)
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[bytes, ...]  # ctx of read_index calls aborted by losing leadership
