"""Every error class of the public API, over real HTTP and SQLite: the status, a message naming
what is wrong, and nothing written."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from hvd.catalog.cmd_identity import TokenIssue
from hvd.identity.service import token_hash
from tests.functional.conftest import PUBLIC_KEY, USER_PASSWORD, Client, LiveServer

LISTS = ["/v1/projects", "/v1/users", "/v1/flavors", "/v1/keypairs", "/v1/server-groups"]


def snapshot(client: Client) -> dict[str, Any]:
    """Everything an admin can list, to prove a refused request wrote nothing."""
    out = {path: client.get(path) for path in LISTS}
    out["quotas"] = client.get("/v1/quotas/admin")
    # what gossip says about a host (report age, load) changes by itself: only catalog fields count
    out["hosts"] = [{k: v for k, v in h.items() if k not in GOSSIP_FIELDS} for h in client.get("/v1/hosts")["hosts"]]
    return out


GOSSIP_FIELDS = {"state", "incarnation", "report_age_s", "reported"}


INVALID = [
    # (method, path, body, words the message must contain)
    ("POST", "/v1/flavors", {"name": "f", "vcpus": 1, "ram_mb": 1, "bogus": 1}, ["unknown field 'bogus'"]),
    ("POST", "/v1/flavors", {"name": "f", "vcpus": "two", "ram_mb": 1}, ["field 'vcpus'"]),
    ("POST", "/v1/flavors", {"name": "f", "vcpus": 0, "ram_mb": 1}, ["field 'vcpus'", "greater than"]),
    ("POST", "/v1/flavors", {"name": "f", "vcpus": 1, "ram_mb": 1, "disk_gb": -1}, ["field 'disk_gb'"]),
    ("POST", "/v1/flavors", {"name": "f", "vcpus": 1}, ["missing field 'ram_mb'"]),
    ("POST", "/v1/flavors", {"name": "bad/name", "vcpus": 1, "ram_mb": 1}, ["field 'name'"]),
    ("POST", "/v1/flavors", {"name": "f", "vcpus": 1, "ram_mb": 1, "extra_specs": {"k": 1}},
     ["field 'extra_specs.k'"]),
    ("POST", "/v1/flavors", [1, 2], ["Invalid input"]),
    ("POST", "/v1/projects", {"name": ""}, ["field 'name'"]),
    ("POST", "/v1/projects", {"name": "p", "enabled": "maybe"}, ["field 'enabled'"]),
    ("PATCH", "/v1/projects/admin", {"nme": "x"}, ["unknown field 'nme'"]),
    ("POST", "/v1/users", {"name": "u1", "password": "short"}, ["field 'password'"]),
    ("POST", "/v1/users", {"name": "u1", "password": "long-enough", "role": "root"}, ["field 'role'"]),
    ("PATCH", "/v1/users/admin", {"password": 12345678}, ["field 'password'"]),
    ("POST", "/v1/keypairs", {"name": "k", "public_key": "ssh-rsa not-base64!"}, ["Keypair data is invalid"]),
    ("POST", "/v1/keypairs", {"name": "", "public_key": PUBLIC_KEY}, ["field 'name'"]),
    ("POST", "/v1/server-groups", {"name": "g", "policy": "strict-affinity"}, ["field 'policy'"]),
    ("PUT", "/v1/quotas/admin", {"quotas": {"cores": "many"}}, ["field 'quotas.cores'"]),
    ("PUT", "/v1/quotas/admin", {"quotas": {"bogus": 1}}, ["unknown quota resource 'bogus'"]),
    ("PUT", "/v1/quotas/admin", {"quotas": {"cores": -2}}, ["cores", "-1"]),
    ("PATCH", "/v1/hosts/hvd-test", {"reason": "x"}, ["missing field 'enabled'"]),
    ("POST", "/v1/flavors/x/extra-specs", {"set": "k=v"}, ["field 'set'"]),
    ("POST", "/v1/auth/tokens", {"username": "admin", "password": "x"}, ["missing field 'project'"]),
    ("GET", "/v1/flavors?limit=0", None, ["'limit'"]),
    ("GET", "/v1/flavors?limit=ten", None, ["'limit'"]),
    ("GET", "/v1/projects?marker=nope", None, ["marker 'nope'"]),
]


@pytest.mark.parametrize(("method", "path", "body", "words"), INVALID,
                         ids=[f"{m} {p}" for m, p, *_ in INVALID])
def test_invalid_input_is_400_naming_the_field_and_writes_nothing(
    admin: Client, method: str, path: str, body: Any, words: list[str]
) -> None:
    before = snapshot(admin)
    r = admin.call(method, path, body)
    assert r.status == 400, r.body
    for word in words:
        assert word in r.body["error"]["message"]
    assert snapshot(admin) == before


def test_body_that_is_not_json_is_400(admin: Client) -> None:
    r = admin.call("POST", "/v1/flavors", data=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert "not valid JSON" in r.body["error"]["message"]


def test_other_media_type_is_415(admin: Client) -> None:
    r = admin.call("POST", "/v1/projects", data=b"name=x", headers={"Content-Type": "text/plain"})
    assert r.status == 415
    assert r.body["error"]["code"] == 415


@pytest.mark.parametrize("path", ["/v1/projects", "/v1/auth/tokens"])
def test_body_over_the_limit_is_413_and_writes_nothing(admin: Client, path: str) -> None:
    before = snapshot(admin)
    r = admin.call("POST", path, {"name": "big", "description": "x" * (1024 * 1024 + 10)})
    assert r.status == 413, r.body
    assert set(r.body["error"]) == {"code", "title", "message", "request_id"}
    assert r.body["error"]["code"] == 413
    assert snapshot(admin) == before


DUPLICATES = [
    ("/v1/projects", {"name": "dup-project"}, "dup-project"),
    ("/v1/users", {"name": "dup-user", "password": "long-enough"}, "dup-user"),
    ("/v1/flavors", {"name": "dup.flavor", "vcpus": 1, "ram_mb": 64}, "dup.flavor"),
    ("/v1/flavors", {"name": "dup.flavor2", "id": "dup-id", "vcpus": 1, "ram_mb": 64}, "dup-id"),
    ("/v1/keypairs", {"name": "dup-key", "public_key": PUBLIC_KEY}, "dup-key"),
]


@pytest.mark.parametrize(("path", "body", "word"), DUPLICATES, ids=[d[2] for d in DUPLICATES])
def test_duplicate_names_are_409(admin: Client, path: str, body: dict[str, Any], word: str) -> None:
    assert admin.call("POST", path, body).status == 201
    before = snapshot(admin)
    again = {**body, "name": body["name"] + "x"} if "id" in body else body
    r = admin.call("POST", path, again)
    assert r.status == 409, r.body
    assert word in r.body["error"]["message"]
    assert snapshot(admin) == before


def test_quota_exceeded_is_403_with_the_numbers(live: LiveServer, admin: Client) -> None:
    assert admin.call("POST", "/v1/projects", {"name": "quota-project"}).status == 201
    member = live.user(admin, "quota-project", "member")
    limits = {"quotas": {"key_pairs": 1, "server_groups": 2}}
    assert admin.call("PUT", "/v1/quotas/quota-project", limits).status == 200
    assert member.call("POST", "/v1/keypairs", {"name": "k1", "public_key": PUBLIC_KEY}).status == 201
    r = member.call("POST", "/v1/keypairs", {"name": "k2", "public_key": PUBLIC_KEY})
    assert r.status == 403
    assert r.body["error"]["title"] == "Quota Exceeded"
    assert r.body["error"]["message"] == "Quota exceeded for key_pairs: requested 1, in use 1, limit 1"
    assert [k["name"] for k in member.get("/v1/keypairs")["keypairs"]] == ["k1"]
    for name in ("g1", "g2"):
        assert member.call("POST", "/v1/server-groups", {"name": name, "policy": "affinity"}).status == 201
    r = member.call("POST", "/v1/server-groups", {"name": "g3", "policy": "affinity"})
    assert r.status == 403
    assert r.body["error"]["message"] == "Quota exceeded for server_groups: requested 1, in use 2, limit 2"
    view = member.get("/v1/quotas/quota-project")["quotas"]
    assert view["server_groups"] == {"limit": 2, "in_use": 2}
    assert view["key_pairs"] == {"limit": 1, "in_use": 1}


def _unauthorized(r: Any) -> None:
    assert r.status == 401, r.body
    assert r.body["error"]["code"] == 401


def test_missing_and_unknown_tokens_are_401(admin: Client) -> None:
    anon = admin.anonymous()
    _unauthorized(anon.call("GET", "/v1/flavors"))
    unknown = "Bearer " + secrets.token_urlsafe(32)
    _unauthorized(anon.call("GET", "/v1/flavors", headers={"Authorization": unknown}))
    _unauthorized(anon.call("GET", "/v1/flavors", headers={"X-Auth-Token": "garbage"}))
    _unauthorized(anon.call("GET", "/v1/flavors", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}))
    # the OpenStack header works as well as Bearer
    assert anon.call("GET", "/v1/flavors", headers={"X-Auth-Token": str(admin.token)}).status == 200


def test_expired_token_is_401(live: LiveServer, admin: Client) -> None:
    me = admin.get("/v1/auth/token")
    token = secrets.token_urlsafe(32)
    live.propose(TokenIssue(token_hash=token_hash(token), user_id=me["user"]["id"],
                            project_id=me["project"]["id"], issued_at="2020-01-01T00:00:00.000000Z",
                            expires_at="2020-01-01T01:00:00.000000Z"))
    _unauthorized(Client(live.url, token).call("GET", "/v1/flavors"))


def test_revoked_token_is_401(live: LiveServer, admin: Client) -> None:
    other = live.admin()
    assert other.call("DELETE", "/v1/auth/token").status == 204
    _unauthorized(other.call("GET", "/v1/flavors"))
    _unauthorized(other.call("DELETE", "/v1/auth/token"))


def test_bad_credentials_are_401_and_issue_nothing(live: LiveServer, admin: Client) -> None:
    anon = admin.anonymous()
    for body in (
        {"username": "admin", "password": "wrong", "project": "admin"},
        {"username": "nobody", "password": "wrong", "project": "admin"},
        {"username": "admin", "password": "admin-secret", "project": "nowhere"},
    ):
        _unauthorized(anon.call("POST", "/v1/auth/tokens", body))
    # a user without a role on the project cannot scope a token to it
    assert admin.call("POST", "/v1/users", {"name": "roleless", "password": USER_PASSWORD}).status == 201
    creds = {"username": "roleless", "password": USER_PASSWORD, "project": "admin"}
    r = anon.call("POST", "/v1/auth/tokens", creds)
    _unauthorized(r)


def test_disabling_a_user_or_changing_a_password_ends_its_sessions(live: LiveServer, admin: Client) -> None:
    assert admin.call("POST", "/v1/projects", {"name": "session-project"}).status == 201
    user = live.user(admin, "session-project", "member", name="session-user")
    assert user.call("GET", "/v1/auth/token").status == 200
    assert user.call("PATCH", "/v1/users/session-user", {"password": "another-secret",
                                                          "original_password": USER_PASSWORD}).status == 200
    _unauthorized(user.call("GET", "/v1/auth/token"))
    user.login("session-user", "another-secret", "session-project")
    assert admin.call("PATCH", "/v1/users/session-user", {"enabled": False}).status == 200
    _unauthorized(user.call("GET", "/v1/auth/token"))
    _unauthorized(user.anonymous().call("POST", "/v1/auth/tokens", {"username": "session-user",
                                                                    "password": "another-secret",
                                                                    "project": "session-project"}))


def test_unknown_paths_and_methods(admin: Client) -> None:
    r = admin.call("GET", "/v1/nothing-here")
    assert r.status == 404
    assert "/v1/nothing-here" in r.body["error"]["message"]
    r = admin.call("DELETE", "/v1/flavors")
    assert r.status == 405
    assert "DELETE" in r.body["error"]["message"]


def test_missing_resources_are_404_naming_them(admin: Client) -> None:
    for path, word in (("/v1/flavors/nope", "Flavor nope"), ("/v1/projects/nope", "Project nope"),
                       ("/v1/users/nope", "User nope"), ("/v1/keypairs/nope", "Keypair nope"),
                       ("/v1/server-groups/nope", "Server group nope"), ("/v1/hosts/nope", "Host nope"),
                       ("/v1/quotas/nope", "Project nope")):
        r = admin.call("GET", path)
        assert r.status == 404, path
        assert word in r.body["error"]["message"]
    r = admin.call("PUT", "/v1/projects/admin/users/admin/roles/root")
    assert r.status == 404
    r = admin.call("DELETE", "/v1/projects/admin/users/admin/roles/reader")
    assert r.status == 404


def test_admin_cannot_delete_itself(admin: Client) -> None:
    r = admin.call("DELETE", "/v1/users/admin")
    assert r.status == 400
    assert admin.call("GET", "/v1/users/admin").status == 200
