"""Errors raised by the Raft node and driver."""

from __future__ import annotations


class RaftError(Exception):
    """Base of all Raft errors."""


class NotLeaderError(RaftError):
    """This node cannot serve the request; ``leader_id`` is its best guess of who can (or None)."""

    def __init__(self, leader_id: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(RaftError):
    """The proposal was not appended, or was overwritten by another leader: it will never commit."""


class MembershipError(RaftError):
    """A membership change or leadership transfer was refused (see message)."""


class OutcomeUnknownError(RaftError):
    """The proposal may or may not have been applied (e.g. it was covered by an installed snapshot,
    or the driver stopped while waiting); the caller must re-read state before retrying."""


class StorageFullError(RaftError):
    """This node's disk is full: the proposal was not appended (retry once space is back)."""


class LoopStoppedError(RaftError):
    """This node's Raft loop stopped for good (see the log); the process is about to exit."""
