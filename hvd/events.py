"""An in-process event bus for `/v1/events` (server-sent events) and tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

Event = dict[str, Any]


class EventBus:
    """Fan-out of events to subscribers; a slow subscriber loses its oldest events, never blocks.

    Events published here carry ``host`` (this host's name); events relayed from other hosts
    (``deliver``) keep theirs. ``local_only`` subscribers (the peer stream other hosts relay
    from) see this host's own events only, so no event travels twice. ``on_demand`` is told
    whether anyone besides local-only subscribers listens (the relay follows other hosts then).
    """

    def __init__(self, queue_size: int = 1000, host: str = "") -> None:
        self._subscribers: dict[asyncio.Queue[Event], bool] = {}  # queue -> local only
        self._queue_size = queue_size
        self.host = host
        self.on_demand: Callable[[bool], None] | None = None
        self.streams: dict[str, int] = {}  # user id -> open /v1/events streams (bounded by the API)

    def publish(self, kind: str, **fields: Any) -> None:
        self._fan_out({"type": kind, "time": time.time(), "host": self.host, **fields}, relayed=False)

    def deliver(self, event: Event) -> None:
        """An event another host published (relayed): only cluster-wide subscribers get it."""
        self._fan_out(event, relayed=True)

    def _fan_out(self, event: Event, relayed: bool) -> None:
        for queue, local_only in self._subscribers.items():
            if relayed and local_only:
                continue
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def listeners(self) -> int:
        """Subscribers that want the whole cluster's events."""
        return sum(1 for local_only in self._subscribers.values() if not local_only)

    @contextlib.asynccontextmanager
    async def subscribe(self, local_only: bool = False) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers[queue] = local_only
        if not local_only and self.listeners() == 1 and self.on_demand is not None:
            self.on_demand(True)
        try:
            yield queue
        finally:
            del self._subscribers[queue]
            if not local_only and self.listeners() == 0 and self.on_demand is not None:
                self.on_demand(False)
