"""The client half of `hvd`: `hvd <object> <action>` against the API named by HVD_URL.

Each layer contributes a `register(registry)` function to REGISTRARS (core: flavors, keypairs,
server groups, projects, users, roles, quotas, hosts, tokens, catalog; cluster; compute); see hvd.cli.commands for
the `Resource` and `Action` specs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hvd.cli.admin import register_admin
from hvd.cli.aggregates import register_aggregates
from hvd.cli.cluster import register_cluster
from hvd.cli.commands import Registry
from hvd.cli.compute import register_compute
from hvd.cli.core import register_core

REGISTRARS: list[Callable[[Registry], None]] = [register_core, register_cluster, register_compute, register_aggregates,
                                                 register_admin]


def build_registry() -> Registry:
    registry = Registry()
    for register in REGISTRARS:
        register(registry)
    return registry


def add_client_commands(subparsers: Any) -> None:
    """Add every client object (flavor, keypair, ...) to the `hvd` argument parser."""
    build_registry().install(subparsers)
