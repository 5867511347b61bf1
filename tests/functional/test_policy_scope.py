"""Cross-project scope is its own policy rule: relaxing action rules (`network:provider`,
`image:publicize`, `flavor:manage`, `compute:ignore_lock`) to members grants those actions, not
other projects' resources. A reader's listing of security groups writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hvd.catalog.state import read_applied_index
from tests.conftest import Api, free_port, serve_in_process, write_config

RELAXED = """
[identity.policy]
"network:provider" = "member"
"image:publicize" = "member"
"flavor:manage" = "member"
"compute:ignore_lock" = "member"
"""


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    config = load_config(write_config(tmp_path / "hvd", free_port(), extra=RELAXED))
    async with serve_in_process(config) as (services, url), aiohttp.ClientSession() as session:
        admin = Api(session, url)
        await admin.login("admin", "admin-secret", "admin")
        users = {}
        for project, role in (("alpha", "member"), ("beta", "member"), ("gamma", "reader")):
            assert (await admin.call("POST", "/v1/projects", {"name": project}))[0] == 201
            status, body = await admin.call("POST", "/v1/users", {"name": f"{project}-user", "password": "password-1",
                                                                  "project": project, "role": role})
            assert status == 201, body
            users[project] = Api(session, url)
            await users[project].login(f"{project}-user", "password-1", project)
        yield {"admin": admin, **users, "services": services}


async def call(api: Api, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, out = await api.call(method, path, body)
    assert got == status, (method, path, got, out)
    return out


async def test_relaxed_action_rules_do_not_open_other_projects(env: dict[str, Any]) -> None:
    a, b, admin = env["alpha"], env["beta"], env["admin"]
    net = await call(a, "POST", "/v1/networks", {"name": "secret"}, 201)
    assert net["network_type"] is not None, "network:provider relaxed: members see provider fields"
    image = await call(a, "POST", "/v1/images", {"name": "private-img", "disk_format": "qcow2"}, 201)
    flavor = await call(b, "POST", "/v1/flavors", {"name": "mine", "vcpus": 1, "ram_mb": 64, "disk_gb": 1,
                                                   "is_public": False}, 201)
    assert [n["id"] for n in (await call(b, "GET", "/v1/networks"))["networks"]] == []
    await call(b, "GET", f"/v1/networks/{net['id']}", status=404)
    await call(b, "DELETE", f"/v1/networks/{net['id']}", status=404)
    assert image["id"] not in {i["id"] for i in (await call(b, "GET", "/v1/images"))["images"]}
    await call(b, "GET", f"/v1/images/{image['id']}", status=404)
    assert flavor["id"] not in {f["id"] for f in (await call(a, "GET", "/v1/flavors"))["flavors"]}
    await call(a, "GET", f"/v1/flavors/{flavor['id']}", status=404)
    # admin still sees everything
    assert net["id"] in {n["id"] for n in (await call(admin, "GET", "/v1/networks"))["networks"]}
    assert image["id"] in {i["id"] for i in (await call(admin, "GET", "/v1/images"))["images"]}


async def test_a_readers_listing_of_security_groups_writes_nothing(env: dict[str, Any]) -> None:
    catalog = env["services"].catalog
    before = await catalog.read(read_applied_index)
    for _ in range(3):
        assert (await call(env["gamma"], "GET", "/v1/security-groups"))["security_groups"] == []
    assert await catalog.read(read_applied_index) == before, "a GET proposed a write"
    # a member's first listing makes its default group once, later listings write nothing
    assert [g["name"] for g in (await call(env["alpha"], "GET", "/v1/security-groups"))["security_groups"]] == [
        "default"]
    after_first = await catalog.read(read_applied_index)
    await call(env["alpha"], "GET", "/v1/security-groups")
    assert await catalog.read(read_applied_index) == after_first
