"""Who is calling: the authenticated request context."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    user_id: str
    user_name: str
    project_id: str
    project_name: str
    roles: tuple[str, ...]
    token_hash: str
    expires_at: str

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
