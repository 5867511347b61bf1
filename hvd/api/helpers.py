"""Request parsing and response helpers shared by the route modules."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hvd.api.context import RequestContext
from hvd.bounds import SAFE_INT_MAX, first_int_outside
from hvd.errors import BadRequest, Forbidden, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

CONTEXT_KEY = web.RequestKey("hvd.context", RequestContext)
MAX_LIMIT = 1000


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{where}'")
        elif err["type"] == "missing":
            parts.append(f"missing field '{where}'")
        else:
            parts.append(f"field '{where}': {err['msg']}")
    return "Invalid input: " + "; ".join(parts)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Validate the JSON body against `model`; 400 names the bad field, 413 if too big."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise UnsupportedMediaType(f"expected application/json, got {request.content_type}")
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}", parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        raise BadRequest(f"request body is not valid JSON: {type(exc).__name__}: {exc}"[:500]) from exc
    where = first_int_outside(data, -SAFE_INT_MAX, SAFE_INT_MAX)
    if where is not None:  # free-form fields too (properties, metadata): the catalog stores 64-bit integers
        raise BadRequest(f"Invalid input: field '{where}': integer out of range"
                         f" (-{SAFE_INT_MAX}..{SAFE_INT_MAX})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc)) from exc


def context(request: web.Request) -> RequestContext:
    ctx: RequestContext | None = request.get(CONTEXT_KEY)
    if ctx is None:
        raise Forbidden("this route needs an authenticated caller")
    return ctx


def json_response(data: Any, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.json_response(data, status=status, headers=headers, dumps=lambda v: json.dumps(v, default=str))


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter '{name}' must be true or false, got '{raw}'")


def page_params(request: web.Request) -> tuple[int, str | None]:
    """(limit, marker) from the query string; 400 on a bad limit."""
    raw = request.query.get("limit", str(MAX_LIMIT))
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest(f"query parameter 'limit' must be an integer, got '{raw}'") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"query parameter 'limit' must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit, request.query.get("marker") or None


def paginate(
    items: list[dict[str, Any]], limit: int, marker: str | None, key: str = "id"
) -> tuple[list[dict[str, Any]], str | None]:
    """Slice a sorted list after `marker`; returns (page, next marker or None)."""
    start = 0
    if marker is not None:
        for i, item in enumerate(items):
            if str(item[key]) == marker:
                start = i + 1
                break
        else:
            raise BadRequest(f"marker '{marker}' could not be found")
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, (str(page[-1][key]) if more and page else None)
