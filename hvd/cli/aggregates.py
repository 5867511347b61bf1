"""CLI objects for host aggregates and availability zones."""

from __future__ import annotations

import argparse

from hvd.cli.commands import Action, Opt, Registry, Resource
from hvd.cli.http import Session
from hvd.cli.output import print_list, print_one

AGGREGATE = Resource(
    "aggregate", "/v1/aggregates", "aggregates", ("id", "name", "availability_zone", "hosts", "metadata"),
    ref="aggregate id or name",
    create=(
        Opt("name", "name", "aggregate name"),
        Opt("--zone", "availability_zone", "availability zone of its hosts"),
        Opt("--property", "metadata", "metadata key=value (repeat)", kind="pairs"),
    ),
    update=(
        Opt("--name", "name", "new name"),
        Opt("--zone", "availability_zone", "availability zone of its hosts"),
        Opt("--property", "metadata", "set metadata key=value (repeat)", kind="pairs"),
    ),
)
HOST_OPTS = (Opt("aggregate", "", "aggregate id or name"), Opt("host", "", "host name"))


def add_host(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("POST", AGGREGATE.url(args.aggregate) + "/hosts", {"host": args.host}), args)


def remove_host(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("DELETE", AGGREGATE.url(args.aggregate) + "/hosts/" + args.host), args)


def zone_list(session: Session, args: argparse.Namespace) -> None:
    zones = session.call("GET", "/v1/availability-zones")["availability_zones"]
    print_list([{**z, "hosts": ", ".join(z.get("hosts") or [])} for z in zones], ("name", "available", "hosts"),
               args)


def register_aggregates(registry: Registry) -> None:
    registry.register_resource(AGGREGATE, "host aggregates (host sets with metadata and a zone)")
    registry.register_action("aggregate", Action("add-host", "add a host to an aggregate", add_host, HOST_OPTS,
                                                 operations=("POST /v1/aggregates/{id}/hosts",)))
    registry.register_action("aggregate", Action("remove-host", "remove a host from an aggregate", remove_host,
                                                 HOST_OPTS, operations=("DELETE /v1/aggregates/{id}/hosts/{host}",)))
    registry.register_action("availability-zone", Action("list", "list availability zones", zone_list,
                                                         operations=("GET /v1/availability-zones",)),
                             "availability zones")
