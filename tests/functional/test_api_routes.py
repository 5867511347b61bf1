"""Every route of the router: documented in /v1/openapi.json, and (for the core modules) called once
with its documented success status, a body its response model accepts, and an X-Request-Id."""

from __future__ import annotations

import re
from typing import Any

from hvd.api.app import build_router
from hvd.api.routing import Route
from tests.functional.conftest import PUBLIC_KEY, Client, LiveServer

CORE_MODULES = {
    "hvd.api.app", "hvd.api.v1.auth", "hvd.api.v1.identity", "hvd.api.v1.flavors", "hvd.api.v1.keypairs",
    "hvd.api.v1.admin",
}
REQ_ID = re.compile(r"^req-[0-9a-f-]{36}$")
ROLES = "/v1/projects/{project}/users/{user}/roles"
ROLE = ROLES + "/{role}"


def _routes() -> dict[tuple[str, str], Route]:
    return {(r.method, r.path): r for r in build_router().routes}


def test_every_route_is_in_the_openapi_document(admin: Client) -> None:
    doc = admin.anonymous().get("/v1/openapi.json")
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert set(_routes()) <= documented
    for (method, path), route in _routes().items():
        op = doc["paths"][path][method.lower()]
        assert str(route.status) in op["responses"]
        assert "400" in op["responses"] and "500" in op["responses"]
        assert ("security" in op) is (not route.public), (method, path)
        if route.body is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith(route.body.__name__)


def test_every_core_route_answers_with_its_documented_status(live: LiveServer, admin: Client) -> None:
    routes = _routes()
    anon = admin.anonymous()
    spare = admin.anonymous()
    spare.login("admin", "admin-secret", "admin")
    host = admin.get("/v1/hosts")["hosts"][0]["name"]

    created: dict[str, str] = {}

    def remember(key: str, field: str = "id") -> Any:
        return lambda body: created.__setitem__(key, body[field])

    # (route template, concrete path (formatted with `created`), body, client, hook on the body)
    steps: list[tuple[str, str, str, Any, Client, Any]] = [
        ("GET", "/healthz", "/healthz", None, anon, None),
        ("GET", "/metrics", "/metrics", None, anon, None),
        ("GET", "/v1/openapi.json", "/v1/openapi.json", None, anon, None),
        ("GET", "/v1", "/v1", None, anon, None),
        ("POST", "/v1/auth/tokens", "/v1/auth/tokens",
         {"username": "admin", "password": "admin-secret", "project": "admin"}, anon, None),
        ("GET", "/v1/auth/token", "/v1/auth/token", None, admin, None),
        ("GET", "/v1/catalog", "/v1/catalog", None, admin, None),
        ("POST", "/v1/projects", "/v1/projects", {"name": "walk-project", "description": "d"}, admin,
         remember("project")),
        ("GET", "/v1/projects", "/v1/projects", None, admin, None),
        ("GET", "/v1/projects/{id}", "/v1/projects/{project}", None, admin, None),
        ("PATCH", "/v1/projects/{id}", "/v1/projects/{project}", {"description": "e"}, admin, None),
        ("POST", "/v1/users", "/v1/users", {"name": "walk-user", "password": "walk-password"}, admin,
         remember("user")),
        ("GET", "/v1/users", "/v1/users", None, admin, None),
        ("GET", "/v1/users/{id}", "/v1/users/{user}", None, admin, None),
        ("PATCH", "/v1/users/{id}", "/v1/users/{user}", {"email": "w@example.org"}, admin, None),
        ("GET", "/v1/roles", "/v1/roles", None, admin, None),
        ("PUT", ROLE, ROLE.replace("{role}", "reader"), None, admin, None),
        ("GET", ROLES, ROLES, None, admin, None),
        ("DELETE", ROLE, ROLE.replace("{role}", "reader"), None, admin, None),
        ("POST", "/v1/flavors", "/v1/flavors",
         {"name": "walk.flavor", "vcpus": 1, "ram_mb": 512, "is_public": False}, admin, remember("flavor")),
        ("GET", "/v1/flavors", "/v1/flavors", None, admin, None),
        ("GET", "/v1/flavors/{id}", "/v1/flavors/{flavor}", None, admin, None),
        ("POST", "/v1/flavors/{id}/extra-specs", "/v1/flavors/{flavor}/extra-specs", {"set": {"hw:cpu": "1"}},
         admin, None),
        ("POST", "/v1/flavors/{id}/access", "/v1/flavors/{flavor}/access", {"project": "walk-project"}, admin,
         None),
        ("GET", "/v1/flavors/{id}/access", "/v1/flavors/{flavor}/access", None, admin, None),
        ("POST", "/v1/flavors/{id}/access/remove", "/v1/flavors/{flavor}/access/remove",
         {"project": "walk-project"}, admin, None),
        ("DELETE", "/v1/flavors/{id}", "/v1/flavors/{flavor}", None, admin, None),
        ("POST", "/v1/keypairs", "/v1/keypairs", {"name": "walk-key", "public_key": PUBLIC_KEY}, admin,
         remember("keypair", "name")),
        ("GET", "/v1/keypairs", "/v1/keypairs", None, admin, None),
        ("GET", "/v1/keypairs/{name}", "/v1/keypairs/{keypair}", None, admin, None),
        ("DELETE", "/v1/keypairs/{name}", "/v1/keypairs/{keypair}", None, admin, None),
        ("POST", "/v1/server-groups", "/v1/server-groups", {"name": "walk-group", "policy": "anti-affinity"},
         admin, remember("group")),
        ("GET", "/v1/server-groups", "/v1/server-groups", None, admin, None),
        ("GET", "/v1/server-groups/{id}", "/v1/server-groups/{group}", None, admin, None),
        ("DELETE", "/v1/server-groups/{id}", "/v1/server-groups/{group}", None, admin, None),
        ("GET", "/v1/quotas/{project}", "/v1/quotas/{project}", None, admin, None),
        ("PUT", "/v1/quotas/{project}", "/v1/quotas/{project}", {"quotas": {"cores": 40}}, admin, None),
        ("GET", "/v1/hosts", "/v1/hosts", None, admin, None),
        ("GET", "/v1/hosts/{name}", f"/v1/hosts/{host}", None, admin, None),
        ("PATCH", "/v1/hosts/{name}", f"/v1/hosts/{host}", {"enabled": True}, admin, None),
        ("DELETE", "/v1/users/{id}", "/v1/users/{user}", None, admin, None),
        ("DELETE", "/v1/projects/{id}", "/v1/projects/{project}", None, admin, None),
        ("DELETE", "/v1/auth/token", "/v1/auth/token", None, spare, None),
    ]
    exercised = set()
    for method, template, path, body, client, hook in steps:
        route = routes[(method, template)]
        r = client.call(method, path.format(**created), body)
        assert r.status == route.status, (method, path, r.body)
        assert REQ_ID.match(r.headers["X-Request-Id"])
        if route.response is not None:
            route.response.model_validate(r.body)
        if r.status == 201:
            assert r.headers["Location"].startswith("/v1/")
            reader = Client(client.url, r.body["token"]) if "token" in r.body else client
            assert reader.call("GET", r.headers["Location"]).status == 200
        if hook is not None:
            hook(r.body)
        exercised.add((method, template))
    core = {key for key, r in routes.items() if r.handler.__module__ in CORE_MODULES}
    assert core - exercised == set(), "add a step for each new core route"
    # the revoked token is refused from now on
    assert spare.call("GET", "/v1/auth/token").status == 401


def test_errors_have_the_documented_shape_and_a_request_id(admin: Client) -> None:
    anon = admin.anonymous()
    cases = [
        (anon, "GET", "/v1/flavors", None, 401),
        (admin, "GET", "/v1/no-such-thing", None, 404),
        (admin, "PUT", "/v1/flavors", None, 405),
        (admin, "POST", "/v1/flavors", {"name": "x"}, 400),
        (admin, "GET", "/v1/flavors/does-not-exist", None, 404),
    ]
    for client, method, path, body, status in cases:
        r = client.call(method, path, body)
        assert r.status == status, (method, path, r.body)
        assert REQ_ID.match(r.headers["X-Request-Id"])
        err = r.body["error"]
        assert set(err) == {"code", "title", "message", "request_id"}
        assert err["code"] == status
        assert err["request_id"] == r.headers["X-Request-Id"]
        assert err["title"] and err["message"]


def test_a_callers_request_id_is_echoed_in_errors(admin: Client) -> None:
    rid = "req-00000000-0000-4000-8000-000000000001"
    r = admin.call("GET", "/v1/flavors/nope", headers={"X-Request-Id": rid})
    assert r.headers["X-Request-Id"] == rid
    assert r.body["error"]["request_id"] == rid
