"""The interface the Raft driver applies committed commands to (the catalog implements it)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class StateMachine(Protocol):
    """A deterministic, durable state machine.

    ``apply`` must record ``index`` atomically with its effect, so that after a crash
    ``applied_index()`` says exactly which commands took effect (never twice, never half).
    """

    def applied_index(self) -> int:
        """Index of the last applied command (0 when empty)."""
        ...

    def apply(self, index: int, data: bytes) -> bytes:
        """Apply the command at ``index``; deterministic; errors are encoded in the result bytes."""
        ...

    def snapshot(self) -> tuple[int, bytes]:
        """(applied index, opaque image) of the current state."""
        ...

    def restore(self, index: int, data: bytes) -> None:
        """Replace the whole state with an image taken at ``index``."""
        ...


@runtime_checkable
class BatchStateMachine(StateMachine, Protocol):
    """Optional: a state machine that applies several committed commands in one atomic step
    (e.g. one SQLite transaction), so group commit also saves the state machine's commits."""

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        """Apply ``(index, data)`` pairs in order, atomically with the last index; one result each."""
        ...
