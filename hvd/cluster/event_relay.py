"""The whole cluster's events on every host's /v1/events.

While at least one client listens on this host, the relay follows every other host's own
events over a signed peer stream (``GET /internal/v1/events``, one JSON event per line) and
delivers them to this host's bus; when the last client leaves, the streams close. A host that
cannot be reached is retried with backoff; new hosts are picked up from the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
from aiohttp import web

from hvd.catalog.service import Catalog
from hvd.cluster.peers import PeerCaller, PeerErrors
from hvd.errors import HvdError
from hvd.events import EventBus

log = logging.getLogger(__name__)

STREAM_PATH = "/internal/v1/events"
RESCAN_S = 5.0  # how often the set of hosts to follow is read again
KEEPALIVE_S = 10.0


class EventRelay:
    """Follows the other hosts' events while this host has listeners."""

    def __init__(self, bus: EventBus, peers: PeerCaller, catalog: Catalog) -> None:
        self.bus = bus
        self.peers = peers
        self.catalog = catalog
        self._main: asyncio.Task[None] | None = None
        self._streams: dict[str, asyncio.Task[None]] = {}

    def install(self) -> None:
        self.bus.on_demand = self._demand

    def _demand(self, wanted: bool) -> None:
        if wanted and self._main is None:
            self._main = asyncio.ensure_future(self._follow_all())
        elif not wanted and self._main is not None:
            self._main.cancel()
            self._main = None

    async def close(self) -> None:
        self.bus.on_demand = None
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None

    async def _follow_all(self) -> None:
        try:
            while True:
                hosts = await self.catalog.read(lambda c: [r[0] for r in c.execute("SELECT name FROM hosts")])
                for host in hosts:
                    if host != self.peers.host and host not in self._streams:
                        self._streams[host] = asyncio.ensure_future(self._follow(host))
                await asyncio.sleep(RESCAN_S)
        finally:
            for task in self._streams.values():
                task.cancel()
            await asyncio.gather(*self._streams.values(), return_exceptions=True)
            self._streams.clear()

    async def _follow(self, host: str) -> None:
        delay = 0.5
        while True:
            try:
                base = await self.peers.url_of(host)
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=KEEPALIVE_S * 3)
                headers = self.peers.signed("GET", STREAM_PATH, b"")
                async with self.peers.session.get(base + STREAM_PATH, headers=headers, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    delay = 0.5
                    async for line in resp.content:
                        if line.strip():
                            self.bus.deliver(json.loads(line))
            except (*PeerErrors, HvdError, ValueError) as exc:
                log.debug("event stream from %s: %s", host, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def serve_stream(request: web.Request, bus: EventBus) -> web.StreamResponse:
    """Peer side: this host's own events, one JSON document per line (a blank line keeps alive)."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        async with bus.subscribe(local_only=True) as queue:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b"\n")
                    continue
                await response.write(json.dumps(event, default=str).encode() + b"\n")
    return response
