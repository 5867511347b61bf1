"""CLI of block storage: `hvd volume ...`, `hvd volume-snapshot ...`, `hvd volume-backup ...`,
`hvd volume-type ...` (OpenStack's `volume snapshot` / `volume backup` / `volume type`, one word
each because the CLI is `hvd <object> <action>`). `--wait` uses the API's ?wait=true."""

from __future__ import annotations

import argparse
from typing import Any

from hvd.cli.commands import Action, Opt, Registry, Resource
from hvd.cli.commands import body_from as _all_fields
from hvd.cli.http import CliError, Session
from hvd.cli.output import print_list, print_one

VOLUME_COLUMNS = ("id", "name", "status", "size_gb", "volume_type", "bootable", "attached_to")
WAIT = Opt("--wait", "", "wait until it is stable (available, error, deleted...)", kind="const", const=True)
ALL = Opt("--all-projects", "all_projects", "admin: every project's", kind="const", const="true")

VOLUME_TYPE = Resource(
    "volume-type", "/v1/volume-types", "volume_types", ("id", "name", "extra_specs", "is_public", "description"),
    ref="volume type id or name",
    create=(
        Opt("name", "name", "type name"),
        Opt("--description", "description", "what it is for"),
        Opt("--property", "extra_specs", "extra spec KEY=VALUE, e.g. volume_backend_name=lvm-1 or"
                                         " multiattach='<is> True' (repeat)", kind="pairs"),
        Opt("--private", "is_public", "only admins see it", kind="const", const=False),
    ),
    update=(
        Opt("--description", "description", "new description"),
        Opt("--property", "extra_specs", "set extra spec KEY=VALUE (repeat)", kind="pairs"),
        Opt("--unset", "unset", "remove an extra spec (repeat)", kind="list"),
    ),
)


def body_from(opts: tuple[Opt, ...], args: argparse.Namespace) -> dict[str, Any]:
    """The request body: options without a field (--wait) are query parameters, not body."""
    return _all_fields([o for o in opts if o.field], args)


def _wait(args: argparse.Namespace) -> dict[str, Any] | None:
    return {"wait": "true"} if getattr(args, "opt_wait", None) else None


def _volume_row(v: dict[str, Any]) -> dict[str, Any]:
    return {**v, "attached_to": ", ".join(f"{a['server_id']} ({a['device'] or a['status']})"
                                          for a in v.get("attachments") or [])}


def _ref(path: str, ref: str) -> str:
    from urllib.parse import quote

    return f"{path}/{quote(ref, safe='')}"


CREATE_OPTS = (
    Opt("name", "name", "volume name"),
    Opt("--size", "size_gb", "size in GiB", type=int, required=True),
    Opt("--type", "volume_type", "volume type (default: the default type)"),
    Opt("--image", "image", "create from this image"),
    Opt("--snapshot", "snapshot", "create from this volume snapshot"),
    Opt("--source", "source_volume", "create as a copy of this volume"),
    Opt("--zone", "availability_zone", "availability zone"),
    Opt("--description", "description", "description"),
    Opt("--bootable", "bootable", "mark it bootable", kind="const", const=True),
    Opt("--property", "metadata", "metadata KEY=VALUE (repeat)", kind="pairs"),
    WAIT,
)


def volume_create(session: Session, args: argparse.Namespace) -> None:
    print_one(_volume_row(session.call("POST", "/v1/volumes", body_from(CREATE_OPTS, args), query=_wait(args))),
              args)


def volume_list(session: Session, args: argparse.Namespace) -> None:
    rows = session.list_all("/v1/volumes", "volumes", body_from((ALL,), args))
    print_list([_volume_row(v) for v in rows], VOLUME_COLUMNS, args)


def volume_show(session: Session, args: argparse.Namespace) -> None:
    print_one(_volume_row(session.call("GET", _ref("/v1/volumes", args.volume))), args)


def _delete_each(path: str) -> Any:
    def run(session: Session, args: argparse.Namespace) -> None:
        for ref in args.refs:
            session.call("DELETE", _ref(path, ref), query=_wait(args))
    return run


def volume_extend(session: Session, args: argparse.Namespace) -> None:
    print_one(_volume_row(session.call("POST", _ref("/v1/volumes", args.volume) + "/extend",
                                       {"new_size_gb": args.size}, query=_wait(args))), args)


UPLOAD_OPTS = (
    Opt("volume", "", "volume id or name"),
    Opt("--name", "name", "the new image's name", required=True),
    Opt("--disk-format", "disk_format", "the image's format (default qcow2)", choices=("raw", "qcow2")),
    Opt("--public", "visibility", "every project sees the image (admin)", kind="const", const="public"),
    Opt("--force", "force", "upload an attached volume (its data may be inconsistent)", kind="const", const=True),
    WAIT,
)


def volume_upload_image(session: Session, args: argparse.Namespace) -> None:
    answer = session.call("POST", _ref("/v1/volumes", args.volume) + "/upload-image", body_from(UPLOAD_OPTS[1:], args),
                          query=_wait(args))
    print_one({**_volume_row(answer["volume"]), "image_id": answer["image_id"]}, args)


def volume_reset(session: Session, args: argparse.Namespace) -> None:
    print_one(_volume_row(session.call("POST", _ref("/v1/volumes", args.volume) + "/reset-status",
                                       {"status": args.opt_state})), args)


SET_OPTS = (
    Opt("volume", "", "volume id or name"),
    Opt("--name", "name", "new name"),
    Opt("--description", "description", "new description"),
    Opt("--bootable", "bootable", "mark bootable", kind="const", const=True),
    Opt("--non-bootable", "bootable", "mark not bootable", kind="const", const=False),
    Opt("--property", "metadata", "replace the metadata with these KEY=VALUE (repeat)", kind="pairs"),
)


def volume_set(session: Session, args: argparse.Namespace) -> None:
    body = body_from(SET_OPTS[1:], args)
    if not body:
        raise CliError("nothing to change: give at least one option")
    session.call("PATCH", _ref("/v1/volumes", args.volume), body)


def _refs(name: str) -> Any:
    return lambda p: p.add_argument("refs", nargs="+", metavar=name.upper(), help=f"{name} id or name")


SNAPSHOT_COLUMNS = ("id", "name", "status", "volume_id", "size_gb", "created_at")
SNAPSHOT_OPTS = (
    Opt("volume", "volume", "volume id or name"),
    Opt("--name", "name", "snapshot name"),
    Opt("--description", "description", "description"),
    Opt("--force", "force", "snapshot an attached volume (its data may be inconsistent)", kind="const", const=True),
    WAIT,
)


def snapshot_create(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("POST", "/v1/snapshots", body_from(SNAPSHOT_OPTS, args), query=_wait(args)), args)


def _lister(path: str, plural: str, columns: tuple[str, ...]) -> Any:
    def run(session: Session, args: argparse.Namespace) -> None:
        print_list(session.list_all(path, plural, body_from((ALL,), args)), columns, args)
    return run


def _shower(path: str) -> Any:
    def run(session: Session, args: argparse.Namespace) -> None:
        print_one(session.call("GET", _ref(path, args.ref)), args)
    return run


BACKUP_COLUMNS = ("id", "name", "status", "volume_id", "size_gb", "is_incremental", "new_chunks", "stored_bytes")
BACKUP_OPTS = (
    Opt("volume", "volume", "volume id or name"),
    Opt("--name", "name", "backup name"),
    Opt("--description", "description", "description"),
    Opt("--full", "incremental", "store every chunk again (default: incremental)", kind="const", const=False),
    Opt("--force", "force", "back up an attached (in-use) volume", kind="const", const=True),
    WAIT,
)
RESTORE_OPTS = (
    Opt("ref", "", "backup id or name"),
    Opt("--volume", "volume", "an available volume to overwrite (default: a new volume)"),
    Opt("--name", "name", "name of the new volume"),
    Opt("--size", "size_gb", "size of the new volume in GiB (default: the backup's)", type=int),
    WAIT,
)


def backup_create(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("POST", "/v1/backups", body_from(BACKUP_OPTS, args), query=_wait(args)), args)


def backup_restore(session: Session, args: argparse.Namespace) -> None:
    answer = session.call("POST", _ref("/v1/backups", args.ref) + "/restore", body_from(RESTORE_OPTS[1:], args),
                          query=_wait(args))
    print_one(_volume_row(answer["volume"]), args)


def backup_verify(session: Session, args: argparse.Namespace) -> None:
    answer = session.call("POST", _ref("/v1/backups", args.ref) + "/verify")
    print_one({**answer, "problems": "; ".join(answer["problems"]) or "none"}, args)
    if not answer["ok"]:
        raise CliError(f"backup {args.ref} is damaged: {len(answer['problems'])} problem(s)")


REF = Opt("ref", "", "id or name")


def register_volumes(registry: Registry) -> None:
    vol, item = "/v1/volumes", "/v1/volumes/{id}"
    act = registry.register_action
    act("volume", Action("create", "create a volume (blank, or from an image, snapshot or volume)", volume_create,
                         CREATE_OPTS, operations=(f"POST {vol}",)), "volumes (block storage)")
    act("volume", Action("list", "list volumes", volume_list, (ALL,), operations=(f"GET {vol}",)))
    act("volume", Action("show", "show a volume", volume_show, (Opt("volume", "", "volume id or name"),),
                         operations=(f"GET {item}",)))
    act("volume", Action("delete", "delete volumes (available, without snapshots)", _delete_each(vol), (WAIT,),
                         output=False, configure=_refs("volume"), operations=(f"DELETE {item}",)))
    act("volume", Action("extend", "grow an available volume", volume_extend,
                         (Opt("volume", "", "volume id or name"), Opt("size", "", "new size in GiB", type=int), WAIT),
                         operations=(f"POST {item}/extend",)))
    act("volume", Action("upload-image", "make an image of a volume (an attached one with --force)",
                         volume_upload_image, UPLOAD_OPTS, operations=(f"POST {item}/upload-image",)))
    act("volume", Action("set", "rename a volume, set its bootable flag or metadata", volume_set, SET_OPTS,
                         output=False, operations=(f"PATCH {item}",)))
    act("volume", Action("reset-status", "admin: set a stuck volume's status (no check is made)", volume_reset,
                         (Opt("volume", "", "volume id or name"),
                          Opt("--state", "status", "the status to record", required=True,
                              choices=("available", "error", "in-use", "error_deleting"))),
                         operations=(f"POST {item}/reset-status",)))
    snap, sitem = "/v1/snapshots", "/v1/snapshots/{id}"
    act("volume-snapshot", Action("create", "snapshot a volume", snapshot_create, SNAPSHOT_OPTS,
                                  operations=(f"POST {snap}",)), "volume snapshots")
    act("volume-snapshot", Action("list", "list volume snapshots", _lister(snap, "snapshots", SNAPSHOT_COLUMNS),
                                  (ALL,), operations=(f"GET {snap}",)))
    act("volume-snapshot", Action("show", "show a volume snapshot", _shower(snap), (REF,),
                                  operations=(f"GET {sitem}",)))
    act("volume-snapshot", Action("delete", "delete volume snapshots", _delete_each(snap), (WAIT,), output=False,
                                  configure=_refs("snapshot"), operations=(f"DELETE {sitem}",)))
    bk, bitem = "/v1/backups", "/v1/backups/{id}"
    act("volume-backup", Action("create", "back up a volume (incremental after the first)", backup_create,
                                BACKUP_OPTS, operations=(f"POST {bk}",)), "volume backups")
    act("volume-backup", Action("list", "list volume backups", _lister(bk, "backups", BACKUP_COLUMNS), (ALL,),
                                operations=(f"GET {bk}",)))
    act("volume-backup", Action("show", "show a volume backup", _shower(bk), (REF,), operations=(f"GET {bitem}",)))
    act("volume-backup", Action("delete", "delete volume backups", _delete_each(bk), (WAIT,), output=False,
                                configure=_refs("backup"), operations=(f"DELETE {bitem}",)))
    act("volume-backup", Action("restore", "restore a backup into a new or an available volume", backup_restore,
                                RESTORE_OPTS, operations=(f"POST {bitem}/restore",)))
    act("volume-backup", Action("verify", "read back every chunk of a backup (exit 1 if damaged)", backup_verify,
                                (REF,), operations=(f"POST {bitem}/verify",)))
    registry.register_resource(VOLUME_TYPE, "volume types (backend choice, multi-attach)")
