"""Small helpers shared by apply handlers and queries."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from hvd.errors import NotFound

JSON_COLUMNS = frozenset(
    {"extra_specs", "capabilities", "properties", "flavor", "metadata", "fault", "extra", "roles",
     "connection_info"}
)
BOOL_COLUMNS = frozenset({"enabled", "is_public", "protected", "locked", "config_drive", "revoked", "bootable",
                          "multiattach", "is_incremental"})


def row_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a dict, JSON columns decoded and 0/1 flags as booleans."""
    out: dict[str, Any] = {}
    for key in row.keys():  # noqa: SIM118 - sqlite3.Row is not a Mapping
        value = row[key]
        if key in JSON_COLUMNS and isinstance(value, str):
            value = json.loads(value)
        elif key in BOOL_COLUMNS and value is not None:
            value = bool(value)
        out[key] = value
    return out


def fetch_one(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row_dict(row)


def fetch_all(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [row_dict(r) for r in conn.execute(sql, args).fetchall()]


def require(conn: sqlite3.Connection, table: str, key: str, value: Any, what: str) -> dict[str, Any]:
    """The row of `table` whose `key` is `value`, or NotFound naming `what`."""
    row = fetch_one(conn, f"SELECT * FROM {table} WHERE {key}=?", (value,))
    if row is None:
        raise NotFound(f"{what} {value} could not be found")
    return row


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
