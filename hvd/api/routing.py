"""Route table of the API and the OpenAPI document generated from it.

Each route names its request body model and response model (pydantic), so the OpenAPI document
is derived from the same models that validate requests — one source of truth.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    public: bool = False  # no token needed
    query: tuple[tuple[str, str, str], ...] = ()  # (name, json type, description)
    tag: str = ""
    raw_body: str = ""  # content type of a streamed (non-JSON) body
    raw_response: str = ""  # content type of a streamed (non-JSON) response


@dataclass
class Router:
    """Collects routes; `install(app)` adds them to an aiohttp app."""

    routes: list[Route] = field(default_factory=list)

    def add(self, method: str, path: str, handler: Handler, summary: str, **kw: Any) -> None:
        self.routes.append(Route(method.upper(), path, handler, summary, **kw))

    def install(self, app: web.Application) -> None:
        for r in self.routes:
            app.router.add_route(r.method, r.path, r.handler)

    def public_paths(self) -> set[tuple[str, str]]:
        return {(r.method, r.path) for r in self.routes if r.public}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "title", "message", "request_id"],
            "properties": {
                "code": {"type": "integer"},
                "title": {"type": "string"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        }
    },
}

ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERROR_CODES = ("400", "401", "403", "404", "405", "409", "413", "415", "500", "501", "503", "504", "507")


def openapi_document(router: Router, title: str, version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every route of `router`."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for r in router.routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.path.lower()).strip('_')}",
            "tags": [r.tag] if r.tag else [],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", r.path)
            ]
            + [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
               for n, t, d in r.query],
            "responses": {
                code: {"description": "error", "content": {"application/json": {"schema": ERROR_REF}}}
                for code in _ERROR_CODES
            },
        }
        if not r.public:
            op["security"] = [{"bearer": []}]
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(r.body)}}}
        elif r.raw_body:
            op["requestBody"] = {
                "required": True,
                "content": {r.raw_body: {"schema": {"type": "string", "format": "binary"}}},
            }
        ok: dict[str, Any] = {"description": r.summary}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": ref(r.response)}}
        elif r.raw_response:
            ok["content"] = {r.raw_response: {"schema": {"type": "string"}}}
        op["responses"][str(r.status)] = ok
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
