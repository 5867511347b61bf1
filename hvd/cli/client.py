"""The client half of `hvd`: `hvd <object> <action>` against the API named by HVD_URL.

Adding commands (one module per API area, each under ~600 lines):
  1. In hvd/cli/<area>.py write `register_<area>(registry: Registry) -> None` that calls
     `registry.register_resource(Resource(...))` for a plain REST collection (list/show/create/
     delete/set, operations filled in) and `registry.register_action("<object>", Action(...,
     operations=("POST /v1/<path>/{id}/<verb>",)))` for anything else (`register_command` for a
     top-level `hvd <name>`). Use `print_one`/`print_list` (hvd.cli.output) so -f/-c work.
  2. Import it here and append it to REGISTRARS (one line each).
  3. `hvd.cli.docs` regenerates docs/cli.md: `.venv/bin/python -m hvd.cli.docs > docs/cli.md`.
tests/functional/test_cli_complete.py fails while an OpenAPI operation has no command naming it.
See hvd.cli.commands for the `Resource`, `Action` and `Opt` specs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hvd.cli.admin import register_admin
from hvd.cli.aggregates import register_aggregates
from hvd.cli.cluster import register_cluster
from hvd.cli.commands import Registry
from hvd.cli.compute import register_compute
from hvd.cli.console import register_console
from hvd.cli.core import register_core
from hvd.cli.events import register_events
from hvd.cli.images import register_images
from hvd.cli.meta import register_meta
from hvd.cli.network import register_network
from hvd.cli.router import register_router
from hvd.cli.secgroup import register_secgroup
from hvd.cli.server_volumes import register_server_volumes
from hvd.cli.volumes import register_volumes

REGISTRARS: list[Callable[[Registry], None]] = [
    register_core,
    register_cluster,
    register_images,
    register_compute,
    register_server_volumes,
    register_volumes,
    register_console,
    register_network,
    register_router,
    register_secgroup,
    register_aggregates,
    register_events,
    register_meta,
    register_admin,
]


def build_registry() -> Registry:
    registry = Registry()
    for register in REGISTRARS:
        register(registry)
    return registry


def add_client_commands(subparsers: Any) -> None:
    """Add every client object (flavor, keypair, ...) to the `hvd` argument parser."""
    build_registry().install(subparsers)
