"""CLI of a server's volumes: `hvd server volumes|attach-volume|detach-volume`."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from hvd.cli.commands import Action, Opt, Registry
from hvd.cli.http import Session
from hvd.cli.output import print_list, print_one

ITEM = "/v1/servers/{id}/volume-attachments"
COLUMNS = ("volume_id", "device", "status", "mode", "host", "error")


def _url(args: argparse.Namespace, suffix: str = "") -> str:
    return f"/v1/servers/{quote(args.server, safe='')}/volume-attachments{suffix}"


def server_volumes(session: Session, args: argparse.Namespace) -> None:
    print_list(session.call("GET", _url(args))["volume_attachments"], COLUMNS, args)


def attach_volume(session: Session, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"volume": args.volume}
    if args.opt_device:
        body["device"] = args.opt_device
    if args.opt_read_only:
        body["mode"] = "ro"
    print_one(session.call("POST", _url(args), body), args)


def detach_volume(session: Session, args: argparse.Namespace) -> None:
    session.call("DELETE", _url(args, f"/{quote(args.volume, safe='')}"))


SERVER = Opt("server", "", "server id or name")
VOLUME = Opt("volume", "", "volume id")


def register_server_volumes(registry: Registry) -> None:
    registry.register_action("server", Action(
        "volumes", "the server's attached volumes", server_volumes, (SERVER,), operations=(f"GET {ITEM}",)))
    registry.register_action("server", Action(
        "attach-volume", "attach a volume (hot-plugged when the server runs)", attach_volume,
        (SERVER, VOLUME, Opt("--device", "device", "guest device wanted, e.g. vdb (a hint)"),
         Opt("--read-only", "mode", "attach read-only", kind="const", const=True)),
        operations=(f"POST {ITEM}",)))
    registry.register_action("server", Action(
        "detach-volume", "detach a volume (fails, and it stays attached, if the guest holds on to it)",
        detach_volume, (SERVER, VOLUME), output=False, operations=(f"DELETE {ITEM}/{{volume}}",)))
