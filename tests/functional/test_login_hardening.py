"""Logins against a daemon in this process: hashing never runs on the event loop (the loop keeps
answering while a burst of bad logins hashes), unknown and known users cost the same number of
hashes, failures are throttled per user and per source (429 with Retry-After), old-cost hashes
are re-hashed on login, and changing one's own password needs the current one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hvd.catalog.cmd_identity import RoleGrant, UserCreate
from hvd.identity import passwords
from hvd.identity.service import now_iso
from hvd.identity.throttle import FailureThrottle
from tests.conftest import Api, free_port, serve_in_process, write_config


class Hashes:
    """Counts scrypt runs and the threads they ran on; `delay` makes each one last longer."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            return len(self.threads)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hashes]:
    seen = Hashes()
    real = passwords._scrypt

    def counted(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        with seen.lock:
            seen.threads.append(threading.current_thread().name)
        if seen.delay:
            time.sleep(seen.delay)  # stands in for a slow machine; blocks whichever thread runs it
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(passwords, "_scrypt", counted)
    yield seen


@pytest.fixture
async def env(tmp_path: Path, hashes: Hashes) -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    config = load_config(write_config(tmp_path / "hvd", free_port()))
    async with serve_in_process(config) as (services, url), aiohttp.ClientSession() as session:
        admin = Api(session, url)
        await admin.login("admin", "admin-secret", "admin")
        status, body = await admin.call("POST", "/v1/users", {"name": "alice", "password": "password-1",
                                                              "project": "admin", "role": "member"})
        assert status == 201, body
        yield {"admin": admin, "api": Api(session, url), "services": services, "hashes": hashes}


def login(api: Api, user: str, password: str) -> Any:
    return api.call("POST", "/v1/auth/tokens", {"username": user, "password": password, "project": "admin"})


async def test_a_burst_of_bad_logins_hashes_off_the_loop_and_the_loop_keeps_answering(env: dict[str, Any]) -> None:
    api, hashes = env["api"], env["hashes"]
    hashes.delay = 0.2  # 16 logins x 0.2 s on 2 hashing threads: well over a second of hashing
    hashes.threads.clear()
    logins = [asyncio.create_task(login(api, f"nobody-{i}", "wrong-password")) for i in range(16)]
    await asyncio.sleep(0.05)
    status, health = await api.call("GET", "/healthz")
    still_hashing = sum(not t.done() for t in logins)
    results = await asyncio.gather(*logins)
    assert status == 200, health
    assert still_hashing > 0, "/healthz was answered while the logins were hashing"
    assert {s for s, _ in results} == {401}
    assert hashes.threads and all(name.startswith("hvd-scrypt") for name in hashes.threads), hashes.threads
    assert threading.main_thread().name not in hashes.threads


async def test_unknown_and_known_users_cost_the_same_number_of_hashes(env: dict[str, Any]) -> None:
    api, hashes = env["api"], env["hashes"]
    counts = {}
    for user in ("alice", "nobody", "alice", "nobody-else"):
        before = hashes.count()
        status, body = await login(api, user, "wrong-password")
        assert status == 401 and body["error"]["message"] == "The request you have made requires authentication."
        counts.setdefault(user.split("-")[0], set()).add(hashes.count() - before)
    assert counts == {"alice": {1}, "nobody": {1}}


async def test_failed_logins_are_throttled_per_user_and_per_source(env: dict[str, Any]) -> None:
    api = env["api"]
    for _ in range(5):
        assert (await login(api, "alice", "wrong-password"))[0] == 401
    async with api.session.post(api.url + "/v1/auth/tokens", json={"username": "alice", "password": "password-1",
                                                                    "project": "admin"}) as resp:
        assert resp.status == 429, await resp.text()
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert "too many failed logins" in (await resp.json())["error"]["message"].lower()
    # another user from the same address still logs in: the address has failed 5 times, not 20
    assert (await login(api, "admin", "admin-secret"))[0] == 201
    for i in range(15):
        assert (await login(api, f"guess-{i}", "x"))[0] == 401
    assert (await login(api, "admin", "admin-secret"))[0] == 429, "the address is throttled now"


def test_throttle_window_slides_and_success_clears_the_user() -> None:
    now = [0.0]
    throttle = FailureThrottle({"source": (3, 10.0), "user": (2, 10.0)}, lambda: now[0], max_keys=4)
    keys = [("source", "a"), ("user", "u")]
    throttle.failed(keys)
    now[0] = 4.0
    throttle.failed(keys)
    assert throttle.retry_after(keys) == pytest.approx(6.0)  # the first failure leaves at t=10
    assert throttle.retry_after([("source", "a")]) == 0
    now[0] = 10.0
    assert throttle.retry_after(keys) == 0
    throttle.failed(keys)
    throttle.clear(("user", "u"))
    assert throttle.retry_after([("user", "u")]) == 0
    for i in range(10):  # memory stays bounded
        throttle.failed([("user", f"x{i}")])
    assert len(throttle._failures) <= 4


async def test_an_old_cost_hash_still_verifies_and_is_rehashed_on_login(env: dict[str, Any],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    services = env["services"]
    with monkeypatch.context() as m:
        m.setattr(passwords, "N", 2**14)
        old = passwords.hash_password("password-2")
    assert old.startswith("scrypt$16384$") and passwords.needs_rehash(old)
    await services.catalog.propose(UserCreate(id="u-old", name="olduser", password_hash=old, created_at=now_iso()))
    admin_project = (await env["admin"].call("GET", "/v1/auth/token"))[1]["project"]["id"]
    await services.catalog.propose(RoleGrant(user_id="u-old", project_id=admin_project, role="member"))
    assert (await login(env["api"], "olduser", "password-2"))[0] == 201
    stored = await services.catalog.read(lambda c: c.execute("SELECT password_hash FROM users WHERE id='u-old'")
                                         .fetchone()[0])
    assert stored.startswith(f"scrypt${passwords.N}$") and not passwords.needs_rehash(stored)
    assert (await login(env["api"], "olduser", "password-2"))[0] == 201


async def test_changing_ones_own_password_needs_the_current_one(env: dict[str, Any]) -> None:
    alice = env["api"].as_other()
    await alice.login("alice", "password-1", "admin")
    me = (await alice.call("GET", "/v1/auth/token"))[1]["user"]["id"]
    status, body = await alice.call("PATCH", f"/v1/users/{me}", {"password": "password-new"})
    assert status == 400 and "original_password" in body["error"]["message"]
    status, body = await alice.call("PATCH", f"/v1/users/{me}", {"password": "password-new",
                                                                 "original_password": "not-it"})
    assert status == 401 and "original password" in body["error"]["message"]
    status, body = await alice.call("PATCH", f"/v1/users/{me}", {"password": "password-new",
                                                                 "original_password": "password-1"})
    assert status == 200, body
    assert (await login(env["api"], "alice", "password-new"))[0] == 201
    # an admin resets another user's password without knowing it
    assert (await env["admin"].call("PATCH", f"/v1/users/{me}", {"password": "password-3"}))[0] == 200

