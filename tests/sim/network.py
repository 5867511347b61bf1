"""Simulated network: per-message delay, drops, duplicates and directed partitions."""

from __future__ import annotations

import random
from collections.abc import Callable

from hvd.cluster.raft.messages import Message


class SimNetwork:
    """Delivers messages through the simulator's event queue with seeded faults.

    ``blocked`` holds directed (from, to) pairs that currently lose everything, which models
    symmetric partitions, one-way partitions and isolated leaders alike.
    """

    def __init__(self, rng: random.Random, schedule: Callable[[int, Callable[[], None]], None]) -> None:
        self.rng = rng
        self.schedule = schedule
        self.blocked: set[tuple[str, str]] = set()
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.min_delay = 1
        self.max_delay = 8
        self.slow_rate = 0.0  # fraction of messages delayed a lot (reordering across rounds)
        self.deliver: Callable[[Message], None] = lambda m: None
        self.sent = 0
        # scenario hook: returns the message to deliver (possibly rewritten) or None to drop it
        self.filter: Callable[[Message], Message | None] | None = None

    def send(self, msg: Message) -> None:
        self.sent += 1
        if (msg.frm, msg.to) in self.blocked:
            return
        if self.filter is not None:
            filtered = self.filter(msg)
            if filtered is None:
                return
            msg = filtered
        rng = self.rng
        if self.drop_rate and rng.random() < self.drop_rate:
            return
        copies = 2 if self.dup_rate and rng.random() < self.dup_rate else 1
        for _ in range(copies):
            delay = rng.randint(self.min_delay, self.max_delay)
            if self.slow_rate and rng.random() < self.slow_rate:
                delay += rng.randint(20, 150)
            self.schedule(delay, lambda m=msg: self._arrive(m))  # type: ignore[misc]

    def _arrive(self, msg: Message) -> None:
        # a partition that starts while the message is in flight still cuts it
        if (msg.frm, msg.to) not in self.blocked:
            self.deliver(msg)

    def partition(self, side_a: set[str], side_b: set[str]) -> None:
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                self.blocked.add((b, a))

    def block_one_way(self, frm: str, to: str) -> None:
        self.blocked.add((frm, to))

    def heal(self) -> None:
        self.blocked.clear()
