"""Read-only queries shared by the API and services (run through Catalog.read)."""

from __future__ import annotations

import sqlite3
from typing import Any

from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import Conflict, NotFound


def find(
    conn: sqlite3.Connection, table: str, ref: str, what: str, where: str = "", args: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """The row whose id or (unique) name is `ref`, within an optional extra `where` clause."""
    extra = f" AND ({where})" if where else ""
    row = fetch_one(conn, f"SELECT * FROM {table} WHERE id=?{extra}", (ref, *args))
    if row is not None:
        return row
    rows = fetch_all(conn, f"SELECT * FROM {table} WHERE name=?{extra}", (ref, *args))
    if not rows:
        raise NotFound(f"{what} {ref} could not be found")
    if len(rows) > 1:
        raise Conflict(f"more than one {what.lower()} is named '{ref}'; use its id")
    return rows[0]


def roles_of(conn: sqlite3.Connection, user_id: str, project_id: str) -> list[str]:
    return [
        r["role"]
        for r in fetch_all(
            conn, "SELECT role FROM assignments WHERE user_id=? AND project_id=? ORDER BY role", (user_id, project_id)
        )
    ]


def user_projects(conn: sqlite3.Connection, user_id: str) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        "SELECT DISTINCT p.* FROM projects p JOIN assignments a ON a.project_id=p.id WHERE a.user_id=?"
        " ORDER BY p.created_at, p.id",
        (user_id,),
    )
