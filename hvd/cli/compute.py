"""CLI objects of compute and networking: images (upload with a progress bar), servers (create,
every action, console log, action log) and the network resources."""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hvd.cli.commands import Action, Opt, Registry, Resource, body_from
from hvd.cli.http import CliError, Session, _api_error
from hvd.cli.output import print_list, print_one

IMAGE = Resource(
    "image", "/v1/images", "images", ("id", "name", "status", "disk_format", "visibility", "size"),
    ref="image id or name",
    update=(
        Opt("--name", "name", "new name"),
        Opt("--public", "visibility", "visible to every project (admin)", kind="const", const="public"),
        Opt("--private", "visibility", "visible to its project only", kind="const", const="private"),
        Opt("--protected", "protected", "refuse deletion", kind="const", const=True),
        Opt("--unprotected", "protected", "allow deletion", kind="const", const=False),
        Opt("--min-disk", "min_disk", "minimum root disk (GiB)", type=int),
        Opt("--min-ram", "min_ram", "minimum RAM (MiB)", type=int),
        Opt("--property", "properties", "property KEY=VALUE (repeat)", kind="pairs"),
    ),
)
IMAGE_CREATE_OPTS = (
    Opt("name", "name", "image name"),
    Opt("--disk-format", "disk_format", "disk format", choices=("qcow2", "raw", "vmdk", "vdi", "vhd", "vhdx", "iso",
                                                                 "ami", "ari", "aki")),
    Opt("--container-format", "container_format", "container format",
        choices=("bare", "ovf", "ova", "ami", "ari", "aki", "docker")),
    Opt("--public", "visibility", "visible to every project (admin)", kind="const", const="public"),
    Opt("--protected", "protected", "refuse deletion", kind="const", const=True),
    Opt("--min-disk", "min_disk", "minimum root disk (GiB)", type=int),
    Opt("--min-ram", "min_ram", "minimum RAM (MiB)", type=int),
    Opt("--property", "properties", "property KEY=VALUE (repeat)", kind="pairs"),
)


def _chunks(path: Path, progress: Any, task: Any) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if progress is not None:
                progress.update(task, advance=len(chunk))
            yield chunk


def upload(session: Session, image_id: str, path: Path, show_progress: bool) -> None:
    """Stream a file to PUT /v1/images/{id}/file, with a rich progress bar if asked."""
    if session.token is None:
        session.login()
    size = path.stat().st_size
    progress = task = None
    if show_progress:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                            TransferSpeedColumn())
        task = progress.add_task(f"uploading {path.name}", total=size)
        progress.start()
    req = urllib.request.Request(
        f"{session.url}/v1/images/{quote(image_id)}/file", data=_chunks(path, progress, task), method="PUT",
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size),
                 "Authorization": f"Bearer {session.token}"})
    try:
        with urllib.request.urlopen(req, timeout=max(session.timeout, 3600)):
            pass
    except urllib.error.HTTPError as exc:
        raise _api_error(exc) from None
    except urllib.error.URLError as exc:
        raise CliError(f"upload to {session.url} failed: {exc.reason}") from None
    finally:
        if progress is not None:
            progress.stop()


def image_create(session: Session, args: argparse.Namespace) -> None:
    path = Path(args.file) if args.file else None
    if path is not None and not path.is_file():
        raise CliError(f"no such file: {path}")
    image = session.call("POST", "/v1/images", body_from(IMAGE_CREATE_OPTS, args))
    if path is not None:
        upload(session, image["id"], path, args.progress)
        image = session.call("GET", f"/v1/images/{image['id']}")
    print_one(image, args)


def image_save(session: Session, args: argparse.Namespace) -> None:
    image = session.call("GET", f"/v1/images/{quote(args.image, safe='')}")
    if session.token is None:
        session.login()
    req = urllib.request.Request(f"{session.url}/v1/images/{image['id']}/file",
                                 headers={"Authorization": f"Bearer {session.token}"})
    try:
        with urllib.request.urlopen(req, timeout=3600) as resp, open(args.file, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise _api_error(exc) from None


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


def _wait_query(args: argparse.Namespace) -> dict[str, Any] | None:
    return {"wait": "true"} if getattr(args, "wait", False) else None


def server_create(session: Session, args: argparse.Namespace) -> None:
    body = body_from(SERVER_CREATE_OPTS, args)
    if args.network:
        body["networks"] = [{"network": n} for n in args.network]
    elif args.no_network:
        body["networks"] = "none"
    result = session.call("POST", "/v1/servers", body, query=_wait_query(args))
    if "servers" in result:
        print_list(result["servers"], SERVER_COLUMNS, args)
    else:
        print_one(result, args)


def _server_url(args: argparse.Namespace, suffix: str = "") -> str:
    return f"/v1/servers/{quote(args.server, safe='')}{suffix}"


def server_action(name: str, opts: tuple[Opt, ...] = ()) -> Action:
    def run(session: Session, args: argparse.Namespace) -> None:
        result = session.call("POST", _server_url(args, f"/{name}"), body_from(opts, args), query=_wait_query(args))
        print_one(result, args)

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("server", help="server id or name")
        parser.add_argument("--wait", action="store_true", help="wait until the server is stable")

    return Action(name, f"{name} a server", run, opts, configure=configure)


def server_delete(session: Session, args: argparse.Namespace) -> None:
    for ref in args.server:
        session.call("DELETE", f"/v1/servers/{quote(ref, safe='')}", query=_wait_query(args))


def server_console(session: Session, args: argparse.Namespace) -> None:
    query = {"lines": args.lines} if args.lines else None
    print(session.call("GET", _server_url(args, "/console-log"), query=query)["output"], end="")


def server_actions(session: Session, args: argparse.Namespace) -> None:
    print_list(session.call("GET", _server_url(args, "/actions"))["actions"],
               ("action", "request_id", "start_time", "finish_time", "result", "message"), args)


SERVER = Resource("server", "/v1/servers", "servers", SERVER_COLUMNS, ref="server id or name", deletable=False,
                  list_query=(Opt("--all-projects", "all_projects", "every project (admin)", kind="const",
                                  const="true"),
                              Opt("--status", "status", "only servers in this status"),
                              Opt("--host", "host", "only servers on this host")))

NETWORK_RESOURCES = [
    (Resource("network", "/v1/networks", "networks", ("id", "name", "network_type", "segmentation_id", "shared",
                                                      "external", "subnets"), ref="network id or name",
              create=(Opt("name", "name", "network name"),
                      Opt("--type", "network_type", "local|flat|vlan|vxlan (admin)"),
                      Opt("--physical-network", "physical_network", "physical label (admin)"),
                      Opt("--segment", "segmentation_id", "VLAN id / VNI (admin)", type=int),
                      Opt("--mtu", "mtu", "MTU", type=int),
                      Opt("--shared", "shared", "usable by every project (admin)", kind="const", const=True),
                      Opt("--external", "external", "external network for routers (admin)", kind="const",
                          const=True))), "networks"),
    (Resource("subnet", "/v1/subnets", "subnets", ("id", "name", "network_id", "cidr", "gateway_ip",
                                                   "enable_dhcp"), ref="subnet id or name",
              create=(Opt("name", "name", "subnet name"),
                      Opt("--network", "network", "network id or name", required=True),
                      Opt("--cidr", "cidr", "e.g. 10.0.0.0/24", required=True),
                      Opt("--gateway", "gateway_ip", "gateway address (default: the first)"),
                      Opt("--no-dhcp", "enable_dhcp", "no DHCP", kind="const", const=False),
                      Opt("--dns", "dns_nameservers", "DNS server (repeat)", kind="list"))), "subnets"),
    (Resource("port", "/v1/ports", "ports", ("id", "name", "mac_address", "fixed_ips", "device_owner", "status"),
              ref="port id or name",
              create=(Opt("name", "name", "port name"),
                      Opt("--network", "network", "network id or name", required=True))), "ports"),
    (Resource("router", "/v1/routers", "routers", ("id", "name", "external_gateway", "status"),
              ref="router id or name", create=(Opt("name", "name", "router name"),)), "routers"),
    (Resource("floating-ip", "/v1/floating-ips", "floating_ips", ("id", "floating_ip_address", "fixed_ip_address",
                                                                  "port_id"), ref="floating IP id",
              create=(Opt("--network", "floating_network", "external network", required=True),)), "floating IPs"),
    (Resource("security-group", "/v1/security-groups", "security_groups", ("id", "name", "description"),
              ref="security group id or name",
              create=(Opt("name", "name", "group name"), Opt("--description", "description", "description"))),
     "security groups"),
]


def register_compute(registry: Registry) -> None:
    registry.register_resource(IMAGE, "images (Glance)")

    def image_create_configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--file", help="upload this file as the image's data")
        parser.add_argument("--progress", action="store_true", help="show a progress bar while uploading")

    registry.register_action("image", Action("create", "create an image (and upload its data)", image_create,
                                             IMAGE_CREATE_OPTS, configure=image_create_configure))
    registry.register_action("image", Action("save", "download an image's data", image_save, output=False,
                                             configure=lambda p: (p.add_argument("image"),
                                                                  p.add_argument("--file", required=True))))
    registry.register_resource(SERVER, "servers (virtual machines)")

    def create_configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--network", action="append", default=[], help="network id or name (repeat)")
        parser.add_argument("--no-network", action="store_true", help="no NIC at all")
        parser.add_argument("--wait", action="store_true", help="wait until ACTIVE (or ERROR)")

    registry.register_action("server", Action("create", "create a server", server_create, SERVER_CREATE_OPTS,
                                              configure=create_configure))
    registry.register_action("server", Action(
        "delete", "delete servers", server_delete, output=False,
        configure=lambda p: (p.add_argument("server", nargs="+"), p.add_argument("--wait", action="store_true"))))
    simple = ("stop", "start", "pause", "unpause", "suspend", "resume", "unrescue", "confirm-resize",
              "revert-resize", "shelve", "unshelve", "lock", "unlock")
    for name in simple:
        registry.register_action("server", server_action(name))
    registry.register_action("server", server_action("reboot", (
        Opt("--hard", "type", "power off and on", kind="const", const="hard"),)))
    registry.register_action("server", server_action("rescue", (Opt("--image", "image", "rescue image"),)))
    registry.register_action("server", server_action("rebuild", (Opt("--image", "image", "new image",
                                                                     required=True),)))
    registry.register_action("server", server_action("resize", (Opt("--flavor", "flavor", "new flavor",
                                                                    required=True),)))
    registry.register_action("server", server_action("snapshot", (Opt("--name", "name", "image name",
                                                                      required=True),)))
    registry.register_action("server", server_action("migrate", (Opt("--host", "host", "target host"),)))
    registry.register_action("server", server_action("live-migrate", (
        Opt("--host", "host", "target host"),
        Opt("--block-migration", "block_migration", "copy the disks: true, false (shared storage) or auto",
            choices=("auto", "true", "false")))))
    registry.register_action("server", server_action("evacuate", (Opt("--host", "host", "target host"),)))
    registry.register_action("server", Action(
        "console-log", "print the serial console", server_console, output=False,
        configure=lambda p: (p.add_argument("server"), p.add_argument("--lines", type=int))))
    registry.register_action("server", Action("actions", "the server's action log", server_actions,
                                              configure=lambda p: p.add_argument("server")))
    for resource, help in NETWORK_RESOURCES:
        registry.register_resource(resource, help)
