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
