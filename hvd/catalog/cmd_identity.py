"""Apply handlers: projects, users, role assignments, tokens."""

from __future__ import annotations

import sqlite3
from typing import Literal

from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import fetch_one, require
from hvd.errors import Conflict, NotFound, Unauthorized

Role = Literal["admin", "member", "reader"]


class ProjectCreate(Command):
    type: Literal["project.create"] = "project.create"
    id: str
    name: str
    description: str = ""
    enabled: bool = True
    created_at: str


class ProjectUpdate(Command):
    type: Literal["project.update"] = "project.update"
    id: str
    name: str | None = None
    description: str | None = None
    enabled: bool | None = None


class ProjectDelete(Command):
    type: Literal["project.delete"] = "project.delete"
    id: str


class UserCreate(Command):
    type: Literal["user.create"] = "user.create"
    id: str
    name: str
    password_hash: str
    email: str = ""
    enabled: bool = True
    created_at: str


class UserUpdate(Command):
    type: Literal["user.update"] = "user.update"
    id: str
    password_hash: str | None = None
    email: str | None = None
    enabled: bool | None = None


class UserDelete(Command):
    type: Literal["user.delete"] = "user.delete"
    id: str


class RoleGrant(Command):
    type: Literal["role.grant"] = "role.grant"
    user_id: str
    project_id: str
    role: Role


class RoleRevoke(Command):
    type: Literal["role.revoke"] = "role.revoke"
    user_id: str
    project_id: str
    role: Role


class TokenIssue(Command):
    type: Literal["token.issue"] = "token.issue"
    token_hash: str
    user_id: str
    project_id: str
    issued_at: str
    expires_at: str


class TokenRevoke(Command):
    type: Literal["token.revoke"] = "token.revoke"
    token_hash: str


class TokenPurge(Command):
    """Forget tokens that expired before `now`."""

    type: Literal["token.purge"] = "token.purge"
    now: str


def _name_free(conn: sqlite3.Connection, table: str, name: str, what: str, own_id: str = "") -> None:
    row = fetch_one(conn, f"SELECT id FROM {table} WHERE name=?", (name,))
    if row is not None and row["id"] != own_id:
        raise Conflict(f"{what} named '{name}' already exists")


@handles(ProjectCreate)
def project_create(conn: sqlite3.Connection, cmd: ProjectCreate) -> Result:
    _name_free(conn, "projects", cmd.name, "a project")
    conn.execute(
        "INSERT INTO projects (id, name, description, enabled, created_at) VALUES (?,?,?,?,?)",
        (cmd.id, cmd.name, cmd.description, int(cmd.enabled), cmd.created_at),
    )
    return {"id": cmd.id}


@handles(ProjectUpdate)
def project_update(conn: sqlite3.Connection, cmd: ProjectUpdate) -> Result:
    row = require(conn, "projects", "id", cmd.id, "Project")
    if cmd.name is not None:
        _name_free(conn, "projects", cmd.name, "a project", own_id=cmd.id)
    conn.execute(
        "UPDATE projects SET name=?, description=?, enabled=? WHERE id=?",
        (
            cmd.name if cmd.name is not None else row["name"],
            cmd.description if cmd.description is not None else row["description"],
            int(cmd.enabled if cmd.enabled is not None else row["enabled"]),
            cmd.id,
        ),
    )
    if cmd.enabled is False:
        conn.execute("UPDATE tokens SET revoked=1 WHERE project_id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(ProjectDelete)
def project_delete(conn: sqlite3.Connection, cmd: ProjectDelete) -> Result:
    require(conn, "projects", "id", cmd.id, "Project")
    live = conn.execute(
        "SELECT COUNT(*) FROM instances WHERE project_id=? AND deleted_at IS NULL", (cmd.id,)
    ).fetchone()[0]
    if live:
        raise Conflict(f"project {cmd.id} still owns {live} server(s); delete them first")
    conn.execute("DELETE FROM projects WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(UserCreate)
def user_create(conn: sqlite3.Connection, cmd: UserCreate) -> Result:
    _name_free(conn, "users", cmd.name, "a user")
    conn.execute(
        "INSERT INTO users (id, name, password_hash, enabled, email, created_at) VALUES (?,?,?,?,?,?)",
        (cmd.id, cmd.name, cmd.password_hash, int(cmd.enabled), cmd.email, cmd.created_at),
    )
    return {"id": cmd.id}


@handles(UserUpdate)
def user_update(conn: sqlite3.Connection, cmd: UserUpdate) -> Result:
    row = require(conn, "users", "id", cmd.id, "User")
    conn.execute(
        "UPDATE users SET password_hash=?, email=?, enabled=? WHERE id=?",
        (
            cmd.password_hash or row["password_hash"],
            cmd.email if cmd.email is not None else row["email"],
            int(cmd.enabled if cmd.enabled is not None else row["enabled"]),
            cmd.id,
        ),
    )
    if cmd.password_hash is not None or cmd.enabled is False:
        # a changed password or a disabled user ends every session
        conn.execute("UPDATE tokens SET revoked=1 WHERE user_id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(UserDelete)
def user_delete(conn: sqlite3.Connection, cmd: UserDelete) -> Result:
    require(conn, "users", "id", cmd.id, "User")
    conn.execute("DELETE FROM users WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(RoleGrant)
def role_grant(conn: sqlite3.Connection, cmd: RoleGrant) -> Result:
    require(conn, "users", "id", cmd.user_id, "User")
    require(conn, "projects", "id", cmd.project_id, "Project")
    conn.execute("INSERT OR IGNORE INTO assignments VALUES (?,?,?)", (cmd.user_id, cmd.project_id, cmd.role))
    return {"user_id": cmd.user_id, "project_id": cmd.project_id, "role": cmd.role}


@handles(RoleRevoke)
def role_revoke(conn: sqlite3.Connection, cmd: RoleRevoke) -> Result:
    cur = conn.execute(
        "DELETE FROM assignments WHERE user_id=? AND project_id=? AND role=?",
        (cmd.user_id, cmd.project_id, cmd.role),
    )
    if cur.rowcount == 0:
        raise NotFound(f"user {cmd.user_id} has no role {cmd.role} on project {cmd.project_id}")
    left = conn.execute(
        "SELECT COUNT(*) FROM assignments WHERE user_id=? AND project_id=?", (cmd.user_id, cmd.project_id)
    ).fetchone()[0]
    if not left:
        conn.execute("UPDATE tokens SET revoked=1 WHERE user_id=? AND project_id=?", (cmd.user_id, cmd.project_id))
    return {"user_id": cmd.user_id, "project_id": cmd.project_id, "role": cmd.role}


@handles(TokenIssue)
def token_issue(conn: sqlite3.Connection, cmd: TokenIssue) -> Result:
    user = fetch_one(conn, "SELECT enabled FROM users WHERE id=?", (cmd.user_id,))
    project = fetch_one(conn, "SELECT enabled FROM projects WHERE id=?", (cmd.project_id,))
    if user is None or project is None or not user["enabled"] or not project["enabled"]:
        raise Unauthorized("The request you have made requires authentication.")
    has_role = conn.execute(
        "SELECT 1 FROM assignments WHERE user_id=? AND project_id=?", (cmd.user_id, cmd.project_id)
    ).fetchone()
    if has_role is None:
        raise Unauthorized("user has no role on the requested project")
    conn.execute(
        "INSERT INTO tokens (token_hash, user_id, project_id, issued_at, expires_at) VALUES (?,?,?,?,?)",
        (cmd.token_hash, cmd.user_id, cmd.project_id, cmd.issued_at, cmd.expires_at),
    )
    return {"expires_at": cmd.expires_at}


@handles(TokenRevoke)
def token_revoke(conn: sqlite3.Connection, cmd: TokenRevoke) -> Result:
    cur = conn.execute("UPDATE tokens SET revoked=1 WHERE token_hash=?", (cmd.token_hash,))
    if cur.rowcount == 0:
        raise NotFound("token could not be found")
    return {}


@handles(TokenPurge)
def token_purge(conn: sqlite3.Connection, cmd: TokenPurge) -> Result:
    cur = conn.execute("DELETE FROM tokens WHERE expires_at < ?", (cmd.now,))
    return {"purged": cur.rowcount}
