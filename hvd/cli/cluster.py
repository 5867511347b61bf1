"""CLI of /v1/cluster: `hvd cluster show|add|remove|leader` (admin); the local TLS set-up commands
(init, issue, join-token, join) are in cluster_tls."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from hvd.cli.cluster_tls import register_cluster_tls
from hvd.cli.commands import Action, Opt, Registry
from hvd.cli.http import Session
from hvd.cli.output import print_list

COLUMNS = ("id", "role", "address", "leader", "match_index", "hvd_version", "protocol")


def _print_members(view: dict[str, Any], args: argparse.Namespace) -> None:
    print_list(view["members"], COLUMNS, args)
    if args.format == "table" and "protocol" in view:
        print(upgrade_line(view["protocol"]))


def upgrade_line(protocol: dict[str, Any]) -> str:
    """The rolling upgrade's progress under the members table."""
    line = f"catalog protocol in use: {protocol['usable']} (this host's build: {protocol['newest']}); "
    if protocol["behind"]:
        return line + f"still to upgrade: {', '.join(protocol['behind'])}"
    return line + "every member is upgraded"


def cluster_show(session: Session, args: argparse.Namespace) -> None:
    _print_members(session.call("GET", "/v1/cluster"), args)


def cluster_add(session: Session, args: argparse.Namespace) -> None:
    body = {"id": args.id, "url": args.url, "role": "learner" if args.opt_learner else "voter"}
    _print_members(session.call("POST", "/v1/cluster/members", body), args)


def cluster_remove(session: Session, args: argparse.Namespace) -> None:
    session.call("DELETE", f"/v1/cluster/members/{quote(args.id, safe='')}")


def cluster_leader(session: Session, args: argparse.Namespace) -> None:
    _print_members(session.call("POST", "/v1/cluster/leader", {"to": args.to}), args)


def register_cluster(registry: Registry) -> None:
    registry.register_action("cluster", Action("show", "list the control plane's members and leader",
                                               cluster_show, operations=("GET /v1/cluster",)),
                             "the control plane's Raft membership")
    registry.register_action("cluster", Action(
        "add", "add a host started with [cluster] join = true", cluster_add,
        (Opt("id", "", "its node id"), Opt("url", "", "its API URL, e.g. https://10.0.0.4:8774"),
         Opt("--learner", "", "replicate only, never vote", kind="const", const=True)),
        operations=("POST /v1/cluster/members",)))
    registry.register_action("cluster", Action("remove", "remove a member", cluster_remove,
                                               (Opt("id", "", "its node id"),), output=False,
                                               operations=("DELETE /v1/cluster/members/{id}",)))
    registry.register_action("cluster", Action("leader", "hand leadership to another voter", cluster_leader,
                                               (Opt("to", "", "the voter's node id"),),
                                               operations=("POST /v1/cluster/leader",)))
    register_cluster_tls(registry)
