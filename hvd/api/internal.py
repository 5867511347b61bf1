"""Peer routes under /internal/v1: the Raft message stream, forwarded proposals, read-index, status.

With [tls] enabled, every /internal route but the two of internal_join.py refuses a connection
that presented no client certificate (the handshake already checked a presented one against the
cluster CA): mutual TLS; and a request whose certificate is revoked or names another node than
the one the request claims (hvd/cluster/cert_trust.py). The auth middleware lets /internal/ through
without a user token, so every handler here also checks the peer signature (HMAC-SHA256 with a key
derived from the cluster key, time window, replay cache) and answers 401 before doing anything. These routes are
not in the public OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web

from hvd.api import internal_join
from hvd.api.internal_join import JoinSigner
from hvd.api.middleware import error_body, error_middleware, request_id_middleware
from hvd.api.routing import Handler
from hvd.catalog.state import encode_result
from hvd.cluster.cert_trust import PeerTrust
from hvd.cluster.coordinator import MEMBERSHIP_TIMEOUT_S, RaftCoordinator, routing_error_response
from hvd.cluster.gossip.service import PUSH_PULL_PATH, GossipService
from hvd.cluster.http_transport import (
    APPLIED_HEADER,
    MEMBERSHIP_PATH,
    PROPOSE_PATH,
    READ_INDEX_PATH,
    STATUS_PATH,
    STREAM_PATH,
    decode_batch,
)
from hvd.cluster.peer_auth import NODE_HEADER, FrameOpener, PeerAuthError, PeerVerifier
from hvd.cluster.raft.messages import Message
from hvd.cluster.tls import presented_client_cert
from hvd.errors import BadRequest, HvdError, NotLeader, PayloadTooLarge, ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)

MAX_PEER_BODY = 512 * 1024 * 1024  # a stream frame: a Raft snapshot carries the whole catalog
MAX_PEER_REQUEST = 16 * 1024 * 1024  # a forwarded command (the largest holds an instance's user data)
PRE_AUTH_READERS = 4  # concurrent reads of big unauthenticated peer bodies
SMALL_PEER_BODY = 64 * 1024  # read without waiting for a pre-auth slot


@dataclass
class PeerEndpoint:
    """What the peer routes serve: this member's coordinator and the shared replay cache."""

    coordinator: RaftCoordinator
    verifier: PeerVerifier | None  # None when no cluster_key is set: every peer request is refused
    gossip: GossipService | None = None  # set once gossip runs: serves push-pull state syncs
    require_client_cert: bool = False  # [tls] enabled: peer routes are mutual TLS
    join: JoinSigner | None = None  # [tls] enabled: joining hosts get certificates here
    trust: PeerTrust | None = None  # [tls] enabled: the client certificate must be the claimed node's
    # bodies are read before their signature can be checked: at most this many big ones at once,
    # so anonymous requests can buffer at most PRE_AUTH_READERS x MAX_PEER_REQUEST bytes
    pre_auth: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PRE_AUTH_READERS))


PEER = web.AppKey("hvd.peer", PeerEndpoint)
STREAMS = web.AppKey("hvd.peer_streams", set[web.WebSocketResponse])  # per app: each closes its own
LARGE_FRAME = 1 << 20  # frames above this are checked and decoded in a worker thread
STREAM_HEARTBEAT_S = 5.0  # WebSocket pings notice a sender that vanished without closing
PEER_SERVICE = "peer"  # key of the PeerEndpoint in ApiServices.extra


async def _authenticated_body(request: web.Request) -> bytes:
    """The body of a signed peer request, read only after every check the headers allow (time
    window, replay) and within MAX_PEER_REQUEST; raises Unauthorized or PayloadTooLarge."""
    endpoint = request.app[PEER]
    if endpoint.verifier is None:
        raise Unauthorized("this host has no cluster_key: peer requests are refused")
    try:  # cheap refusals before reading an anonymous body
        endpoint.verifier.precheck(request.headers)
    except PeerAuthError as exc:
        raise Unauthorized(f"peer authentication failed: {exc}") from exc
    length = request.content_length
    if length is not None and length > MAX_PEER_REQUEST:
        raise PayloadTooLarge(f"peer request bodies are limited to {MAX_PEER_REQUEST} bytes")
    if length is not None and length <= SMALL_PEER_BODY:
        body = await _read_body(request, length)
    else:
        async with endpoint.pre_auth:
            body = await _read_body(request, length)
    try:
        endpoint.verifier.verify(request.method, request.path, request.headers, body)
    except PeerAuthError as exc:
        raise Unauthorized(f"peer authentication failed: {exc}") from exc
    return body


async def _read_body(request: web.Request, length: int | None) -> bytes:
    if length == 0:
        return b""
    if length is not None:
        return await request.content.readexactly(length)  # one call: the body is usually buffered already
    chunks = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        chunks += chunk
        if len(chunks) > MAX_PEER_REQUEST:
            raise PayloadTooLarge(f"peer request bodies are limited to {MAX_PEER_REQUEST} bytes")
    return bytes(chunks)


async def raft_stream(request: web.Request) -> web.StreamResponse:
    """A peer's stream of Raft message batches: signed at opening, every frame sealed (peer_auth)."""
    endpoint = request.app[PEER]
    if endpoint.verifier is None:
        raise Unauthorized("this host has no cluster_key: peer requests are refused")
    try:
        node, frames = endpoint.verifier.open_stream(request.method, request.path, request.headers)
    except PeerAuthError as exc:
        raise Unauthorized(f"peer authentication failed: {exc}") from exc
    ws = web.WebSocketResponse(max_msg_size=MAX_PEER_BODY, heartbeat=STREAM_HEARTBEAT_S)
    await ws.prepare(request)
    streams = request.app[STREAMS]
    streams.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                break
            data = msg.data
            if len(data) > LARGE_FRAME:  # a snapshot: checking and decoding it here would stall heartbeats
                messages = await asyncio.to_thread(_open_frame, frames, data)
            else:
                messages = _open_frame(frames, data)
            endpoint.coordinator.receive(messages)
    except (PeerAuthError, ValueError, KeyError, TypeError) as exc:
        log.warning("closing the raft stream from %s: %s", node, exc)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad frame")
    finally:
        streams.discard(ws)
    return ws


def _open_frame(frames: FrameOpener, frame: bytes) -> list[Message]:
    return decode_batch(frames.open(frame))


async def _close_streams(app: web.Application) -> None:
    # open streams would otherwise hold the app's shutdown until its timeout
    for ws in app[STREAMS].copy():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")


async def raft_propose(request: web.Request) -> web.Response:
    body = await _authenticated_body(request)
    coordinator = request.app[PEER].coordinator
    try:
        out = await coordinator.propose_local(body)  # re-checks the command's protocol level
    except HvdError as exc:
        return _wire(exc)  # typed (e.g. UpgradeInProgress), so the forwarding member raises the same
    # >= the entry's index: the forwarding member waits for it so its local reads see the write
    applied = str(coordinator.driver.applied_index)
    return web.Response(body=out, content_type="application/json", headers={APPLIED_HEADER: applied})


async def raft_read_index(request: web.Request) -> web.Response:
    await _authenticated_body(request)
    try:
        index = await request.app[PEER].coordinator.read_index_local()
    except (NotLeader, ServiceUnavailable) as exc:
        status, err = routing_error_response(exc)
        return web.Response(status=status, body=err, content_type="application/json")
    return web.json_response({"index": index})


async def cluster_membership(request: web.Request) -> web.Response:
    """A membership change forwarded by a follower (see RaftCoordinator.change_membership)."""
    body = await _authenticated_body(request)
    coordinator = request.app[PEER].coordinator
    try:
        change = json.loads(body)
        if not isinstance(change, dict):
            raise BadRequest("a membership change is a JSON object")
        await coordinator.change_membership_local(change, MEMBERSHIP_TIMEOUT_S)
    except ValueError as exc:
        return _wire(BadRequest(f"malformed membership change: {exc}"))
    except HvdError as exc:
        return _wire(exc)
    return web.json_response({})


def _wire(exc: HvdError) -> web.Response:
    # the typed wire form, so the forwarding member raises the same error class
    status, err = routing_error_response(exc) if isinstance(exc, ServiceUnavailable) else (exc.status,
                                                                                           encode_result(error=exc))
    return web.Response(status=status, body=err, content_type="application/json")


async def cluster_status(request: web.Request) -> web.Response:
    await _authenticated_body(request)
    return web.json_response(request.app[PEER].coordinator.status())


async def gossip_push_pull(request: web.Request) -> web.Response:
    """A gossip push-pull: the caller's full member view in, ours out (hvd/cluster/gossip)."""
    body = await _authenticated_body(request)
    gossip = request.app[PEER].gossip
    if gossip is None:
        raise ServiceUnavailable("gossip is not running yet on this host")
    try:
        state = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"gossip push-pull body is not JSON: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("members"), list):
        raise BadRequest("gossip push-pull body must be an object with a 'members' list")
    return web.json_response(gossip.handle_push_pull(state))


GOSSIP_LEAVE_PATH = "/internal/v1/gossip/leave"


async def gossip_leave(request: web.Request) -> web.Response:
    """The cluster removed this host (told by the member that removed it: a removed node may never
    apply its own removal): it leaves gossip, so every host sees it "left"."""
    await _authenticated_body(request)
    gossip = request.app[PEER].gossip
    if gossip is not None:
        log.warning("this host was removed from the cluster: leaving gossip")
        task = asyncio.get_running_loop().create_task(gossip.stop())
        _leaving.add(task)
        task.add_done_callback(_leaving.discard)
    return web.json_response({"ok": True})


_leaving: set[asyncio.Task[None]] = set()


@web.middleware
async def client_cert_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutual TLS on peer routes: no cluster client certificate, no peer route; and the certificate
    must be the claimed node's and not revoked (hvd/cluster/cert_trust.py)."""
    endpoint = request.app[PEER]
    if (request.path.startswith("/internal/") and request.path not in internal_join.OPEN_PATHS
            and endpoint.require_client_cert):
        transport = request.transport
        if endpoint.trust is not None:
            await endpoint.trust.check(transport, request.headers.get(NODE_HEADER, ""))
        elif not presented_client_cert(transport.get_extra_info("ssl_object") if transport is not None else None):
            raise Unauthorized("peer routes need a client certificate of the cluster CA (mutual TLS)")
    return await handler(request)


async def _stop_watching(app: web.Application) -> None:
    trust = app[PEER].trust
    if trust is not None:
        trust.stop()


def install(app: web.Application, endpoint: PeerEndpoint) -> None:
    """Add the peer routes to ``app`` (outside the public Router, so outside OpenAPI)."""
    app[PEER] = endpoint
    app.middlewares.append(client_cert_middleware)
    app[internal_join.MEMBERS] = lambda: {m["id"]: m["address"] for m in endpoint.coordinator.members()}
    if endpoint.trust is not None:
        app.on_cleanup.append(_stop_watching)
    if endpoint.join is not None:
        internal_join.install(app, endpoint.join)
    app[STREAMS] = set()
    app.on_shutdown.append(_close_streams)
    app.router.add_get(STREAM_PATH, raft_stream)
    app.router.add_post(PROPOSE_PATH, raft_propose)
    app.router.add_post(READ_INDEX_PATH, raft_read_index)
    app.router.add_get(STATUS_PATH, cluster_status)
    app.router.add_post(MEMBERSHIP_PATH, cluster_membership)
    app.router.add_post(PUSH_PULL_PATH, gossip_push_pull)
    app.router.add_post(GOSSIP_LEAVE_PATH, gossip_leave)


async def _starting(request: web.Request) -> web.Response:
    err = ServiceUnavailable("hvd is starting (joining the cluster); retry shortly")
    return web.json_response(error_body(503, err.title, err.message), status=503, headers={"Retry-After": "1"})


def build_startup_app(endpoint: PeerEndpoint) -> web.Application:
    """Peer routes only, served while the daemon joins the cluster (before the public API is up:
    start-up itself proposes through the leader, which needs Raft traffic to flow)."""
    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    install(app, endpoint)
    app.router.add_route("*", "/{tail:.*}", _starting)
    return app


class StartupListener:
    """Serves :func:`build_startup_app` on the daemon's listening socket until ``close()``.

    It accepts on a duplicate of the socket the public app will use, so no connection is refused
    and none waits in the backlog during the handover: the public app starts accepting first,
    then this one stops (requests it still holds finish normally).
    """

    def __init__(self, endpoint: PeerEndpoint, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        self._app = build_startup_app(endpoint)
        self._sock = sock
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock.dup(), ssl_context=self._ssl).start()

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
