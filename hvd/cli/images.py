"""CLI objects of images (Glance): create with an upload and its progress bar, save, upload, set."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hvd.cli.commands import Action, Opt, Registry, Resource, body_from
from hvd.cli.http import CliError, Session
from hvd.cli.output import print_one

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
    size = path.stat().st_size
    progress = task = None
    if show_progress:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                            TransferSpeedColumn())
        task = progress.add_task(f"uploading {path.name}", total=size)
        progress.start()
    try:
        with session.open(f"/v1/images/{quote(image_id)}/file", method="PUT", data=_chunks(path, progress, task),
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                          timeout=max(session.timeout, 3600)):
            pass
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
    with session.open(f"/v1/images/{image['id']}/file", timeout=3600) as resp, open(args.file, "wb") as out:
        while chunk := resp.read(1 << 20):
            out.write(chunk)


def image_upload(session: Session, args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    image = session.call("GET", IMAGE.url(args.image))
    upload(session, image["id"], path, args.progress)
    print_one(session.call("GET", IMAGE.url(image["id"])), args)


def register_images(registry: Registry) -> None:
    registry.register_resource(IMAGE, "images (Glance)")

    def image_create_configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--file", help="upload this file as the image's data")
        parser.add_argument("--progress", action="store_true", help="show a progress bar while uploading")

    registry.register_action("image", Action("create", "create an image (and upload its data)", image_create,
                                             IMAGE_CREATE_OPTS, configure=image_create_configure,
                                             operations=("POST /v1/images", "PUT /v1/images/{id}/file")))
    registry.register_action("image", Action(
        "upload", "upload the data of a queued image", image_upload, output=True,
        configure=lambda p: (p.add_argument("image", help="image id or name"), p.add_argument("file"),
                             p.add_argument("--progress", action="store_true", help="show a progress bar")),
        operations=("PUT /v1/images/{id}/file",)))
    registry.register_action("image", Action("save", "download an image's data", image_save, output=False,
                                             configure=lambda p: (p.add_argument("image"),
                                                                  p.add_argument("--file", required=True)),
                                             operations=("GET /v1/images/{id}/file",)))
