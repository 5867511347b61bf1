"""Identity: authenticate users, issue and validate tokens, bootstrap the first admin.

Password hashing (scrypt, tens of milliseconds of CPU) never runs on the event loop: it goes
to a small executor of its own, with a bounded number of logins in flight (more answer 429),
so a burst of logins cannot stall Raft heartbeats or other requests. A login does the same
work (one hash) whether the user exists or not, so timing does not reveal user names, and
failures are throttled per source address and per user name (429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hvd.api.context import RequestContext
from hvd.catalog.cmd_identity import ProjectCreate, RoleGrant, TokenIssue, TokenPurge, UserCreate, UserUpdate
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import Conflict, Unauthorized
from hvd.identity.passwords import hash_password, needs_rehash, verify_password
from hvd.identity.throttle import FailureThrottle, TooManyRequests
from hvd.private_files import fsync_dir, write_private

log = logging.getLogger(__name__)

_BAD_CREDENTIALS = "The request you have made requires authentication."
# scrypt is CPU-bound and releases the GIL: two threads per process (this machine's cores), shared
# by every IdentityService, so hashing never takes more than that from the loop's process
_HASHER = ThreadPoolExecutor(2, thread_name_prefix="hvd-scrypt")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds_since(timestamp: str) -> float:
    """Seconds from ``timestamp`` (``now_iso``'s form; a naive one is UTC) to now."""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()


def token_hash(token: str) -> str:
    # tokens are 256 random bits: a fast hash is enough, and keeps validation cheap
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: str
    context: RequestContext


def _lookup_login(conn: sqlite3.Connection, username: str, project: str) -> dict[str, Any] | None:
    user = fetch_one(conn, "SELECT * FROM users WHERE name=? OR id=?", (username, username))
    proj = fetch_one(conn, "SELECT * FROM projects WHERE name=? OR id=?", (project, project))
    if user is None or proj is None:
        return None
    roles = [
        r["role"]
        for r in fetch_all(
            conn, "SELECT role FROM assignments WHERE user_id=? AND project_id=?", (user["id"], proj["id"])
        )
    ]
    return {"user": user, "project": proj, "roles": roles}


def _lookup_token(conn: sqlite3.Connection, digest: str) -> dict[str, Any] | None:
    row = fetch_one(
        conn,
        "SELECT t.*, u.name AS user_name, u.enabled AS user_enabled, p.name AS project_name,"
        " p.enabled AS project_enabled FROM tokens t JOIN users u ON u.id=t.user_id"
        " JOIN projects p ON p.id=t.project_id WHERE t.token_hash=?",
        (digest,),
    )
    if row is None:
        return None
    row["roles"] = [
        r["role"]
        for r in fetch_all(
            conn, "SELECT role FROM assignments WHERE user_id=? AND project_id=?", (row["user_id"], row["project_id"])
        )
    ]
    return row


class IdentityService:
    """Keystone's faithful subset over the catalog."""

    CACHE_SIZE = 10_000
    HASH_IN_FLIGHT = 16  # logins hashing or waiting for a hash; more are answered 429 at once
    # (failures, window s): one address may fail 20 times a minute, one user name 5 times
    FAILURE_LIMITS = {"source": (20, 60.0), "user": (5, 60.0)}

    def __init__(self, catalog: Catalog, token_ttl_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.catalog = catalog
        self.token_ttl_s = token_ttl_s
        # token hash -> (context, identity generation it was read at); see CatalogState
        self._validated: dict[str, tuple[RequestContext, int]] = {}
        self._in_flight = 0
        self._dummy_hash: str | None = None  # verified for unknown users: the same work as a real one
        self.throttle = FailureThrottle(dict(self.FAILURE_LIMITS), clock)

    async def hash(self, password: str) -> str:
        """A new hash of `password`, computed off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(_HASHER, hash_password, password)

    async def _ensure_dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    async def _verify(self, password: str, stored: str | None) -> bool:
        if stored is None:
            stored = await self._ensure_dummy()
        return await asyncio.get_running_loop().run_in_executor(_HASHER, verify_password, password, stored)

    async def _hash_slot(self, keys: list[tuple[str, str]]) -> None:
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            raise TooManyRequests("Too many failed logins; try again later", wait)
        if self._in_flight >= self.HASH_IN_FLIGHT:
            raise TooManyRequests("Too many logins in progress; try again shortly", 1)

    async def check_password(self, user_id: str, password: str, source: str = "") -> None:
        """Unauthorized unless `password` is the user's current one (throttled like a login)."""
        row = await self.catalog.read(fetch_one, "SELECT name, password_hash FROM users WHERE id=?", (user_id,))
        keys = [("source", source), ("user", str(row["name"] if row else user_id).casefold())]
        await self._hash_slot(keys)
        self._in_flight += 1
        try:
            ok = await self._verify(password, row["password_hash"] if row else None)
        finally:
            self._in_flight -= 1
        if not ok:
            self.throttle.failed(keys)
            raise Unauthorized("The original password is wrong.")

    async def issue_token(self, username: str, password: str, project: str, source: str = "") -> IssuedToken:
        """Authenticate and issue a token. Unauthorized on bad credentials (the same answer and
        work for an unknown user); TooManyRequests while the source or user name is throttled
        or too many logins are hashing."""
        keys = [("source", source), ("user", username.casefold())]
        await self._hash_slot(keys)
        self._in_flight += 1
        try:
            found = await self.catalog.read(_lookup_login, username, project)
            stored = found["user"]["password_hash"] if found else None
            ok = await self._verify(password, stored)
        finally:
            self._in_flight -= 1
        if not found or not ok or not found["user"]["enabled"] or not found["project"]["enabled"]:
            self.throttle.failed(keys)
            raise Unauthorized(_BAD_CREDENTIALS)
        self.throttle.clear(("user", username.casefold()))
        if not found["roles"]:
            raise Unauthorized(f"user {username} has no role on project {project}")
        if stored is not None and needs_rehash(stored):  # a hash from a weaker cost: store today's
            await self.catalog.propose(UserUpdate(id=found["user"]["id"], password_hash=await self.hash(password)))
        token = secrets.token_urlsafe(32)
        issued = datetime.now(UTC)
        expires = (issued + timedelta(seconds=self.token_ttl_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        digest = token_hash(token)
        await self.catalog.propose(
            TokenIssue(
                token_hash=digest,
                user_id=found["user"]["id"],
                project_id=found["project"]["id"],
                issued_at=issued.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                expires_at=expires,
            )
        )
        ctx = RequestContext(
            user_id=found["user"]["id"],
            user_name=found["user"]["name"],
            project_id=found["project"]["id"],
            project_name=found["project"]["name"],
            roles=tuple(sorted(found["roles"])),
            token_hash=digest,
            expires_at=expires,
        )
        return IssuedToken(token=token, expires_at=expires, context=ctx)

    async def validate(self, token: str) -> RequestContext:
        """The context of a valid token; Unauthorized when missing, expired, revoked or orphaned.

        Answers are cached until the next identity change is applied (a revocation, a role or
        user change) or the token expires, which saves a database round trip per request.
        """
        return await self.validate_hash(token_hash(token))

    async def validate_hash(self, digest: str) -> RequestContext:
        """``validate`` for the token whose ``token_hash`` is ``digest`` (a context's ``token_hash``):
        for holders that keep only the digest, such as an attached console (hvd/api/v1/consoles.py)."""
        generation = self.catalog.state.identity_generation  # read before the lookup it guards
        cached = self._validated.get(digest)
        if cached is not None and cached[1] == generation and cached[0].expires_at > now_iso():
            return cached[0]
        row = await self.catalog.read(_lookup_token, digest)
        if (
            row is None
            or row["revoked"]
            or row["expires_at"] <= now_iso()
            or not row["user_enabled"]
            or not row["project_enabled"]
            or not row["roles"]
        ):
            raise Unauthorized(_BAD_CREDENTIALS)
        ctx = RequestContext(
            user_id=row["user_id"],
            user_name=row["user_name"],
            project_id=row["project_id"],
            project_name=row["project_name"],
            roles=tuple(sorted(row["roles"])),
            token_hash=row["token_hash"],
            expires_at=row["expires_at"],
        )
        if len(self._validated) >= self.CACHE_SIZE:
            self._validated.clear()
        self._validated[digest] = (ctx, generation)
        return ctx

    async def purge_expired(self) -> None:
        await self.catalog.propose(TokenPurge(now=now_iso()))

    async def bootstrap(self, admin_password: str, openrc_path: Path, api_url: str, cacert: str = "") -> bool:
        """On first start create project+user admin (role admin), project demo and user demo
        (role member); write admin credentials to `openrc_path` (0600), with HVD_CACERT = ``cacert``
        (the cluster CA, to verify an HTTPS API) when given. False if already done.
        Also prepares the hash an unknown user's login is checked against (start-up pays it)."""
        await self._ensure_dummy()
        count = await self.catalog.read(lambda c: c.execute("SELECT COUNT(*) FROM users").fetchone()[0])
        pending = openrc_path.with_name(openrc_path.name + ".new")
        if count:
            if pending.exists():
                log.warning("%s holds the admin password of a bootstrap interrupted by a crash: if admin cannot"
                            " log in with %s, use it", pending, openrc_path)
            return False
        password = admin_password or secrets.token_urlsafe(18)
        demo_password = secrets.token_urlsafe(18)
        created = now_iso()
        admin_project, demo_project = str(uuid.uuid4()), str(uuid.uuid4())
        admin_user, demo_user = str(uuid.uuid4()), str(uuid.uuid4())
        admin_hash = await self.hash(password)
        demo_hash = await self.hash(demo_password)
        openrc_path.parent.mkdir(parents=True, exist_ok=True)
        text = (
            f"export HVD_URL={api_url}\nexport HVD_USERNAME=admin\nexport HVD_PASSWORD={password}\n"
            "export HVD_PROJECT=admin\n"
            + (f"export HVD_CACERT={cacert}\n" if cacert else "")
            + f"# demo user (role member in project demo): HVD_USERNAME=demo HVD_PASSWORD={demo_password}\n"
        )
        # on disk before the admin exists: a crash after its commit must not lose a generated password
        await asyncio.to_thread(write_private, pending, text)
        commands = (
            ProjectCreate(id=admin_project, name="admin", description="Bootstrap admin project", created_at=created),
            ProjectCreate(id=demo_project, name="demo", description="Bootstrap demo project", created_at=created),
            UserCreate(id=admin_user, name="admin", password_hash=admin_hash, created_at=created),
            UserCreate(id=demo_user, name="demo", password_hash=demo_hash, created_at=created),
            RoleGrant(user_id=admin_user, project_id=admin_project, role="admin"),
            RoleGrant(user_id=demo_user, project_id=demo_project, role="member"),
        )
        try:
            for cmd in commands:
                await self.catalog.propose(cmd)
        except Conflict:
            pending.unlink(missing_ok=True)  # another member bootstrapped: this password was never used
            raise
        os.replace(pending, openrc_path)
        await asyncio.to_thread(fsync_dir, openrc_path.parent)
        log.info("bootstrapped identity: admin credentials written to %s", openrc_path)
        return True
