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
    "image_megabytes": "SELECT COALESCE(SUM((size + 1048575) / 1048576), 0) FROM images WHERE owner=?"
                       " AND status = 'active'",
    "networks": "SELECT COUNT(*) FROM networks WHERE project_id=?",
    "subnets": "SELECT COUNT(*) FROM subnets WHERE project_id=?",
    # ports hvd makes for DHCP, routers and floating IPs are not the project's to count
    "ports": "SELECT COUNT(*) FROM ports WHERE project_id=? AND device_owner NOT LIKE 'network:%'",
    "routers": "SELECT COUNT(*) FROM routers WHERE project_id=?",
    "floating_ips": "SELECT COUNT(*) FROM floating_ips WHERE project_id=?",
    "security_groups": "SELECT COUNT(*) FROM security_groups WHERE project_id=?",
    "security_group_rules": "SELECT COUNT(*) FROM security_group_rules WHERE project_id=?",
    "volumes": "SELECT COUNT(*) FROM volumes WHERE project_id=?",
    # a volume being extended counts at its new size, so two extends cannot both pass the quota
    "gigabytes": "SELECT COALESCE(SUM(MAX(size_gb, COALESCE(new_size_gb, 0))), 0) FROM volumes WHERE project_id=?",
    "snapshots": "SELECT COUNT(*) FROM volume_snapshots WHERE project_id=?",
    "backups": "SELECT COUNT(*) FROM volume_backups WHERE project_id=?",
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
