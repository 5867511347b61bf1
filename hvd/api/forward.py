"""Operations go to the owning host: a public request about an instance that lives on another
host is forwarded there, as is (method, path, query, body, the caller's token), and its answer
returned unchanged. The owner checks the token and policy itself, like any request.

A forwarded request carries the forwarding host's name (it is never forwarded again) and its
applied catalog index, signed with the cluster key, so the owner first catches up to what the
forwarding host saw (e.g. the instance it just created).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from hvd.api.services import services
from hvd.cluster.peer_auth import PeerAuthError
from hvd.cluster.peers import APPLIED_HEADER, FORWARDED_HEADER, PeerCaller, PeerErrors
from hvd.errors import Conflict, ServiceUnavailable

log = logging.getLogger(__name__)

PEERS = "peers"  # key of the PeerCaller in ApiServices.extra
PASSED_HEADERS = ("Authorization", "X-Auth-Token", "Content-Type", "Accept")
ANSWER_HEADERS = ("Content-Type", "Location", "Retry-After")
CATCH_UP_TIMEOUT_S = 10.0


async def catch_up_if_forwarded(request: web.Request) -> None:
    """On the owner: wait for the forwarding host's catalog index (signed) before reading."""
    raw = request.headers.get(APPLIED_HEADER, "")
    if FORWARDED_HEADER not in request.headers or not raw.isdigit():
        return
    endpoint = services(request).extra.get("peer")
    verifier = getattr(endpoint, "verifier", None)
    if verifier is None:
        return
    try:
        verifier.verify(request.method, request.path, request.headers, await request.read())
    except PeerAuthError:
        return  # an unsigned hint: read what this replica has
    await wait_applied(request, raw)


async def wait_applied(request: web.Request, raw: str) -> None:
    """Wait until this replica has applied the index ``raw`` the calling host named (503 after a while)."""
    if not raw.isdigit():
        return
    try:
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            await services(request).catalog.coordinator.wait_applied(int(raw))
    except TimeoutError as exc:
        raise ServiceUnavailable(f"this host has not caught up to catalog index {raw} yet; retry") from exc


async def to_owner(request: web.Request, inst: dict[str, Any], is_up: Any) -> web.Response | None:
    """The owner's answer when ``inst`` lives on another host; None when it is ours (or hostless).

    Raises Conflict naming the owner and its state when the owner is down, ServiceUnavailable
    when it does not answer.
    """
    if inst["host"] is None:
        return None
    return await to_host(request, inst["host"], is_up, f"Instance {inst['id']} is on host {inst['host']}")


async def to_host(request: web.Request, host: str, is_up: Any, what: str) -> web.Response | None:
    """``host``'s answer to this request when ``host`` is not this one (None when it is); ``what``
    starts the error messages ("Instance X is on host Y")."""
    svc = services(request)
    if host == svc.config.host_name:
        return None
    if FORWARDED_HEADER in request.headers:
        raise Conflict(f"{what}, not on {svc.config.host_name} (forwarded by {request.headers[FORWARDED_HEADER]});"
                       " retry")
    peers: PeerCaller | None = svc.extra.get(PEERS)
    if peers is None:
        raise ServiceUnavailable(f"{what}, and this host has no cluster key to reach it")
    if not is_up(host):
        raise Conflict(f"{what}, which is down; retry when it is back", host=host)
    body = await request.read()
    headers = peers.signed(request.method, request.path, body)
    headers[FORWARDED_HEADER] = svc.config.host_name
    for name in PASSED_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    url = await peers.url_of(host) + request.path_qs
    timeout = aiohttp.ClientTimeout(total=svc.config.api.wait_timeout_s + 30)
    try:
        async with peers.session.request(request.method, url, data=body, headers=headers,
                                         timeout=timeout) as resp:
            answer = await resp.read()
            passed = {k: resp.headers[k] for k in ANSWER_HEADERS if k in resp.headers}
            return web.Response(status=resp.status, body=answer, headers=passed)
    except PeerErrors as exc:
        raise ServiceUnavailable(f"{what}, which did not answer: {type(exc).__name__} {exc}".strip(),
                                 host=host) from exc
