"""Validated tokens are cached, but never past an identity change (regression guard for the cache)."""

from __future__ import annotations

from typing import Any

import pytest

from hvd.identity import service as identity_service
from tests.conftest import Api


async def test_cached_validation_ends_with_role_revocation_and_user_disable(
        admin_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    real_lookup = identity_service._lookup_token

    def counting_lookup(conn: Any, digest: str) -> Any:
        lookups.append(digest)
        return real_lookup(conn, digest)

    monkeypatch.setattr(identity_service, "_lookup_token", counting_lookup)
    await admin_api.call("POST", "/v1/users", {"name": "carol", "password": "carol-secret", "project": "demo",
                                               "role": "member"})
    carol = admin_api.as_other()
    await carol.login("carol", "carol-secret", "demo")
    lookups.clear()
    for _ in range(3):  # validated once, then served from the cache
        status, _ = await carol.call("GET", "/v1/flavors")
        assert status == 200
    assert len(lookups) == 1, lookups  # one database lookup for three requests
    status, _ = await admin_api.call("DELETE", "/v1/projects/demo/users/carol/roles/member")
    assert status == 204
    status, err = await carol.call("GET", "/v1/flavors")
    assert status == 401, err
    # a granted role shows at once too (a reader cannot create keypairs, a member can)
    await admin_api.call("PUT", "/v1/projects/demo/users/carol/roles/reader")
    await carol.login("carol", "carol-secret", "demo")
    status, _ = await carol.call("POST", "/v1/keypairs", {"name": "k"})
    assert status == 403
    await admin_api.call("PUT", "/v1/projects/demo/users/carol/roles/member")
    status, _ = await carol.call("POST", "/v1/keypairs", {"name": "k"})
    assert status == 201
    _, user = await admin_api.call("GET", "/v1/users/carol")
    await admin_api.call("PATCH", f"/v1/users/{user['id']}", {"enabled": False})
    status, _ = await carol.call("GET", "/v1/flavors")
    assert status == 401
