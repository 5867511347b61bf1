"""Remote consoles: one-time console URLs, the console WebSockets, and screenshots.

``POST /v1/servers/{id}/remote-console`` runs on the server's host (forwarded there like any
server operation) and answers a URL on that host's API: ``ws(s)://<host>/v1/console/<protocol>
?token=...``. The WebSocket there redeems the token (see console_tokens.py) and relays binary
frames both ways: to the guest's serial port (``hvd console``), or to the domain's VNC display on
this host (noVNC speaks RFB over the WebSocket, as with Nova's novncproxy; the ``binary``
subprotocol is accepted). The WebSocket routes take no API token: the console token is their
credential (browsers cannot set headers on a WebSocket), so they are public paths for the auth
middleware and are left out of the OpenAPI document (which cannot describe WebSockets). For VNC the
answer also carries ``web_url``, a noVNC page on that host that opens the WebSocket (novnc.py).

An attached console does not outlive the access that opened it: every ``ACCESS_CHECK_S`` the relay
asks ``console_refusal`` (console_tokens.py) whether the API token that asked for the URL still
validates (the identity cache: no database read until an identity change) and may still open the
server's console, and whether the server still runs on this host; if not, it closes the WebSocket
with the refusal's code (4401, 4403, 4409) and message, and logs it. The same check runs when the
URL is redeemed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api import novnc
from hvd.api.console_tokens import ConsoleGrant, ConsoleTokens, Refusal, console_refusal
from hvd.api.forward import to_owner
from hvd.api.helpers import context, json_response, parse_body
from hvd.api.routing import Router
from hvd.api.services import ApiServices, services
from hvd.api.v1.servers import compute, visible_server
from hvd.catalog.sql import fetch_one
from hvd.compute.lifecycle import PowerState, VmState
from hvd.drivers.remote_console import SERIAL, VNC
from hvd.errors import BadRequest, Conflict, Unauthorized

log = logging.getLogger(__name__)

CONSOLE_TOKENS = "console_tokens"  # key of this host's ConsoleTokens in ApiServices.extra
WS_PATHS = {SERIAL: "/v1/console/serial", VNC: "/v1/console/vnc"}
HEARTBEAT_S = 30.0  # a vanished client is noticed, and its serial session freed, within about this long
RELAY_CHUNK = 64 * 1024
ACCESS_CHECK_S = 5.0  # an attached console closes within about this long of losing its access
MAX_CHECK_FAILURES = 3  # access checks failing in a row (catalog unavailable) before the console closes
MAX_CLOSE_MESSAGE = 123  # bytes: a close frame's payload is at most 125, 2 of them the code (RFC 6455 5.5)
SOCKETS = web.AppKey("hvd.console_sockets", set[web.WebSocketResponse])  # attached consoles, closed at shutdown


class RemoteConsoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: Literal["serial", "vnc"] = Field(description="serial: the guest's serial port (hvd console);"
                                                           " vnc: its screen, RFB over WebSocket (noVNC).")


class RemoteConsole(BaseModel):
    protocol: str
    url: str = Field(description="A WebSocket URL on the server's host; it works once, until expires_at.")
    expires_at: str
    web_url: str | None = Field(None, description="vnc: a noVNC page on the server's host that opens url in a browser"
                                                  " (null for serial, and when that host does not serve noVNC).")


class RemoteConsoleOut(BaseModel):
    remote_console: RemoteConsole


def tokens(request: web.Request) -> ConsoleTokens:
    svc = services(request)
    store = svc.extra.get(CONSOLE_TOKENS)
    if store is None:
        store = svc.extra[CONSOLE_TOKENS] = ConsoleTokens(svc.config.compute.console_token_ttl_s)
    assert isinstance(store, ConsoleTokens)
    return store


def console_url(request: web.Request, protocol: str, token: str) -> str:
    """The URL of the console WebSocket on this host: under ``[compute] console_base_url``, else
    the address the caller reached us at (a forwarding host reached us at our peer URL)."""
    base = services(request).config.compute.console_base_url or f"{request.scheme}://{request.host}"
    scheme, _, rest = base.partition("://")
    scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    return f"{scheme}://{rest}{WS_PATHS[protocol]}?token={token}"


def _require_running(inst: dict[str, Any], what: str) -> None:
    if inst["vm_state"] not in (VmState.ACTIVE, VmState.RESCUED) or inst["power_state"] != PowerState.RUNNING:
        raise Conflict(f"Instance {inst['id']} is not running (vm_state {inst['vm_state']}, power state"
                       f" {PowerState(inst['power_state']).name.lower()}): {what} needs a running server")


async def _local_running_server(request: web.Request, what: str) -> dict[str, Any] | web.Response:
    """The caller's server when it runs here; the owner's answer when it lives on another host."""
    inst = await visible_server(request)
    forwarded = await to_owner(request, inst, compute(request).placement.is_up)
    if forwarded is not None:
        return forwarded
    _require_running(inst, what)
    if inst["host"] != compute(request).host:
        raise Conflict(f"Instance {inst['id']} has no host yet")
    return inst


async def create_remote_console(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:remote_console")
    body = await parse_body(request, RemoteConsoleIn)
    inst = await _local_running_server(request, "a console")
    if isinstance(inst, web.Response):
        return inst
    driver = compute(request).manager.driver
    if body.protocol not in driver.capabilities.remote_consoles:
        hint = " ([compute] vnc_enabled)" if body.protocol == VNC else ""
        raise Conflict(f"{body.protocol} consoles are not available on host {compute(request).host}{hint}")
    if body.protocol == VNC:
        await driver.vnc_address(inst["id"])  # 409 now, rather than a URL that cannot work
    # the server's project, not the caller's: an admin may open any project's console (visible_server)
    token, _grant = tokens(request).issue(inst["id"], inst["project_id"], body.protocol, time.monotonic(), issuer=ctx)
    expires_at = datetime.now(UTC) + timedelta(seconds=tokens(request).ttl_s)
    url = console_url(request, body.protocol, token)
    page = novnc.web_url(url, WS_PATHS[VNC]) if body.protocol == VNC and request.app.get(novnc.SERVED) else None
    return json_response({"remote_console": {
        "protocol": body.protocol, "url": url, "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "web_url": page}})


async def screenshot(request: web.Request) -> web.Response:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, "compute:read")  # the screen shows what console-log shows
    inst = await _local_running_server(request, "a screenshot")
    if isinstance(inst, web.Response):
        return inst
    driver = compute(request).manager.driver
    if VNC not in driver.capabilities.remote_consoles:
        raise Conflict(f"servers on host {compute(request).host} have no display ([compute] vnc_enabled)")
    png = await driver.screenshot(inst["id"])
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


# --- the console WebSockets ------------------------------------------------------------------------


async def _redeem(request: web.Request, protocol: str) -> tuple[ConsoleGrant, web.WebSocketResponse]:
    ws = web.WebSocketResponse(protocols=("binary",), heartbeat=HEARTBEAT_S, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:  # checked first: a plain GET does not spend the token
        raise BadRequest(f"{request.path} is a WebSocket endpoint: connect with a WebSocket client"
                         " (hvd console, noVNC) and the URL from POST /v1/servers/{id}/remote-console")
    grant = tokens(request).redeem(request.query.get("token", ""), protocol, time.monotonic())
    refusal, inst = await _access(services(request), grant, compute(request).host)
    if refusal is not None:
        raise refusal.error()
    assert inst is not None
    _require_running(inst, "a console")  # stricter than an attached console's rule: not paused
    return grant, ws


async def _access(svc: ApiServices, grant: ConsoleGrant,
                  host: str) -> tuple[Refusal | None, dict[str, Any] | None]:
    """``console_refusal`` of ``grant`` now, and the server's row it was decided on."""
    try:
        caller = await svc.identity.validate_hash(grant.issuer)  # cached until the next identity change
    except Unauthorized:
        caller = None
    inst = await svc.catalog.read(fetch_one, "SELECT * FROM instances WHERE id=?", (grant.server_id,))
    return console_refusal(grant, caller, svc.policy, inst, host), inst


async def _watch(svc: ApiServices, grant: ConsoleGrant, host: str) -> Refusal:
    """Return once the attached console of ``grant`` must close (checked every ACCESS_CHECK_S)."""
    failures = 0
    while True:
        await asyncio.sleep(ACCESS_CHECK_S)
        try:
            refusal, _ = await _access(svc, grant, host)
        except Exception as exc:  # a catalog hiccup (a leader change): look again; closed if it lasts
            failures += 1
            log.info("cannot check the access of the %s console of %s (%d in a row): %s", grant.protocol,
                     grant.server_id, failures, exc)
            if failures < MAX_CHECK_FAILURES:
                continue
            refusal = Refusal(WSCloseCode.INTERNAL_ERROR, "this console's access cannot be checked; reconnect")
        else:
            failures = 0
        if refusal is not None:
            log.info("%s console of %s (opened by %s) closed: %s", grant.protocol, grant.server_id, grant.user,
                     refusal.message)
            return refusal


def close_message(message: str) -> bytes:
    """``message`` cut to fit a close frame, on a character boundary."""
    data = message.encode()
    if len(data) <= MAX_CLOSE_MESSAGE:
        return data
    return data[:MAX_CLOSE_MESSAGE - 3].decode(errors="ignore").encode() + b"..."


async def _relay(ws: web.WebSocketResponse, read: Callable[[], Awaitable[bytes]],
                 write: Callable[[bytes], Awaitable[None]], watch: Awaitable[Refusal]) -> None:
    """Copy ``read()`` to the client and the client's frames to ``write`` until either side ends,
    or ``watch`` answers why the console must close (sent as the close code and message)."""

    async def to_client() -> None:
        while data := await read():
            await ws.send_bytes(data)

    async def from_client() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await write(msg.data.encode())

    watcher = asyncio.ensure_future(watch)
    tasks = [asyncio.ensure_future(to_client()), asyncio.ensure_future(from_client()), watcher]
    refusal: Refusal | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.info("console relay ended: %s", task.exception())
            elif task is watcher:
                refusal = watcher.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if refusal is None:
            await ws.close()
        else:
            await ws.close(code=refusal.code, message=close_message(refusal.message))


@contextlib.asynccontextmanager
async def _attached(request: web.Request, ws: web.WebSocketResponse) -> AsyncIterator[None]:
    """The prepared WebSocket, known to the app's shutdown while inside."""
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    try:
        yield
    finally:
        request.app[SOCKETS].discard(ws)


async def _close_consoles(app: web.Application) -> None:
    # an attached console would otherwise hold the daemon's shutdown until aiohttp's timeout (60 s)
    for ws in app[SOCKETS].copy():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"hvd is shutting down")


async def serial_websocket(request: web.Request) -> web.StreamResponse:
    grant, ws = await _redeem(request, SERIAL)
    session = await compute(request).manager.driver.open_serial_console(grant.server_id)
    try:
        async with _attached(request, ws):
            log.info("serial console of %s attached", grant.server_id)
            await _relay(ws, session.read, session.write, _watch(services(request), grant, compute(request).host))
    finally:
        await session.close()
        log.info("serial console of %s detached", grant.server_id)
    return ws


async def vnc_websocket(request: web.Request) -> web.StreamResponse:
    grant, ws = await _redeem(request, VNC)
    address, port = await compute(request).manager.driver.vnc_address(grant.server_id)
    try:
        reader, writer = await asyncio.open_connection(address, port)
    except OSError as exc:
        raise Conflict(f"the display of server {grant.server_id} does not answer ({exc.strerror or exc})") from exc

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def read() -> bytes:
        return await reader.read(RELAY_CHUNK)

    try:
        async with _attached(request, ws):
            await _relay(ws, read, write, _watch(services(request), grant, compute(request).host))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return ws


def register(router: Router) -> None:
    t = "compute"
    router.add("POST", "/v1/servers/{id}/remote-console", create_remote_console,
               "A one-time console URL (WebSocket on the server's host): serial port or VNC", body=RemoteConsoleIn,
               response=RemoteConsoleOut, tag=t)
    router.add("GET", "/v1/servers/{id}/screenshot", screenshot, "The server's screen as a PNG", tag=t,
               raw_response="image/png")


def install_websockets(app: web.Application) -> None:
    """The console WebSockets (token in the query; not in the OpenAPI document)."""
    app[SOCKETS] = set()
    app.on_shutdown.append(_close_consoles)
    app.router.add_get(WS_PATHS[SERIAL], serial_websocket)
    app.router.add_get(WS_PATHS[VNC], vnc_websocket)
