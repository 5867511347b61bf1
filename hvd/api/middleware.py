"""Middlewares: request id + log context, metrics, authentication, and the ONE place errors
become HTTP responses."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from hvd.api import novnc
from hvd.api.helpers import CONTEXT_KEY
from hvd.api.routing import Handler
from hvd.api.services import SERVICES
from hvd.errors import HvdError, InsufficientStorage, Unauthorized
from hvd.iofaults import is_disk_full
from hvd.log import project_var, request_id_var, user_var

log = logging.getLogger("hvd.api")

REQUESTS = Counter("hvd_api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("hvd_api_request_seconds", "API request latency", ["method", "route"])

_REQ_ID = re.compile(r"^req-[0-9a-f-]{36}$")
# request ids need to be unique, not secret: os.urandom (uuid4) per request releases the GIL and then
# waits for it behind the catalog thread, which cost ~0.2 ms per request under load
_RID_RANDOM = random.Random()


def new_request_id() -> str:
    h = f"{_RID_RANDOM.getrandbits(128):032x}"  # formatted by hand: uuid.UUID() costs ~4x more
    return f"req-{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


_METRICS: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labelled children: labels() hashes every call


def _metric_children(method: str, route: str, status: int) -> tuple[Any, Any]:
    key = (method, route, status)
    children = _METRICS.get(key)
    if children is None:
        children = _METRICS[key] = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
    return children
# the console WebSockets authenticate with their one-time console token instead (hvd/api/v1/consoles.py)
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/v1/openapi.json", "/v1/auth/tokens", "/v1", "/v1/console/serial",
                          "/v1/console/vnc"})
# noVNC's static files (hvd/api/novnc.py): a browser loads the console page and its modules without headers;
# /internal/ routes check the peer signature themselves
PUBLIC_PREFIXES = (f"{novnc.PREFIX}/", "/internal/")


def error_body(status: int, title: str, message: str) -> dict[str, object]:
    return {"error": {"code": status, "title": title, "message": message, "request_id": request_id_var.get()}}


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take X-Request-Id from the caller (if well-formed) or make one; echo it; log the request."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQ_ID.match(given) else new_request_id()
    request_id_var.set(rid)
    user_var.set("-")
    project_var.set("-")
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    finally:
        elapsed = time.perf_counter() - started
        count, latency = _metric_children(request.method, route_name, status)
        count.inc()
        latency.observe(elapsed)
        # peer traffic (forwarded writes, read-index) would double every write's log line, and a noVNC page
        # loads dozens of files; failures stay
        level = logging.DEBUG if status < 400 and request.path.startswith(PUBLIC_PREFIXES) else logging.INFO
        log.log(level, "%s %s -> %s in %.1f ms", request.method, _loggable_path(request), status, elapsed * 1000)


def _loggable_path(request: web.Request) -> str:
    """The path and query, without the value of ``token`` (a console URL's credential, hvd/api/v1/consoles.py)."""
    if "token" not in request.query:
        return request.path_qs
    return str(request.rel_url.update_query(token="***"))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to `{"error": {code, title, message, request_id}}`."""
    try:
        return await handler(request)
    except HvdError as exc:
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        return web.json_response(error_body(exc.status, exc.title, exc.message), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        elif exc.status == 404:
            message = f"no resource at {request.path}"
        return web.json_response(error_body(exc.status, exc.reason, message), status=exc.status)
    except Exception as exc:
        if is_disk_full(exc):  # a local write (catalog, image store) found no room: 507, not a bug
            log.error("%s %s: the disk is full: %s", request.method, request.path, exc)
            error = InsufficientStorage(f"this host's disk is full ({exc}); retry once space is freed")
            return web.json_response(error_body(error.status, error.title, error.message), status=error.status)
        # a bug anywhere below: logged with the request id, answered 500
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return web.json_response(
            error_body(500, "Internal Server Error", "unexpected error; see the daemon log for the request id"),
            status=500,
        )


def bearer_token(request: web.Request) -> str:
    """The caller's token: Authorization: Bearer, else X-Auth-Token (OpenStack habit); "" when none."""
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("X-Auth-Token", "")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the token (Authorization: Bearer or X-Auth-Token) into a RequestContext."""
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    token = bearer_token(request)
    if not token:
        raise Unauthorized("The request you have made requires authentication.")
    ctx = await request.app[SERVICES].identity.validate(token)
    request[CONTEXT_KEY] = ctx
    user_var.set(ctx.user_name)
    project_var.set(ctx.project_name)
    return await handler(request)
