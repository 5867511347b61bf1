"""Per-project quotas, enforced inside apply (so concurrent requests cannot overshoot)."""

from __future__ import annotations

import sqlite3

from hvd.errors import QuotaExceeded

DEFAULT_LIMITS: dict[str, int] = {
    "instances": 10,
    "cores": 20,
    "ram": 51200,
    "key_pairs": 100,
    "server_groups": 10,
    "server_group_members": 10,
    "images": 100,
    "image_megabytes": 102400,  # the data of a project's images (uploads and snapshots), MiB
    "networks": 100,
    "subnets": 100,
    "ports": 500,
    "routers": 10,
    "floating_ips": 50,
    "security_groups": 10,
    "security_group_rules": 100,
    "volumes": 10,
    "gigabytes": 1000,  # the size of a project's volumes, GiB
    "snapshots": 10,  # volume snapshots
    "backups": 10,  # volume backups
}


def limit_of(conn: sqlite3.Connection, project_id: str, resource: str) -> int:
    """The project's limit for `resource` (-1 = unlimited)."""
    row = conn.execute(
        "SELECT hard_limit FROM quotas WHERE project_id=? AND resource=?", (project_id, resource)
    ).fetchone()
    return int(row[0]) if row is not None else DEFAULT_LIMITS[resource]


def check(conn: sqlite3.Connection, project_id: str, resource: str, requested: int, in_use: int) -> None:
    """Raise QuotaExceeded when `in_use + requested` passes the project's limit."""
    limit = limit_of(conn, project_id, resource)
    if limit >= 0 and in_use + requested > limit:
        raise QuotaExceeded(
            f"Quota exceeded for {resource}: requested {requested}, in use {in_use}, limit {limit}",
            resource=resource,
            requested=requested,
            in_use=in_use,
            limit=limit,
        )
