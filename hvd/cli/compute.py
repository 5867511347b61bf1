"""CLI objects of servers: create, every action (with `--wait` and its progress line), delete, console
log, action log, interfaces; and `hvd host evacuate`, which starts server rebuilds."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from hvd.cli.commands import Action, Opt, Registry, Resource, body_from
from hvd.cli.http import Session
from hvd.cli.output import print_list, print_one
from hvd.cli.wait import action_ids, wait_server

SERVER_COLUMNS = ("id", "name", "status", "task_state", "power_state", "host", "addresses")
SERVER_CREATE_OPTS = (
    Opt("name", "name", "server name"),
    Opt("--flavor", "flavor", "flavor id or name", required=True),
    Opt("--image", "image", "image id or name", required=True),
    Opt("--key-name", "key_name", "keypair name"),
    Opt("--user-data", "user_data", "file passed to the guest", kind="file", metavar="FILE"),
    Opt("--property", "metadata", "metadata KEY=VALUE (repeat)", kind="pairs"),
    Opt("--availability-zone", "availability_zone", "zone, or zone:host (admin)"),
    Opt("--server-group", "server_group", "server group id or name"),
    Opt("--min", "min_count", "create at least this many", type=int),
    Opt("--max", "max_count", "create at most this many", type=int),
    Opt("--no-config-drive", "config_drive", "no config drive", kind="const", const=False),
)
ITEM = "/v1/servers/{id}"
WAIT_HELP = "wait until the server is stable, showing progress on stderr; exit 1 if the operation failed"


def _wait_option(parser: argparse.ArgumentParser) -> argparse.Action:
    return parser.add_argument("--wait", action="store_true", help=WAIT_HELP)


def server_create(session: Session, args: argparse.Namespace) -> None:
    body = body_from(SERVER_CREATE_OPTS, args)
    if args.network or args.port:
        body["networks"] = [{"network": n} for n in args.network] + [{"port": p} for p in args.port]
    elif args.no_network:
        body["networks"] = "none"
    result = session.call("POST", "/v1/servers", body)
    servers = result.get("servers", [result])
    if args.wait:
        servers = [wait_server(session, s["id"]) or s for s in servers]
    if "servers" in result:
        print_list(servers, SERVER_COLUMNS, args)
    else:
        print_one(servers[0], args)


def _server_url(args: argparse.Namespace, suffix: str = "") -> str:
    return f"/v1/servers/{quote(args.server, safe='')}{suffix}"


def server_action(name: str, opts: tuple[Opt, ...] = (), help: str = "") -> Action:
    """`hvd server <name> SERVER [--wait]`: POST /v1/servers/{id}/<name> with the options as its body."""

    def run(session: Session, args: argparse.Namespace) -> None:
        known = action_ids(session, args.server) if args.wait else set()
        result = session.call("POST", _server_url(args, f"/{name}"), body_from(opts, args))
        if args.wait:
            server = wait_server(session, args.server, known)
            snapshot = isinstance(result, dict) and "server" in result  # {"image_id", "server"}
            result = {**result, "server": server} if snapshot else server
        if result is not None:
            print_one(result, args)

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("server", help="server id or name")
        _wait_option(parser)

    return Action(name, help or f"{name} a server", run, opts, configure=configure,
                  operations=(f"POST {ITEM}/{name}",))


def server_delete(session: Session, args: argparse.Namespace) -> None:
    for ref in args.server:
        session.call("DELETE", f"/v1/servers/{quote(ref, safe='')}")
        if args.wait:
            wait_server(session, ref, gone_ok=True)


def server_console(session: Session, args: argparse.Namespace) -> None:
    query = {"lines": args.lines} if args.lines else None
    print(session.call("GET", _server_url(args, "/console-log"), query=query)["output"], end="")


def server_actions(session: Session, args: argparse.Namespace) -> None:
    print_list(session.call("GET", _server_url(args, "/actions"))["actions"],
               ("action", "request_id", "start_time", "finish_time", "result", "message"), args)


def server_password(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("GET", _server_url(args, "/password")), args)


def server_clear_password(session: Session, args: argparse.Namespace) -> None:
    session.call("DELETE", _server_url(args, "/password"))


INTERFACE_COLUMNS = ("id", "network_id", "mac_address", "fixed_ips")


def server_interfaces(session: Session, args: argparse.Namespace) -> None:
    print_list(session.call("GET", _server_url(args, "/interfaces"))["interfaces"], INTERFACE_COLUMNS, args)


ADD_INTERFACE_OPTS = (Opt("server", "", "server id or name"),
                      Opt("--network", "network", "a new port on this network (id or name)"),
                      Opt("--port", "port", "an existing unbound port id"),
                      Opt("--fixed-ip", "fixed_ip", "with --network: the address to take"))


def server_add_interface(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("POST", _server_url(args, "/interfaces"), body_from(ADD_INTERFACE_OPTS[1:], args)), args)


def server_remove_interface(session: Session, args: argparse.Namespace) -> None:
    session.call("DELETE", _server_url(args, f"/interfaces/{quote(args.port, safe='')}"))


def host_evacuate(session: Session, args: argparse.Namespace) -> None:
    report = session.call("POST", f"/v1/hosts/{quote(args.host, safe='')}/evacuate", {})
    if args.wait:
        for server in report["accepted"]:
            wait_server(session, server)
    print_one(report, args)


SERVER = Resource("server", "/v1/servers", "servers", SERVER_COLUMNS, ref="server id or name", deletable=False,
                  list_query=(Opt("--all-projects", "all_projects", "every project (admin)", kind="const",
                                  const="true"),
                              Opt("--name", "name", "only servers with this name"),
                              Opt("--status", "status", "only servers in this status"),
                              Opt("--host", "host", "only servers on this host (admin)")))

SIMPLE_ACTIONS = ("stop", "start", "pause", "unpause", "suspend", "resume", "unrescue", "confirm-resize",
                  "revert-resize", "shelve", "unshelve", "lock", "unlock")
HOST_OPT = Opt("--host", "host", "target host (default: the scheduler chooses)")
ACTIONS_WITH_OPTIONS = (
    server_action("reboot", (Opt("--hard", "type", "power off and on", kind="const", const="hard"),)),
    server_action("rescue", (Opt("--image", "image", "rescue image"),)),
    server_action("rebuild", (Opt("--image", "image", "new image", required=True),)),
    server_action("resize", (Opt("--flavor", "flavor", "new flavor", required=True),)),
    server_action("snapshot", (Opt("--name", "name", "image name", required=True),)),
    server_action("migrate", (HOST_OPT,), "cold-migrate a server (admin)"),
    server_action("live-migrate", (HOST_OPT, Opt(
        "--block-migration", "block_migration", "copy the disks: true, false (shared storage) or auto",
        choices=("auto", "true", "false"))), "live-migrate a server (admin)"),
    server_action("evacuate", (HOST_OPT,), "rebuild a server of a fenced host elsewhere (admin)"),
    server_action("live-migrate-abort", (), "cancel a running live migration (the server stays on its source)"),
)


def register_compute(registry: Registry) -> None:
    registry.register_resource(SERVER, "servers (virtual machines)")

    def create_configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--network", action="append", default=[], help="network id or name (repeat)")
        parser.add_argument("--port", action="append", default=[], help="an existing unbound port id (repeat)")
        parser.add_argument("--no-network", action="store_true", help="no NIC at all")
        _wait_option(parser)

    registry.register_action("server", Action("create", "create a server", server_create, SERVER_CREATE_OPTS,
                                              configure=create_configure, operations=("POST /v1/servers",)))
    registry.register_action("server", Action(
        "delete", "delete servers", server_delete, output=False,
        configure=lambda p: (p.add_argument("server", nargs="+"), _wait_option(p)),
        operations=(f"DELETE {ITEM}",)))
    for name in SIMPLE_ACTIONS:
        registry.register_action("server", server_action(name))
    for action in ACTIONS_WITH_OPTIONS:
        registry.register_action("server", action)
    registry.register_action("server", Action(
        "console-log", "print the serial console", server_console, output=False,
        configure=lambda p: (p.add_argument("server"), p.add_argument("--lines", type=int)),
        operations=(f"GET {ITEM}/console-log",)))
    registry.register_action("server", Action("actions", "the server's action log", server_actions,
                                              configure=lambda p: p.add_argument("server"),
                                              operations=(f"GET {ITEM}/actions",)))
    registry.register_action("server", Action(
        "password", "the encrypted admin password the guest posted (decrypt with the key pair's private key)",
        server_password, configure=lambda p: p.add_argument("server"), operations=(f"GET {ITEM}/password",)))
    registry.register_action("server", Action(
        "clear-password", "forget the guest's posted password (it may post a new one)", server_clear_password,
        output=False, configure=lambda p: p.add_argument("server"), operations=(f"DELETE {ITEM}/password",)))
    registry.register_action("server", Action("interfaces", "the server's ports", server_interfaces,
                                              configure=lambda p: p.add_argument("server"),
                                              operations=(f"GET {ITEM}/interfaces",)))
    registry.register_action("server", Action(
        "add-interface", "attach a port: a new one on --network, or an unbound --port", server_add_interface,
        ADD_INTERFACE_OPTS, operations=(f"POST {ITEM}/interfaces",)))
    registry.register_action("server", Action(
        "remove-interface", "detach a port (deleted if the server made it)", server_remove_interface,
        (Opt("server", "", "server id or name"), Opt("port", "", "port id")), output=False,
        operations=(f"DELETE {ITEM}/interfaces/{{port}}",)))
    registry.register_action("host", Action(
        "evacuate", "rebuild every server of a fenced host elsewhere", host_evacuate,
        (Opt("host", "", "host name"),), configure=lambda p: p.add_argument(
            "--wait", action="store_true", help="wait until every accepted server is rebuilt"),
        operations=("POST /v1/hosts/{name}/evacuate",)))
