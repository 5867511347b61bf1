"""How Raft messages travel between hosts.

The production transport (HTTP over the daemon's peer routes) implements ``Transport`` later;
``InMemoryNetwork`` connects drivers inside one process for tests, through the JSON wire form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from hvd.cluster.raft.messages import Message, decode_message, encode_message

Receiver = Callable[[Message], None]


class Transport(Protocol):
    """Best-effort, unordered delivery: Raft tolerates loss, duplicates and reordering."""

    def send(self, to: str, msg: Message) -> None:
        """Queue ``msg`` for peer ``to`` without blocking (called on the event loop); must not raise
        for an unreachable peer (just drop)."""
        ...

    def set_receiver(self, receiver: Receiver) -> None:
        """Register the callback invoked (on the event loop) for each message that arrives."""
        ...


class InMemoryNetwork:
    """A process-local network; ``blocked`` holds directed (from, to) pairs that lose messages."""

    def __init__(self) -> None:
        self._receivers: dict[str, Receiver] = {}
        self.blocked: set[tuple[str, str]] = set()

    def endpoint(self, node_id: str) -> InMemoryTransport:
        return InMemoryTransport(self, node_id)

    def isolate(self, node_id: str) -> None:
        for other in self._receivers:
            if other != node_id:
                self.blocked |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.blocked.clear()

    def _deliver(self, frm: str, to: str, data: bytes) -> None:
        receiver = self._receivers.get(to)
        if receiver is not None and (frm, to) not in self.blocked:
            receiver(decode_message(data))


class InMemoryTransport:
    """One node's view of an ``InMemoryNetwork``."""

    def __init__(self, network: InMemoryNetwork, node_id: str) -> None:
        self._net = network
        self._id = node_id

    def send(self, to: str, msg: Message) -> None:
        data = encode_message(msg)  # exercise the wire format, and never share mutable state
        asyncio.get_running_loop().call_soon(self._net._deliver, self._id, to, data)

    def set_receiver(self, receiver: Receiver) -> None:
        self._net._receivers[self._id] = receiver
