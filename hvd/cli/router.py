"""CLI of routers: create (optionally with an external gateway), rename, interfaces on subnets or
ports, and the external gateway (SNAT)."""

from __future__ import annotations

import argparse
from typing import Any

from hvd.cli.commands import Action, Opt, Registry, Resource, body_from
from hvd.cli.http import CliError, Session
from hvd.cli.output import print_one


def router_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A router in a list: its gateway and interfaces as their addresses."""
    gateway = row.get("external_gateway")
    return {**row, "external_gateway": gateway and gateway.get("ip_address"),
            "interfaces": [i["ip_address"] for i in row.get("interfaces") or []]}


ROUTER = Resource(
    "router", "/v1/routers", "routers", ("id", "name", "external_gateway", "interfaces", "host"),
    ref="router id or name", summary=router_summary,
    create=(Opt("name", "name", "router name"),
            Opt("--external-gateway", "external_gateway", "external network id or name (SNAT through it)",
                type=lambda network: {"network": network}, metavar="NETWORK")),
    update=(Opt("--name", "name", "new name", required=True),),
)
INTERFACE_OPTS = (Opt("router", "", "router id or name"),
                  Opt("--subnet", "subnet", "subnet id or name (the router takes its gateway address)"),
                  Opt("--port", "port", "an unbound port id"))
ITEM = "/v1/routers/{id}"


def _interface(verb: str) -> Action:
    def run(session: Session, args: argparse.Namespace) -> None:
        body = body_from(INTERFACE_OPTS[1:], args)
        if len(body) != 1:
            raise CliError("give exactly one of --subnet and --port")
        print_one(session.call("POST", ROUTER.url(args.router) + f"/{verb}-interface", body), args)

    what = "attach a subnet (or port) to" if verb == "add" else "detach a subnet (or port) from"
    return Action(f"{verb}-interface", f"{what} a router", run, INTERFACE_OPTS,
                  operations=(f"POST {ITEM}/{verb}-interface",))


def set_gateway(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("PUT", ROUTER.url(args.router) + "/gateway", {"network": args.network}), args)


def unset_gateway(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("DELETE", ROUTER.url(args.router) + "/gateway"), args)


def register_router(registry: Registry) -> None:
    registry.register_resource(ROUTER, "routers")
    registry.register_action("router", _interface("add"))
    registry.register_action("router", _interface("remove"))
    registry.register_action("router", Action(
        "set-gateway", "route a router's networks to an external network (SNAT)", set_gateway,
        (Opt("router", "", "router id or name"), Opt("network", "", "external network id or name")),
        operations=(f"PUT {ITEM}/gateway",)))
    registry.register_action("router", Action(
        "unset-gateway", "remove a router's external gateway", unset_gateway,
        (Opt("router", "", "router id or name"),), operations=(f"DELETE {ITEM}/gateway",)))
