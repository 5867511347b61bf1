"""Behaviour of the core resources over HTTP: pagination, Location, names or ids, flavor specs and
access, keypairs, roles, hosts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.functional.conftest import PUBLIC_KEY, PUBLIC_KEY_FINGERPRINT, Client, LiveServer


def _walk(client: Client, path: str, plural: str, limit: int) -> list[list[Any]]:
    pages, marker = [], None
    while True:
        query = f"?limit={limit}" + (f"&marker={marker}" if marker else "")
        body = client.get(path + query)
        pages.append(body[plural])
        marker = body["next"]
        if marker is None:
            return pages


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_flavor_pagination_visits_every_item_once(admin: Client, limit: int) -> None:
    for i in range(5):
        admin.call("POST", "/v1/flavors", {"name": f"page.{i}", "vcpus": 1, "ram_mb": 64})
    everything = admin.get("/v1/flavors")
    assert everything["next"] is None
    pages = _walk(admin, "/v1/flavors", "flavors", limit)
    assert all(0 < len(p) <= limit for p in pages)
    assert [f["id"] for p in pages for f in p] == [f["id"] for f in everything["flavors"]]


def test_pagination_of_keypairs_uses_names_and_of_projects_ids(admin: Client) -> None:
    for i in range(3):
        admin.call("POST", "/v1/keypairs", {"name": f"pk-{i}", "public_key": PUBLIC_KEY})
        admin.call("POST", "/v1/projects", {"name": f"pp-{i}"})
    first = admin.get("/v1/keypairs?limit=1")
    assert first["next"] == first["keypairs"][0]["name"]
    names = [k["name"] for p in _walk(admin, "/v1/keypairs", "keypairs", 2) for k in p]
    assert names == [k["name"] for k in admin.get("/v1/keypairs")["keypairs"]]
    ids = [p_["id"] for p in _walk(admin, "/v1/projects", "projects", 2) for p_ in p]
    assert ids == [p["id"] for p in admin.get("/v1/projects")["projects"]]


def test_create_answers_201_with_a_location_that_shows_it(admin: Client) -> None:
    for path, body in (
        ("/v1/flavors", {"name": "loc.flavor", "vcpus": 2, "ram_mb": 128, "disk_gb": 1}),
        ("/v1/projects", {"name": "loc-project"}),
        ("/v1/users", {"name": "loc-user", "password": "long-enough"}),
        ("/v1/keypairs", {"name": "loc-key", "public_key": PUBLIC_KEY}),
        ("/v1/server-groups", {"name": "loc-group", "policy": "affinity"}),
    ):
        r = admin.call("POST", path, body)
        assert r.status == 201, r.body
        shown = admin.get(r.headers["Location"])
        assert shown["id"] == r.body["id"]
        assert shown["name"] == body["name"]


def test_flavor_by_name_or_id_with_specs_and_access(admin: Client) -> None:
    created = admin.call("POST", "/v1/flavors", {"name": "m1.spec", "id": "spec-id", "vcpus": 2,
                                                 "ram_mb": 512, "extra_specs": {"hw:a": "1"},
                                                 "is_public": False}).body
    assert created["id"] == "spec-id"
    assert admin.get("/v1/flavors/m1.spec") == admin.get("/v1/flavors/spec-id")
    r = admin.call("POST", "/v1/flavors/m1.spec/extra-specs", {"set": {"hw:b": "2"}, "unset": ["hw:a"]})
    assert r.body["extra_specs"] == {"hw:b": "2"}
    r = admin.call("POST", "/v1/flavors/m1.spec/extra-specs", {"unset": ["hw:zzz"]})
    assert r.status == 404 and "hw:zzz" in r.body["error"]["message"]
    assert admin.call("POST", "/v1/flavors/m1.spec/access", {"project": "demo"}).body["projects"] != []
    assert len(admin.get("/v1/flavors/m1.spec/access")["projects"]) == 1
    assert admin.call("POST", "/v1/flavors/m1.spec/access/remove", {"project": "demo"}).body["projects"] == []
    r = admin.call("POST", "/v1/flavors/m1.spec/access/remove", {"project": "demo"})
    assert r.status == 404
    public = admin.call("POST", "/v1/flavors", {"name": "m1.pub", "vcpus": 1, "ram_mb": 64}).body
    r = admin.call("POST", f"/v1/flavors/{public['id']}/access", {"project": "demo"})
    assert r.status == 409 and "public" in r.body["error"]["message"]
    assert admin.call("DELETE", "/v1/flavors/m1.spec").status == 204
    assert admin.call("GET", "/v1/flavors/spec-id").status == 404


def test_keypair_import_and_generation(admin: Client) -> None:
    imported = admin.call("POST", "/v1/keypairs", {"name": "imp", "public_key": PUBLIC_KEY}).body
    assert imported["fingerprint"] == PUBLIC_KEY_FINGERPRINT
    assert imported["type"] == "ssh-ed25519"
    assert imported.get("private_key") is None
    generated = admin.call("POST", "/v1/keypairs", {"name": "gen"}).body
    assert generated["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert generated["public_key"].startswith("ssh-ed25519 ")
    shown = admin.get("/v1/keypairs/gen")
    assert shown.get("private_key") is None and shown["fingerprint"] == generated["fingerprint"]
    assert admin.get(f"/v1/keypairs/{generated['id']}")["name"] == "gen"
    assert admin.call("DELETE", "/v1/keypairs/gen").status == 204
    assert admin.call("GET", "/v1/keypairs/gen").status == 404


def test_roles_grant_list_revoke(live: LiveServer, admin: Client) -> None:
    assert admin.call("POST", "/v1/projects", {"name": "role-project"}).status == 201
    assert admin.call("POST", "/v1/users", {"name": "role-user", "password": "long-enough"}).status == 201
    base = "/v1/projects/role-project/users/role-user/roles"
    assert admin.get(base)["roles"] == []
    assert admin.call("PUT", base + "/reader").body["roles"] == ["reader"]
    assert admin.call("PUT", base + "/member").body["roles"] == ["member", "reader"]
    user = Client(live.url)
    info = user.login("role-user", "long-enough", "role-project")
    assert info["roles"] == ["member", "reader"]
    assert admin.call("DELETE", base + "/member").status == 204
    assert admin.call("DELETE", base + "/reader").status == 204
    # no role left on the project: the session ends
    assert user.call("GET", "/v1/auth/token").status == 401


def test_project_delete_and_disable(live: LiveServer, admin: Client) -> None:
    assert admin.call("POST", "/v1/projects", {"name": "short-lived"}).status == 201
    user = live.user(admin, "short-lived", "member")
    assert admin.call("PATCH", "/v1/projects/short-lived", {"enabled": False}).body["enabled"] is False
    assert user.call("GET", "/v1/auth/token").status == 401
    assert admin.call("PATCH", "/v1/projects/short-lived", {"name": "renamed", "enabled": True}).status == 200
    assert admin.get("/v1/projects/renamed")["enabled"] is True
    assert admin.call("PATCH", "/v1/projects/renamed", {"name": "admin"}).status == 409
    assert admin.call("DELETE", "/v1/projects/renamed").status == 204
    assert admin.call("GET", "/v1/projects/renamed").status == 404


def test_host_disable_and_enable(admin: Client) -> None:
    hosts = admin.get("/v1/hosts")["hosts"]
    assert [h["name"] for h in hosts] == ["hvd-test"]
    res = hosts[0]["resources"]["vcpus"]
    assert res["capacity"] == int((res["total"] - res["reserved"]) * res["ratio"])
    r = admin.call("PATCH", "/v1/hosts/hvd-test", {"enabled": False, "reason": "maintenance"})
    assert r.body["enabled"] is False and r.body["disabled_reason"] == "maintenance"
    r = admin.call("PATCH", "/v1/hosts/hvd-test", {"enabled": True})
    assert r.body["enabled"] is True and r.body["disabled_reason"] == ""
    assert admin.call("PATCH", "/v1/hosts/nope", {"enabled": True}).status == 404


def test_quota_set_and_show(admin: Client) -> None:
    r = admin.call("PUT", "/v1/quotas/demo", {"quotas": {"cores": 4, "instances": -1}})
    assert r.status == 200
    assert r.body["quotas"]["cores"] == {"limit": 4, "in_use": 0}
    assert r.body["quotas"]["instances"]["limit"] == -1
    assert admin.get("/v1/quotas/demo") == r.body


def test_catalog_and_token_info(admin: Client) -> None:
    types = {s["type"] for s in admin.get("/v1/catalog")["catalog"]}
    assert {"identity", "compute", "image", "network", "volume"} <= types
    info = admin.get("/v1/auth/token")
    assert (info["user"]["name"], info["project"]["name"], info["roles"]) == ("admin", "admin", ["admin"])
