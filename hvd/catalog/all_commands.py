"""Importing this module registers every command handler (apply must know them all)."""

from hvd.catalog import (
    cmd_aggregates,
    cmd_compute,
    cmd_hosts,
    cmd_identity,
    cmd_network,
    cmd_network_l3,
    cmd_resources,
    cmd_volume_backups,
    cmd_volume_moves,
    cmd_volumes,
    purge,
)

MODULES = (cmd_identity, cmd_resources, cmd_hosts, cmd_compute, cmd_network, cmd_network_l3, cmd_aggregates,
           cmd_volumes, cmd_volume_backups, cmd_volume_moves, purge)
