"""What a project uses now, per quota resource (the in_use side of quota checks)."""

from __future__ import annotations

import json
import sqlite3

# resource -> SQL giving the project's usage (one '?' = project id); resources without a row here
# are counted by the layer that owns them as it arrives
USAGE_SQL: dict[str, str] = {
    "instances": "SELECT COUNT(*) FROM instances WHERE project_id=? AND deleted_at IS NULL",
    "key_pairs": "SELECT COUNT(*) FROM keypairs WHERE project_id=?",
    "server_groups": "SELECT COUNT(*) FROM server_groups WHERE project_id=?",
    "images": "SELECT COUNT(*) FROM images WHERE owner=? AND status != 'deleted'",
}


def project_usage(conn: sqlite3.Connection, project_id: str) -> dict[str, int]:
    usage = {res: int(conn.execute(sql, (project_id,)).fetchone()[0]) for res, sql in USAGE_SQL.items()}
    cores = ram = 0
    for (flavor,) in conn.execute(
        "SELECT flavor FROM instances WHERE project_id=? AND deleted_at IS NULL", (project_id,)
    ):
        f = json.loads(flavor)
        cores += int(f["vcpus"])
        ram += int(f["ram_mb"])
    usage["cores"] = cores
    usage["ram"] = ram
    return usage
