"""CLI of /v1/cluster: `hvd cluster show|add|remove|leader|revoke-cert|revocations` (admin); the local
TLS set-up commands (init, issue, join-token, join) are in cluster_tls."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from hvd.cli.cluster_tls import register_cluster_tls
from hvd.cli.commands import Action, Opt, Registry
from hvd.cli.http import CliError, Session
from hvd.cli.output import print_list

COLUMNS = ("id", "role", "address", "leader", "match_index", "hvd_version", "protocol")
REVOCATION_COLUMNS = ("node", "serial", "issued_before")


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


def cluster_revoke_cert(session: Session, args: argparse.Namespace) -> None:
    if bool(args.opt_node) == bool(args.opt_serial):
        raise CliError("name either --node NODE (every certificate it holds now) or --serial SERIAL")
    body = {"node": args.opt_node} if args.opt_node else {"serial": args.opt_serial}
    print_list([session.call("POST", "/v1/cluster/revocations", body)], REVOCATION_COLUMNS, args)


def cluster_revocations(session: Session, args: argparse.Namespace) -> None:
    print_list(session.call("GET", "/v1/cluster/revocations")["revocations"], REVOCATION_COLUMNS, args)


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
    registry.register_action("cluster", Action(
        "revoke-cert", "refuse a node's host certificates (all it holds now) or one certificate on peer routes",
        cluster_revoke_cert,
        (Opt("--node", "", "the node id: it needs a new certificate (`hvd cluster join`) to talk to peers again"),
         Opt("--serial", "", "one certificate's serial (hex, `openssl x509 -noout -serial`)")),
        operations=("POST /v1/cluster/revocations",)))
    registry.register_action("cluster", Action("revocations", "list revoked host certificates",
                                               cluster_revocations, operations=("GET /v1/cluster/revocations",)))
    register_cluster_tls(registry)
