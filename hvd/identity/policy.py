"""Role-based policy: rule name -> the weakest role that may do it.

Roles rank admin > member > reader; 'any' = any authenticated user. Defaults follow the seeds:
forced host, migrations, evacuation, provider network fields and host management are admin-only;
admin ignores instance locks; any member may unlock. Config `[identity] policy` overrides rules.

Seeing and acting on OTHER projects' resources is its own rule, `scope:all_projects`
(`Policy.all_projects`), so relaxing an action rule (`image:publicize`, `network:provider`,
`compute:ignore_lock`, `flavor:manage`, ...) to members grants that action only, never every
project's resources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from hvd.errors import Forbidden

Level = Literal["admin", "member", "reader", "any"]

DEFAULT_RULES: dict[str, Level] = {
    "identity:manage": "admin",
    "identity:read_self": "any",
    "quota:set": "admin",
    "quota:read": "reader",
    "flavor:manage": "admin",
    "flavor:read": "reader",
    "host:manage": "admin",
    "host:read": "admin",
    "cluster:manage": "admin",
    "cluster:read": "admin",
    "keypair:manage": "member",
    "keypair:read": "reader",
    "server_group:manage": "member",
    "server_group:read": "reader",
    "image:manage": "member",
    "image:publicize": "admin",
    "image:read": "reader",
    "compute:create": "member",
    "compute:create:forced_host": "admin",
    "compute:read": "reader",
    "compute:action": "member",
    "compute:delete": "member",
    "compute:unlock": "member",
    "compute:unlock_override": "admin",
    "compute:ignore_lock": "admin",
    "compute:migrate": "admin",
    "compute:live_migrate": "admin",
    "compute:evacuate": "admin",
    "compute:remote_console": "member",
    "network:manage": "member",
    "network:read": "reader",
    "network:provider": "admin",
    "network:external": "admin",
    "volume:create": "member",
    "volume:read": "reader",
    "volume:manage": "member",
    "volume_type:manage": "admin",
    "volume:reset_status": "admin",
    "scope:all_projects": "admin",
}

_RANK = {"reader": 1, "member": 2, "admin": 3}


def role_satisfies(roles: Iterable[str], level: Level) -> bool:
    if level == "any":
        return True
    best = max((_RANK.get(r, 0) for r in roles), default=0)
    return best >= _RANK[level]


class Policy:
    """Answers whether a set of roles passes a rule."""

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        rules: dict[str, str] = dict(DEFAULT_RULES)
        for name, level in (overrides or {}).items():
            if level not in ("admin", "member", "reader", "any"):
                raise ValueError(f"policy rule {name}: level must be admin|member|reader|any, got {level!r}")
            rules[name] = level
        self.rules = rules

    def allowed(self, roles: Iterable[str], rule: str) -> bool:
        level = self.rules.get(rule, "admin")  # an unknown rule is admin-only: fail closed
        return role_satisfies(roles, level)  # type: ignore[arg-type]

    def all_projects(self, roles: Iterable[str]) -> bool:
        """True if `roles` see and act on every project's resources (not only their own)."""
        return self.allowed(roles, "scope:all_projects")

    def enforce(self, roles: Iterable[str], rule: str) -> None:
        if not self.allowed(roles, rule):
            raise Forbidden(f"Policy doesn't allow {rule} to be performed.")
