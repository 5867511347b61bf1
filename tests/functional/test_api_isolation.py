"""Project isolation (another project's resource is a 404, never a 403 that confirms it exists) and
the role policy matrix admin / member / reader over the core routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.functional.conftest import PUBLIC_KEY, Client, LiveServer
from tests.functional.test_api_errors import snapshot


@pytest.fixture(scope="module")
def two_projects(live: LiveServer, admin: Client) -> dict[str, Any]:
    """Projects iso-a and iso-b with a member each; A owns a keypair, a server group, a private
    flavor shared with A only and a quota override."""
    for name in ("iso-a", "iso-b"):
        assert admin.call("POST", "/v1/projects", {"name": name}).status == 201
    a = live.user(admin, "iso-a", "member", name="iso-user-a")
    b = live.user(admin, "iso-b", "member", name="iso-user-b")
    assert a.call("POST", "/v1/keypairs", {"name": "shared-name", "public_key": PUBLIC_KEY}).status == 201
    group = a.call("POST", "/v1/server-groups", {"name": "a-group", "policy": "affinity"}).body
    flavor = admin.call("POST", "/v1/flavors", {"name": "a.private", "vcpus": 2, "ram_mb": 256,
                                                "is_public": False}).body
    assert admin.call("POST", f"/v1/flavors/{flavor['id']}/access", {"project": "iso-a"}).status == 200
    assert admin.call("PUT", "/v1/quotas/iso-a", {"quotas": {"cores": 7}}).status == 200
    return {"a": a, "b": b, "group": group, "flavor": flavor}


def _not_found(r: Any) -> None:
    assert r.status == 404, r.body
    assert r.body["error"]["code"] == 404


def test_owner_sees_its_own_resources(two_projects: dict[str, Any]) -> None:
    a: Client = two_projects["a"]
    assert [k["name"] for k in a.get("/v1/keypairs")["keypairs"]] == ["shared-name"]
    assert [g["name"] for g in a.get("/v1/server-groups")["server_groups"]] == ["a-group"]
    assert "a.private" in [f["name"] for f in a.get("/v1/flavors")["flavors"]]
    assert a.get("/v1/flavors/a.private")["id"] == two_projects["flavor"]["id"]
    assert a.get("/v1/quotas/iso-a")["quotas"]["cores"]["limit"] == 7
    assert [p["name"] for p in a.get("/v1/projects")["projects"]] == ["iso-a"]


def test_another_project_never_sees_keypairs(two_projects: dict[str, Any]) -> None:
    b: Client = two_projects["b"]
    assert b.get("/v1/keypairs")["keypairs"] == []
    _not_found(b.call("GET", "/v1/keypairs/shared-name"))
    _not_found(b.call("DELETE", "/v1/keypairs/shared-name"))
    assert two_projects["a"].call("GET", "/v1/keypairs/shared-name").status == 200
    # names are per user: B may use the same one
    assert b.call("POST", "/v1/keypairs", {"name": "shared-name", "public_key": PUBLIC_KEY}).status == 201


def test_another_project_never_sees_server_groups(two_projects: dict[str, Any]) -> None:
    b: Client = two_projects["b"]
    gid = two_projects["group"]["id"]
    assert b.get("/v1/server-groups")["server_groups"] == []
    _not_found(b.call("GET", f"/v1/server-groups/{gid}"))
    _not_found(b.call("GET", "/v1/server-groups/a-group"))
    _not_found(b.call("DELETE", f"/v1/server-groups/{gid}"))
    assert two_projects["a"].call("GET", f"/v1/server-groups/{gid}").status == 200


def test_another_project_never_sees_private_flavors(two_projects: dict[str, Any]) -> None:
    b: Client = two_projects["b"]
    fid = two_projects["flavor"]["id"]
    assert "a.private" not in [f["name"] for f in b.get("/v1/flavors")["flavors"]]
    _not_found(b.call("GET", f"/v1/flavors/{fid}"))
    _not_found(b.call("GET", "/v1/flavors/a.private"))


def test_another_project_never_sees_quotas_projects_or_users(live: LiveServer, two_projects: dict[str, Any],
                                                             admin: Client) -> None:
    b: Client = two_projects["b"]
    _not_found(b.call("GET", "/v1/quotas/iso-a"))
    assert b.get("/v1/quotas/iso-b")["quotas"]["cores"]["limit"] == 20
    _not_found(b.call("GET", "/v1/projects/iso-a"))
    assert [p["name"] for p in b.get("/v1/projects")["projects"]] == ["iso-b"]
    _not_found(b.call("GET", "/v1/users/iso-user-a"))
    assert b.get("/v1/users/iso-user-b")["name"] == "iso-user-b"


# --- policy matrix -----------------------------------------------------------------------------

RANK = {"reader": 1, "member": 2, "admin": 3, "any": 0}

# (method, path, body(role, n) or None, weakest role allowed, success status); {p} = the project
MATRIX: list[tuple[str, str, Callable[[str, int], Any] | None, str, int]] = [
    ("GET", "/v1/auth/token", None, "any", 200),
    ("GET", "/v1/catalog", None, "any", 200),
    ("GET", "/v1/roles", None, "any", 200),
    ("GET", "/v1/projects", None, "any", 200),
    ("GET", "/v1/projects/{p}", None, "any", 200),
    ("POST", "/v1/projects", lambda role, n: {"name": f"pm-{role}-{n}"}, "admin", 201),
    ("PATCH", "/v1/projects/{p}", lambda role, n: {"description": role}, "admin", 200),
    ("GET", "/v1/users", None, "admin", 200),
    ("POST", "/v1/users", lambda role, n: {"name": f"pm-{role}-{n}", "password": "long-enough"}, "admin",
     201),
    ("GET", "/v1/projects/{p}/users/pm-admin/roles", None, "admin", 200),
    ("PUT", "/v1/projects/{p}/users/pm-reader/roles/reader", None, "admin", 200),
    ("GET", "/v1/flavors", None, "reader", 200),
    ("GET", "/v1/flavors/pm.public", None, "reader", 200),
    ("POST", "/v1/flavors", lambda role, n: {"name": f"pm.{role}.{n}", "vcpus": 1, "ram_mb": 64}, "admin",
     201),
    ("POST", "/v1/flavors/pm.public/extra-specs", lambda role, n: {"set": {"k": role}}, "admin", 200),
    ("GET", "/v1/flavors/pm.public/access", None, "admin", 200),
    ("DELETE", "/v1/flavors/pm.victim-{role}", None, "admin", 204),
    ("GET", "/v1/keypairs", None, "reader", 200),
    ("POST", "/v1/keypairs", lambda role, n: {"name": f"k-{n}", "public_key": PUBLIC_KEY}, "member", 201),
    ("DELETE", "/v1/keypairs/k-missing", None, "member", 404),
    ("GET", "/v1/server-groups", None, "reader", 200),
    ("POST", "/v1/server-groups", lambda role, n: {"name": f"g-{n}", "policy": "affinity"}, "member", 201),
    ("DELETE", "/v1/server-groups/g-missing", None, "member", 404),
    ("GET", "/v1/quotas/{p}", None, "reader", 200),
    ("PUT", "/v1/quotas/{p}", lambda role, n: {"quotas": {"cores": 30}}, "admin", 200),
    ("GET", "/v1/hosts", None, "admin", 200),
    ("GET", "/v1/hosts/hvd-test", None, "admin", 200),
    ("PATCH", "/v1/hosts/hvd-test", lambda role, n: {"enabled": True}, "admin", 200),
    ("GET", "/v1/cluster", None, "admin", 200),
    ("DELETE", "/v1/cluster/members/no-such-node", None, "admin", 404),
    ("POST", "/v1/cluster/leader", lambda role, n: {"to": "no-such-node"}, "admin", 404),
    ("POST", "/v1/cluster/members", lambda role, n: {"id": "x", "url": "ftp://x"}, "admin", 400),
]


@pytest.fixture(scope="module")
def role_clients(live: LiveServer, admin: Client) -> dict[str, Client]:
    assert admin.call("POST", "/v1/projects", {"name": "pm"}).status == 201
    assert admin.call("POST", "/v1/flavors", {"name": "pm.public", "vcpus": 1, "ram_mb": 64}).status == 201
    clients = {}
    for role in ("admin", "member", "reader"):
        clients[role] = live.user(admin, "pm", role, name=f"pm-{role}")
        victim = {"name": f"pm.victim-{role}", "vcpus": 1, "ram_mb": 64}
        assert admin.call("POST", "/v1/flavors", victim).status == 201
    return clients


@pytest.mark.parametrize("role", ["admin", "member", "reader"])
def test_policy_matrix(role_clients: dict[str, Client], admin: Client, role: str) -> None:
    client = role_clients[role]
    for n, (method, path, body, weakest, ok) in enumerate(MATRIX):
        url = path.format(p="pm", role=role)
        data = body(role, n) if body is not None else None
        allowed = RANK[role] >= RANK[weakest]
        before = None if allowed else snapshot(admin)
        r = client.call(method, url, data)
        if allowed:
            assert r.status == ok, (role, method, url, r.body)
        else:
            assert r.status == 403, (role, method, url, r.body)
            assert "Policy doesn't allow" in r.body["error"]["message"]
            assert snapshot(admin) == before, (role, method, url)


def test_reader_may_change_only_its_own_password(role_clients: dict[str, Client]) -> None:
    reader = role_clients["reader"]
    r = reader.call("PATCH", "/v1/users/pm-reader", {"email": "x@example.org"})
    assert r.status == 403
    r = reader.call("PATCH", "/v1/users/pm-member", {"password": "long-enough"})
    assert r.status == 404
    r = reader.call("DELETE", "/v1/users/pm-member")
    assert r.status == 403
