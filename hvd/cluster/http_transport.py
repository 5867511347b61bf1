"""Raft messages and peer calls over the daemons' signed ``/internal/v1`` routes.

Raft messages to a peer go through a per-peer outbox drained by one sender task into a long-lived
stream: while one frame is being written the next messages queue up and leave together in the
following frame (newline-separated JSON). That keeps them in order per peer (Raft tolerates
reordering, but a reordered append costs a rejection and a retry) and lets the number of frames
fall as the load grows. Forwarded proposals and read-index calls are plain signed POSTs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque

import aiohttp

from hvd.cluster.keys import KeySource, key_source
from hvd.cluster.peer_auth import NONCE_HEADER, FrameSealer, sign_headers
from hvd.cluster.raft.messages import Message, SnapshotRequest, decode_message, encode_message
from hvd.cluster.raft.transport import Receiver
from hvd.cluster.tls import peer_scheme

log = logging.getLogger(__name__)

STREAM_PATH = "/internal/v1/raft/stream"
PROPOSE_PATH = "/internal/v1/raft/propose"
READ_INDEX_PATH = "/internal/v1/raft/read-index"
STATUS_PATH = "/internal/v1/cluster/status"
MEMBERSHIP_PATH = "/internal/v1/cluster/membership"
APPLIED_HEADER = "X-Hvd-Applied-Index"  # on a forwarded write: wait for this before reading locally

MAX_BATCH = 256  # messages per frame, so a backlog after an outage does not become one huge frame
PeerErrors = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def encode_batch(messages: list[Message]) -> bytes:
    """Newline-separated JSON messages (JSON text never holds a raw newline)."""
    return b"\n".join(encode_message(m) for m in messages)


def decode_batch(body: bytes) -> list[Message]:
    """Inverse of :func:`encode_batch`; raises ValueError/KeyError/TypeError on malformed input."""
    return [decode_message(line) for line in body.split(b"\n") if line]


class PeerClient:
    """Signed HTTP calls to other members (one aiohttp session, created on ``start``)."""

    def __init__(self, node_id: str, peers: dict[str, str], key: bytes | KeySource,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``key``: the peer HMAC key, or this host's PeerKeys (keys.py: which key signs follows the
        cluster's protocol level); ``ssl_context``: the cluster's client TLS context."""
        self.node_id = node_id
        self._keys = key_source(key)
        self._ssl = ssl_context
        self.peers: dict[str, str] = {}
        self.set_peers(peers)
        self._session: aiohttp.ClientSession | None = None

    def set_peers(self, peers: dict[str, str]) -> None:
        """Replace the member -> URL map (membership changed); this node itself is left out. The
        scheme follows this host's TLS setting (the log may hold addresses from before TLS)."""
        tls = self._ssl is not None
        self.peers = {p: peer_scheme(url.rstrip("/"), tls) for p, url in peers.items() if p != self.node_id and url}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit_per_host=32, ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def signing_key(self) -> bytes:
        """The key requests and new streams are signed with now."""
        return self._keys.signing()

    async def open_stream(self, peer: str, path: str, timeout: float,
                          heartbeat: float) -> tuple[aiohttp.ClientWebSocketResponse, FrameSealer]:
        """Open a signed WebSocket stream to ``peer``; returns it with the sealer for its frames."""
        if self._session is None:
            raise aiohttp.ClientConnectionError("peer client is closed")
        key = self._keys.signing()
        headers = sign_headers(key, self.node_id, "GET", path, b"")
        ws = await self._session.ws_connect(self.peers[peer] + path, headers=headers, heartbeat=heartbeat,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                                            max_msg_size=0)
        return ws, FrameSealer(key, headers[NONCE_HEADER])

    async def probe(self, url: str, path: str, timeout: float) -> tuple[int, bytes]:
        """Signed GET of ``url + path`` on a host that is not a member yet (a joining node)."""
        if self._session is None:
            raise aiohttp.ClientConnectionError("peer client is closed")
        headers = sign_headers(self._keys.signing(), self.node_id, "GET", path, b"")
        async with self._session.get(url.rstrip("/") + path, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()

    async def post(self, peer: str, path: str, body: bytes, timeout: float) -> tuple[int, bytes, int]:
        """POST ``body`` to ``peer``; returns (status, body, the peer's applied index when it names
        one). Raises KeyError for an unknown peer, aiohttp/OS/timeout errors when it is unreachable."""
        url = self.peers[peer]
        if self._session is None:
            raise aiohttp.ClientConnectionError("peer client is closed")
        headers = sign_headers(self._keys.signing(), self.node_id, "POST", path, body)
        headers["Content-Type"] = "application/octet-stream"
        async with self._session.post(url + path, data=body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            out = await resp.read()
            return resp.status, out, int(resp.headers.get(APPLIED_HEADER, "0"))


class HttpTransport:
    """The Raft ``Transport``: one outgoing WebSocket stream per peer at ``GET /internal/v1/raft/stream``.

    The stream is opened by a signed request; every frame on it is a batch of messages sealed with
    the stream's frame MAC (see ``peer_auth``). A stream costs one HTTP request per connection
    instead of one per batch, which is most of what a Raft round costs in CPU. Every failure is a
    drop and a reconnect: Raft re-sends on the next heartbeat.
    """

    def __init__(self, client: PeerClient, *, send_timeout: float = 1.0, max_queue: int = 4096,
                 heartbeat: float = 5.0) -> None:
        self._client = client
        self._send_timeout = send_timeout
        self._max_queue = max_queue
        self._heartbeat = heartbeat  # WebSocket ping interval: notices a silently dead peer
        self._receiver: Receiver = lambda m: None
        self._outbox: dict[str, deque[Message]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self.dropped = 0  # messages lost to full queues or broken streams (a hint for operators)

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        self._running = False
        for peer in list(self._tasks):
            await self.forget(peer)

    def streams(self) -> set[str]:
        """Peers this transport currently keeps a stream (or its queue) for."""
        return set(self._tasks)

    async def forget(self, peer: str) -> None:
        """Close the stream to a peer that left the cluster and drop what was queued for it."""
        task = self._tasks.pop(peer, None)
        self._outbox.pop(peer, None)
        self._wake.pop(peer, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def send(self, to: str, msg: Message) -> None:
        if not self._running or to not in self._client.peers:
            return
        queue = self._outbox.get(to)
        if queue is None:  # the first message to this peer opens its stream (followers only talk to the leader)
            queue = self._outbox[to] = deque()
            self._wake[to] = asyncio.Event()
            self._tasks[to] = asyncio.create_task(self._stream(to), name=f"raft-send-{to}")
        if len(queue) >= self._max_queue:
            queue.popleft()  # the oldest is the least useful; Raft re-sends what matters
            self.dropped += 1
        queue.append(msg)
        self._wake[to].set()

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def deliver(self, messages: list[Message]) -> None:
        """Hand messages received by the peer route to Raft (on the event loop)."""
        for msg in messages:
            self._receiver(msg)

    async def _stream(self, peer: str) -> None:
        """Keep a stream to ``peer`` open and drain its outbox into it, reconnecting on failure."""
        queue, wake = self._outbox[peer], self._wake[peer]
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self._send_timeout):
                    ws, sealer = await self._client.open_stream(peer, STREAM_PATH, self._send_timeout,
                                                                self._heartbeat)
            except (*PeerErrors, KeyError) as exc:  # KeyError: the peer's address is gone
                failures += 1
                self._drop(queue)
                if failures in (1, 100):  # a dead peer would otherwise log every heartbeat
                    log.info("peer %s unreachable (%s); dropping raft messages until it answers",
                             peer, _describe(exc))
                await asyncio.sleep(min(0.05 * failures, 0.2))  # heartbeats refill the outbox meanwhile
                continue
            if failures:
                log.info("raft stream to peer %s open again", peer)
            failures = 0
            # the reader answers pings and notices the peer closing; it wakes the writer to reconnect
            reader = asyncio.create_task(_read_until_closed(ws, wake))
            try:
                while not ws.closed:
                    if queue and sealer.key != self._client.signing_key():
                        # the cluster's protocol level changed the peer key: reopen signed with the new one
                        log.info("raft stream to peer %s: reopening it with the current peer key", peer)
                        break
                    while queue and not ws.closed:
                        batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
                        if any(isinstance(m, SnapshotRequest) for m in batch):
                            # a whole catalog: encoding and sealing it here would stall heartbeats
                            frame = await asyncio.to_thread(_frame, sealer, batch)
                        else:
                            frame = _frame(sealer, batch)
                        async with asyncio.timeout(self._send_timeout):
                            await ws.send_bytes(frame)
                    await wake.wait()
                    wake.clear()
            except PeerErrors as exc:
                log.info("raft stream to peer %s broke (%s); reconnecting", peer, _describe(exc))
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, *PeerErrors):
                    await ws.close()
                    await reader
            self._drop(queue)

    def _drop(self, queue: deque[Message]) -> None:
        self.dropped += len(queue)
        queue.clear()


def _frame(sealer: FrameSealer, batch: list[Message]) -> bytes:
    return sealer.seal(encode_batch(batch))


async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse, wake: asyncio.Event) -> None:
    try:
        while not ws.closed:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
    finally:
        wake.set()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
