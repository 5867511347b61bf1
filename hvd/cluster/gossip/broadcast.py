"""Piggy-backed dissemination: a queue of messages each sent a limited number of times."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


def wire_size(message: dict[str, Any]) -> int:
    """Bytes the message takes inside a packet's JSON list (plus its separator)."""
    return len(json.dumps(message, separators=(",", ":"))) + 1


@dataclass
class _Item:
    key: str
    message: dict[str, Any]
    size: int
    order: int
    transmits: int = 0


class BroadcastQueue:
    """Messages about members, at most one per member (a newer one replaces the older), handed out
    fewest-transmits-first (newest first among equals) until each has been sent ``limit`` times."""

    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, message: dict[str, Any]) -> None:
        """Queue ``message`` about member ``key``, replacing what was queued about it."""
        self._order += 1
        self._items[key] = _Item(key, message, wire_size(message), self._order)

    def take(self, budget: int, limit: int, fresh_packet: bool = False) -> list[dict[str, Any]]:
        """Messages fitting in ``budget`` bytes; each taken counts as one transmission. In a
        ``fresh_packet`` a message bigger than the whole budget goes alone (a big report would
        otherwise never leave; the kernel fragments it)."""
        if not self._items:
            return []
        out: list[dict[str, Any]] = []
        for item in sorted(self._items.values(), key=lambda i: (i.transmits, -i.order)):
            if item.size > budget and not (fresh_packet and not out):
                continue
            budget -= item.size
            out.append(item.message)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
            if budget <= 0:
                break
        return out
