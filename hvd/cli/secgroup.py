"""CLI of security groups and their rules (applied to running ports at once)."""

from __future__ import annotations

import argparse
from typing import Any

from hvd.cli.commands import Action, Opt, Registry, Resource, body_from
from hvd.cli.http import Session
from hvd.cli.output import print_list, print_one

SECURITY_GROUP = Resource(
    "security-group", "/v1/security-groups", "security_groups", ("id", "name", "description"),
    ref="security group id or name",
    create=(Opt("name", "name", "group name"), Opt("--description", "description", "description")),
    update=(Opt("--name", "name", "new name"), Opt("--description", "description", "description")),
)
RULE_COLUMNS = ("id", "security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                "port_range_max", "remote_ip_prefix", "remote_group_id")
RULES = Resource("security-group-rule", "/v1/security-group-rules", "security_group_rules", RULE_COLUMNS,
                 ref="rule id")


def port_range(text: str) -> tuple[int, int]:
    """`22` or `8000:8080` -> (min, max)."""
    low, _, high = text.partition(":")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PORT or MIN:MAX, got {text!r}") from None
    return first, last


RULE_OPTS = (
    Opt("security_group", "security_group", "the group the rule belongs to (id or name)", metavar="GROUP"),
    Opt("--ingress", "direction", "incoming traffic (default)", kind="const", const="ingress"),
    Opt("--egress", "direction", "outgoing traffic", kind="const", const="egress"),
    Opt("--ethertype", "ethertype", "IP version (default: IPv4)", choices=("IPv4", "IPv6")),
    Opt("--protocol", "protocol", "protocol (default: any)", choices=("tcp", "udp", "icmp", "icmpv6")),
    Opt("--dst-port", "", "destination port or MIN:MAX (tcp, udp)", type=port_range, metavar="PORT[:MAX]"),
    Opt("--remote-ip", "remote_ip_prefix", "source (ingress) or destination (egress) prefix, e.g. 0.0.0.0/0"),
    Opt("--remote-group", "remote_group", "peers in this security group (id or name)"),
)


def rule_create(session: Session, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"direction": "ingress", **body_from([o for o in RULE_OPTS if o.field], args)}
    if args.opt_dst_port is not None:
        body["port_range_min"], body["port_range_max"] = args.opt_dst_port
    print_one(session.call("POST", RULES.path, body), args)


def rule_list(session: Session, args: argparse.Namespace) -> None:
    rules = session.list_all(RULES.path, RULES.plural)
    if args.opt_group:
        group = session.call("GET", SECURITY_GROUP.url(args.opt_group))["id"]
        rules = [r for r in rules if r["security_group_id"] == group]
    print_list(rules, RULE_COLUMNS, args)


def register_secgroup(registry: Registry) -> None:
    registry.register_resource(SECURITY_GROUP, "security groups")
    registry.register_resource(RULES, "security group rules")
    registry.register_action("security-group-rule", Action(
        "create", "add a rule to a security group", rule_create, RULE_OPTS,
        operations=(f"POST {RULES.path}",)))
    registry.register_action("security-group-rule", Action(
        "list", "list security group rules", rule_list,
        (Opt("--group", "", "only this group's rules (id or name)"),),
        operations=(f"GET {RULES.path}", "GET /v1/security-groups/{id}")))
