"""One-time remote-console tokens (Nova's console auth tokens), kept in the owner host's memory.

A token is issued by the host that runs the server (requests are forwarded there) and redeemed
there, by the console WebSocket the returned URL points at. Why memory and not the catalog: a
token lives for minutes and is used once on one host; replicating it would cost two Raft writes
per console (issue, then spend) for nothing, since a restart of the owner ends every console
anyway. Only a SHA-256 of the token is kept, so a memory dump does not hand out consoles.

A grant is bound to the server, its project (the caller could see it) and the protocol; it expires after the TTL
and is spent by its first redemption, whatever the outcome. Time comes in as ``now`` (monotonic
seconds), so the rules are tested without waiting.

A grant also names the API token that asked for it (by the identity service's digest of it, never
the token): the console lives only as long as that token still validates and may still see the
server, and the server still runs on this host (``console_refusal``; the WebSocket relay asks it
periodically and closes with the refusal's code).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hvd.api.context import RequestContext
from hvd.compute.lifecycle import PowerState, VmState
from hvd.errors import Conflict, Forbidden, HvdError, Unauthorized
from hvd.identity.policy import Policy

MAX_OUTSTANDING = 1024  # unredeemed tokens per host; more requests are refused until some expire
MAX_PER_PROJECT = 64  # of those, per project: one tenant's flood must not refuse every other project's consoles
# WebSocket close codes of an attached console that lost its grant (4000-4999: private use, RFC 6455 7.4.2),
# the HTTP status of the same refusal plus 4000
CLOSE_TOKEN_INVALID = 4401
CLOSE_NOT_ALLOWED = 4403
CLOSE_SERVER_GONE = 4409
# the domain still has its serial port and display: a paused guest keeps its console (it is refused a new one)
_ATTACHED_VM_STATES = frozenset({VmState.ACTIVE, VmState.RESCUED, VmState.PAUSED})
_ATTACHED_POWER_STATES = frozenset({PowerState.RUNNING, PowerState.PAUSED})


class TooManyConsoleTokens(HvdError):
    status = 429
    title = "Too Many Requests"
    retryable = True


@dataclass(frozen=True)
class ConsoleGrant:
    """What a token allows: one console of ``protocol`` on ``server_id``, for ``project_id``, while
    the API token whose digest is ``issuer`` (``RequestContext.token_hash``) still allows it."""

    server_id: str
    project_id: str
    protocol: str
    expires: float  # monotonic seconds
    issuer: str  # the identity service's SHA-256 of the API token that asked: never the token itself
    user: str  # the name of its user, for the log


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode(errors="replace")).hexdigest()


class ConsoleTokens:
    """Outstanding grants of this host, by token digest."""

    def __init__(self, ttl_s: float, max_outstanding: int = MAX_OUTSTANDING,
                 max_per_project: int = MAX_PER_PROJECT) -> None:
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        self.max_per_project = max_per_project
        self._grants: dict[str, ConsoleGrant] = {}

    def __len__(self) -> int:
        return len(self._grants)

    def _purge(self, now: float) -> None:
        for key in [k for k, g in self._grants.items() if g.expires <= now]:
            del self._grants[key]

    def issue(self, server_id: str, project_id: str, protocol: str, now: float, *,
              issuer: RequestContext) -> tuple[str, ConsoleGrant]:
        """A new token and its grant for the caller ``issuer``; TooManyConsoleTokens (429) when too
        many are outstanding, on this host or for ``project_id``."""
        self._purge(now)
        if len(self._grants) >= self.max_outstanding:
            raise TooManyConsoleTokens(f"{len(self._grants)} console URLs are outstanding on this host; retry"
                                       f" within {self.ttl_s:.0f} s")
        if sum(g.project_id == project_id for g in self._grants.values()) >= self.max_per_project:
            raise TooManyConsoleTokens(f"{self.max_per_project} console URLs of project {project_id} are outstanding"
                                       f" on this host; use or let them expire (within {self.ttl_s:.0f} s)")
        token = secrets.token_urlsafe(32)
        grant = ConsoleGrant(server_id, project_id, protocol, now + self.ttl_s, issuer.token_hash, issuer.user_name)
        self._grants[_digest(token)] = grant
        return token, grant

    def redeem(self, token: str, protocol: str, now: float) -> ConsoleGrant:
        """Spend ``token`` (it never works again) and return its grant.

        Unauthorized (401) when it is unknown, already used or expired; Forbidden (403) when it was
        issued for another protocol.
        """
        grant = self._grants.pop(_digest(token), None) if token else None
        self._purge(now)
        if grant is None:
            raise Unauthorized("console token is unknown or already used (a console URL works once)")
        if grant.expires <= now:
            raise Unauthorized(f"console token expired (console URLs are valid for {self.ttl_s:.0f} s)")
        if grant.protocol != protocol:
            raise Forbidden(f"console token is for a {grant.protocol} console, not {protocol}")
        return grant


def check_grant(grant: ConsoleGrant, server: dict[str, object] | None, host: str) -> None:
    """The server a redeemed grant names is still the one it was issued for: not deleted, in the
    grant's project, and running on ``host`` (this one). Conflict (409) otherwise."""
    if server is None or server.get("deleted_at"):
        raise Conflict(f"server {grant.server_id} no longer exists")
    if server.get("project_id") != grant.project_id:
        raise Conflict(f"server {grant.server_id} is not in the project the console was issued for")
    if server.get("host") != host:
        raise Conflict(f"server {grant.server_id} is no longer on host {host}; ask for a new console URL")


@dataclass(frozen=True)
class Refusal:
    """Why a console must close (or not open): a WebSocket close code and a short message."""

    code: int
    message: str

    def error(self) -> HvdError:
        """The same refusal as an HTTP error, for a console not yet attached."""
        kind = {CLOSE_TOKEN_INVALID: Unauthorized, CLOSE_NOT_ALLOWED: Forbidden}.get(self.code, Conflict)
        return kind(self.message)


def console_refusal(grant: ConsoleGrant, caller: RequestContext | None, policy: Policy,
                    server: Mapping[str, Any] | None, host: str) -> Refusal | None:
    """Why the console ``grant`` allows must end now, or None while it may stay.

    ``caller`` is what the grant's issuing API token validates to now (None when it no longer
    does: revoked, expired, its user or project disabled or deleted, no role left on the project);
    ``server`` the server's catalog row as this host sees it. Checked in this order, so a caller
    who lost access learns nothing more about the server: the token, then whether its roles still
    allow consoles of the grant's project (``compute:remote_console``; its own project, or any
    for ``scope:all_projects``), then the server (``check_grant``, and its domain still running
    or paused here).
    """
    if caller is None:
        return Refusal(CLOSE_TOKEN_INVALID, "the token that opened this console is no longer valid")
    if not policy.allowed(caller.roles, "compute:remote_console") or (
            caller.project_id != grant.project_id and not policy.all_projects(caller.roles)):
        return Refusal(CLOSE_NOT_ALLOWED, "the token that opened this console may no longer open it")
    try:
        check_grant(grant, dict(server) if server is not None else None, host)
    except Conflict as exc:
        return Refusal(CLOSE_SERVER_GONE, exc.message)
    assert server is not None
    if server.get("vm_state") not in _ATTACHED_VM_STATES or server.get("power_state") not in _ATTACHED_POWER_STATES:
        return Refusal(CLOSE_SERVER_GONE, f"server {grant.server_id} is no longer running")
    return None
