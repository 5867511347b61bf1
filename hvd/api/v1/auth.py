"""/v1/auth/tokens and /v1/catalog."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, parse_body
from hvd.api.middleware import error_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog.cmd_identity import TokenRevoke
from hvd.identity.throttle import TooManyRequests


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1, max_length=4096)
    project: str = Field(min_length=1, max_length=255, description="Project name or id to scope the token to.")


class NamedRef(BaseModel):
    id: str
    name: str


class TokenResponse(BaseModel):
    token: str
    expires_at: str
    user: NamedRef
    project: NamedRef
    roles: list[str]


class TokenInfo(BaseModel):
    expires_at: str
    user: NamedRef
    project: NamedRef
    roles: list[str]


class Endpoint(BaseModel):
    interface: str
    url: str
    region: str


class Service(BaseModel):
    type: str
    name: str
    endpoints: list[Endpoint]


class CatalogResponse(BaseModel):
    catalog: list[Service]


async def issue_token(request: web.Request) -> web.Response:
    body = await parse_body(request, TokenRequest)
    try:
        issued = await services(request).identity.issue_token(body.username, body.password, body.project,
                                                              source=request.remote or "")
    except TooManyRequests as exc:  # the error middleware knows no headers: Retry-After is set here
        return web.json_response(error_body(exc.status, exc.title, exc.message), status=exc.status,
                                 headers={"Retry-After": str(exc.retry_after)})
    ctx = issued.context
    return json_response(
        {
            "token": issued.token,
            "expires_at": issued.expires_at,
            "user": {"id": ctx.user_id, "name": ctx.user_name},
            "project": {"id": ctx.project_id, "name": ctx.project_name},
            "roles": list(ctx.roles),
        },
        status=201,
        location="/v1/auth/token",
    )


async def show_token(request: web.Request) -> web.Response:
    ctx = context(request)
    return json_response(
        {
            "expires_at": ctx.expires_at,
            "user": {"id": ctx.user_id, "name": ctx.user_name},
            "project": {"id": ctx.project_id, "name": ctx.project_name},
            "roles": list(ctx.roles),
        }
    )


async def revoke_token(request: web.Request) -> web.Response:
    ctx = context(request)
    await services(request).catalog.propose(TokenRevoke(token_hash=ctx.token_hash))
    return web.Response(status=204)


SERVICE_TYPES = (
    ("identity", "keystone"),
    ("compute", "nova"),
    ("image", "glance"),
    ("network", "neutron"),
    ("volume", "cinder"),
)


async def list_catalog(request: web.Request) -> web.Response:
    context(request)
    url = services(request).api_url.rstrip("/") + "/v1"
    return json_response(
        {
            "catalog": [
                {"type": t, "name": n, "endpoints": [{"interface": "public", "url": url, "region": "RegionOne"}]}
                for t, n in SERVICE_TYPES
            ]
        }
    )


def register(router: Router) -> None:
    tag = "identity"
    router.add("POST", "/v1/auth/tokens", issue_token, "Issue a token", body=TokenRequest,
               response=TokenResponse, status=201, public=True, tag=tag)
    router.add("GET", "/v1/auth/token", show_token, "Show the caller's token", response=TokenInfo, tag=tag)
    router.add("DELETE", "/v1/auth/token", revoke_token, "Revoke the caller's token", status=204, tag=tag)
    router.add("GET", "/v1/catalog", list_catalog, "List the service catalog", response=CatalogResponse, tag=tag)
