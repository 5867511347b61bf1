"""The aiohttp application: middlewares, meta routes and every /v1 route module."""

from __future__ import annotations

import ipaddress

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

import hvd
from hvd.api import internal, internal_compute, novnc
from hvd.api.helpers import json_response
from hvd.api.middleware import auth_middleware, bearer_token, error_body, error_middleware, request_id_middleware
from hvd.api.routing import Router, openapi_document
from hvd.api.services import SERVICES, ApiServices
from hvd.api.v1 import (
    admin,
    aggregates,
    auth,
    cluster,
    consoles,
    events,
    flavors,
    host_actions,
    identity,
    images,
    keypairs,
    networks,
    servers,
    volume_data,
    volumes,
)
from hvd.health import verdict

ROUTER_KEY = web.AppKey("hvd.router", Router)
ROUTE_MODULES = [auth, identity, flavors, keypairs, admin, aggregates, host_actions, cluster, images, servers, events,
                 networks, consoles, volumes, volume_data]


class LoopHealth(BaseModel):
    state: str = Field(description="ok, degraded (retrying by itself) or dead (the daemon is about to exit)")
    reason: str


class Health(BaseModel):
    status: str = Field(description="ok (HTTP 200), or degraded / dead (HTTP 503): see loops")
    version: str
    host: str
    leader: str | None
    loops: dict[str, LoopHealth] = Field(description="The Raft loop and the power-sync loop, by name")


class Versions(BaseModel):
    version: str
    links: dict[str, str]


async def healthz(request: web.Request) -> web.Response:
    """200 while every loop of the daemon works; 503 naming the loop that is degraded or dead."""
    svc = request.app[SERVICES]
    coord = svc.catalog.coordinator
    statuses = {"raft": coord.health(), **svc.health.check()}
    code, state = verdict(statuses)
    loops = {name: {"state": s.state.value, "reason": s.reason} for name, s in statuses.items()}
    body: dict[str, object] = {"status": state, "version": hvd.__version__, "host": svc.config.host_name,
                               "leader": coord.leader_id, "loops": loops}
    if code != 200:  # also a regular error body, so a client handling any 503 shows what is wrong
        failing = "; ".join(f"{name} {s.state.value}: {s.reason}" for name, s in statuses.items() if s.reason)
        body.update(error_body(code, "Service Unavailable", failing or state))
    return json_response(body, status=code)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, for clients of [api] metrics_from, or any caller whose token has host:read."""
    svc = request.app[SERVICES]
    if not _metrics_allowed(request.remote or "", svc.config.api.metrics_from):
        ctx = await svc.identity.validate(bearer_token(request))  # Unauthorized without a valid token
        svc.policy.enforce(ctx.roles, "host:read")
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _metrics_allowed(remote: str, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[ROUTER_KEY], "hvd", hvd.__version__))


async def versions(request: web.Request) -> web.Response:
    return json_response({"version": "v1", "links": {"openapi": "/v1/openapi.json", "tokens": "/v1/auth/tokens"}})


def build_router(extra_modules: list[object] | None = None) -> Router:
    router = Router()
    router.add("GET", "/healthz", healthz, "Liveness and leader", response=Health, public=True, tag="meta")
    router.add("GET", "/metrics", metrics, "Prometheus metrics", public=True, tag="meta",
               raw_response="text/plain")
    router.add("GET", "/v1/openapi.json", openapi, "This document", public=True, tag="meta")
    router.add("GET", "/v1", versions, "API version", response=Versions, public=True, tag="meta")
    for module in [*ROUTE_MODULES, *(extra_modules or [])]:
        module.register(router)  # type: ignore[attr-defined]
    return router


def build_app(services: ApiServices, extra_modules: list[object] | None = None) -> web.Application:
    """The public API app over already-started services."""
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware],
        client_max_size=services.config.api.max_body_mib * 1024 * 1024,
    )
    app[SERVICES] = services
    router = build_router(extra_modules)
    app[ROUTER_KEY] = router
    router.install(app)
    consoles.install_websockets(app)  # their token is in the URL; not part of the OpenAPI document
    novnc.install(app, services.config.compute.novnc_dir)  # static files: not part of the OpenAPI document
    events.install_shutdown(app)
    peer = services.extra.get(internal.PEER_SERVICE)
    if peer is not None:
        internal.install(app, peer)  # signed peer routes; not part of the public OpenAPI document
        if internal_compute.COMPUTE_KEY in services.extra:
            internal_compute.install(app)
    return app
