"""Catalog schema and its migrations (by `PRAGMA user_version`).

Append new migrations to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

from hvd.errors import ConfigError

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('applied_index', '0');

CREATE TABLE projects (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
  enabled INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL);
CREATE TABLE users (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
  enabled INTEGER NOT NULL DEFAULT 1, email TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL);
CREATE TABLE assignments (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  role TEXT NOT NULL, PRIMARY KEY (user_id, project_id, role));
CREATE TABLE tokens (
  token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  issued_at TEXT NOT NULL, expires_at TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX tokens_user ON tokens(user_id);

CREATE TABLE flavors (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, vcpus INTEGER NOT NULL, ram_mb INTEGER NOT NULL,
  disk_gb INTEGER NOT NULL, ephemeral_gb INTEGER NOT NULL, swap_mb INTEGER NOT NULL,
  is_public INTEGER NOT NULL, extra_specs TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL);
CREATE TABLE flavor_access (
  flavor_id TEXT NOT NULL REFERENCES flavors(id) ON DELETE CASCADE,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  PRIMARY KEY (flavor_id, project_id));

CREATE TABLE keypairs (
  id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  project_id TEXT NOT NULL, name TEXT NOT NULL, public_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
  key_type TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (user_id, name));

CREATE TABLE server_groups (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL, name TEXT NOT NULL, policy TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE server_group_members (
  group_id TEXT NOT NULL REFERENCES server_groups(id) ON DELETE CASCADE,
  instance_id TEXT NOT NULL, PRIMARY KEY (group_id, instance_id));

CREATE TABLE quotas (
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE, resource TEXT NOT NULL,
  hard_limit INTEGER NOT NULL, PRIMARY KEY (project_id, resource));

CREATE TABLE hosts (
  name TEXT PRIMARY KEY, node_id TEXT NOT NULL, availability_zone TEXT NOT NULL,
  enabled INTEGER NOT NULL DEFAULT 1, disabled_reason TEXT NOT NULL DEFAULT '',
  vcpus INTEGER NOT NULL, memory_mb INTEGER NOT NULL, disk_gb INTEGER NOT NULL,
  reserved_vcpus INTEGER NOT NULL, reserved_memory_mb INTEGER NOT NULL, reserved_disk_gb INTEGER NOT NULL,
  cpu_ratio REAL NOT NULL, ram_ratio REAL NOT NULL, disk_ratio REAL NOT NULL,
  hypervisor_type TEXT NOT NULL, hypervisor_version TEXT NOT NULL, arch TEXT NOT NULL,
  cpu_model TEXT NOT NULL, capabilities TEXT NOT NULL, api_url TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE claims (
  instance_id TEXT NOT NULL, kind TEXT NOT NULL, host TEXT NOT NULL REFERENCES hosts(name),
  vcpus INTEGER NOT NULL, memory_mb INTEGER NOT NULL, disk_gb INTEGER NOT NULL, created_at TEXT NOT NULL,
  PRIMARY KEY (instance_id, kind));
CREATE INDEX claims_host ON claims(host);

CREATE TABLE images (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, status TEXT NOT NULL,
  disk_format TEXT NOT NULL, container_format TEXT NOT NULL, visibility TEXT NOT NULL,
  protected INTEGER NOT NULL, min_disk INTEGER NOT NULL, min_ram INTEGER NOT NULL,
  size INTEGER, virtual_size INTEGER, checksum TEXT, properties TEXT NOT NULL, host TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);

CREATE TABLE instances (
  id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, name TEXT NOT NULL, project_id TEXT NOT NULL,
  user_id TEXT NOT NULL, host TEXT, flavor_id TEXT NOT NULL, flavor TEXT NOT NULL, image_id TEXT NOT NULL,
  key_name TEXT, public_key TEXT, user_data TEXT, metadata TEXT NOT NULL, availability_zone TEXT,
  server_group_id TEXT, config_drive INTEGER NOT NULL, vm_state TEXT NOT NULL, task_state TEXT,
  power_state INTEGER NOT NULL, locked INTEGER NOT NULL DEFAULT 0, locked_by TEXT,
  fault TEXT, extra TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
  launched_at TEXT, deleted_at TEXT);
CREATE INDEX instances_project ON instances(project_id);
CREATE INDEX instances_host ON instances(host);
CREATE TABLE instance_actions (
  id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, action TEXT NOT NULL, request_id TEXT NOT NULL,
  user_id TEXT NOT NULL, project_id TEXT NOT NULL, start_time TEXT NOT NULL, finish_time TEXT,
  result TEXT, message TEXT);
CREATE INDEX instance_actions_instance ON instance_actions(instance_id);
"""

_V2 = """
CREATE TABLE networks (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
  physical_network TEXT, segmentation_id INTEGER, mtu INTEGER NOT NULL, shared INTEGER NOT NULL,
  external INTEGER NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX networks_project ON networks(project_id);
CREATE UNIQUE INDEX networks_segment ON networks(type, COALESCE(physical_network, ''), segmentation_id)
  WHERE segmentation_id IS NOT NULL;
CREATE TABLE subnets (
  id TEXT PRIMARY KEY, network_id TEXT NOT NULL REFERENCES networks(id), project_id TEXT NOT NULL,
  name TEXT NOT NULL, cidr TEXT NOT NULL, ip_version INTEGER NOT NULL, gateway_ip TEXT,
  allocation_pools TEXT NOT NULL, enable_dhcp INTEGER NOT NULL, dns_nameservers TEXT NOT NULL,
  host_routes TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX subnets_network ON subnets(network_id);
CREATE TABLE ports (
  id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, network_id TEXT NOT NULL REFERENCES networks(id),
  project_id TEXT NOT NULL, name TEXT NOT NULL, mac_address TEXT NOT NULL, device_owner TEXT NOT NULL,
  device_id TEXT NOT NULL, host TEXT NOT NULL, status TEXT NOT NULL, port_security_enabled INTEGER NOT NULL,
  auto_delete INTEGER NOT NULL, created_at TEXT NOT NULL, UNIQUE (network_id, mac_address));
CREATE INDEX ports_network ON ports(network_id);
CREATE INDEX ports_device ON ports(device_id);
CREATE TABLE ip_allocations (
  subnet_id TEXT NOT NULL REFERENCES subnets(id), ip TEXT NOT NULL,
  port_id TEXT NOT NULL REFERENCES ports(id), PRIMARY KEY (subnet_id, ip));
CREATE INDEX ip_allocations_port ON ip_allocations(port_id);
CREATE TABLE security_groups (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
  created_at TEXT NOT NULL);
CREATE INDEX security_groups_project ON security_groups(project_id);
CREATE TABLE security_group_rules (
  id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES security_groups(id), project_id TEXT NOT NULL,
  direction TEXT NOT NULL, ethertype TEXT NOT NULL, protocol TEXT, port_range_min INTEGER,
  port_range_max INTEGER, remote_ip_prefix TEXT, remote_group_id TEXT, created_at TEXT NOT NULL);
CREATE INDEX security_group_rules_group ON security_group_rules(group_id);
CREATE TABLE port_security_groups (
  port_id TEXT NOT NULL REFERENCES ports(id), group_id TEXT NOT NULL REFERENCES security_groups(id),
  PRIMARY KEY (port_id, group_id));
CREATE TABLE routers (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, host TEXT NOT NULL,
  gateway_network_id TEXT, gateway_port_id TEXT, created_at TEXT NOT NULL);
CREATE TABLE floating_ips (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, network_id TEXT NOT NULL REFERENCES networks(id),
  fip_port_id TEXT NOT NULL, floating_ip TEXT NOT NULL, port_id TEXT, fixed_ip TEXT, router_id TEXT,
  created_at TEXT NOT NULL);
CREATE TABLE host_vteps (host TEXT PRIMARY KEY, ip TEXT NOT NULL);
"""

_V3 = """
CREATE TABLE proposals (id BLOB PRIMARY KEY, idx INTEGER NOT NULL, result BLOB NOT NULL);
CREATE INDEX proposals_idx ON proposals(idx);
"""

_V4 = """
CREATE TABLE aggregates (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, availability_zone TEXT, metadata TEXT NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE aggregate_hosts (
  aggregate_id TEXT NOT NULL REFERENCES aggregates(id) ON DELETE CASCADE, host TEXT NOT NULL,
  PRIMARY KEY (aggregate_id, host));
"""

_V5 = """
CREATE TABLE host_fences (
  host TEXT PRIMARY KEY, term INTEGER NOT NULL, reason TEXT NOT NULL, fenced_at TEXT NOT NULL);
"""

_V6 = """
CREATE TABLE volume_types (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL, extra_specs TEXT NOT NULL,
  is_public INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE volumes (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL, name TEXT NOT NULL,
  description TEXT NOT NULL, size_gb INTEGER NOT NULL, status TEXT NOT NULL, previous_status TEXT,
  host TEXT, backend TEXT, volume_type_id TEXT NOT NULL, availability_zone TEXT NOT NULL,
  bootable INTEGER NOT NULL, multiattach INTEGER NOT NULL, volume_format TEXT NOT NULL,
  source_image_id TEXT, source_snapshot_id TEXT, source_volume_id TEXT, restore_backup_id TEXT,
  new_size_gb INTEGER, error TEXT, metadata TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX volumes_project ON volumes(project_id);
CREATE INDEX volumes_host ON volumes(host);
CREATE TABLE volume_snapshots (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL, volume_id TEXT NOT NULL,
  name TEXT NOT NULL, description TEXT NOT NULL, size_gb INTEGER NOT NULL, status TEXT NOT NULL,
  host TEXT, backend TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX volume_snapshots_volume ON volume_snapshots(volume_id);
CREATE TABLE volume_backups (
  id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL, volume_id TEXT NOT NULL,
  name TEXT NOT NULL, description TEXT NOT NULL, size_gb INTEGER NOT NULL, status TEXT NOT NULL,
  host TEXT NOT NULL, parent_id TEXT, is_incremental INTEGER NOT NULL, chunks INTEGER NOT NULL,
  new_chunks INTEGER NOT NULL, data_bytes INTEGER NOT NULL, stored_bytes INTEGER NOT NULL,
  restore_volume_id TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX volume_backups_volume ON volume_backups(volume_id);
CREATE TABLE volume_attachments (
  id TEXT PRIMARY KEY, volume_id TEXT NOT NULL, instance_id TEXT NOT NULL, host TEXT, device TEXT,
  status TEXT NOT NULL, attach_mode TEXT NOT NULL, connection_info TEXT NOT NULL, error TEXT,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (volume_id, instance_id));
CREATE INDEX volume_attachments_instance ON volume_attachments(instance_id);
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6]


def check_not_newer(version: int, what: str = "the catalog") -> None:
    """ConfigError when `version` was written by a newer hvd: an older release would misread it
    (a downgrade), so it refuses to open it instead."""
    if version > len(MIGRATIONS):
        raise ConfigError(
            f"{what} has catalog schema {version}, newer than this hvd's {len(MIGRATIONS)}: it was"
            " written by a newer release. Downgrades are not supported: run that release again, or"
            " restore a backup made by this one (hvd catalog restore)")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it. Each step commits atomically.
    A catalog of a newer schema is refused (ConfigError), never opened."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    check_not_newer(version)
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
