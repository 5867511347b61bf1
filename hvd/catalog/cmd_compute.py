"""Apply handlers: images, instances (state with compare-and-swap), instance actions."""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from pydantic import Field

from hvd.bounds import Int64
from hvd.catalog import quota
from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import dumps, fetch_one, require
from hvd.catalog.usage import project_usage
from hvd.errors import Conflict, InvalidState, NotFound

UNSET: Literal["__unset__"] = "__unset__"  # "leave this field as it is" (None is a real value)


class ImageCreate(Command):
    type: Literal["image.create"] = "image.create"
    id: str
    name: str
    owner: str
    disk_format: str
    container_format: str
    visibility: Literal["public", "private"]
    protected: bool = False
    min_disk: Int64 = 0
    min_ram: Int64 = 0
    properties: dict[str, str] = Field(default_factory=dict)
    created_at: str


class ImageUpdate(Command):
    type: Literal["image.update"] = "image.update"
    id: str
    name: str | None = None
    visibility: Literal["public", "private"] | None = None
    protected: bool | None = None
    min_disk: Int64 | None = None
    min_ram: Int64 | None = None
    properties: dict[str, str] | None = None
    updated_at: str


class ImageSetStatus(Command):
    """Move an image along queued → saving → active (or killed); CAS on the current status."""

    type: Literal["image.set_status"] = "image.set_status"
    id: str
    status: Literal["queued", "saving", "active", "killed", "deleted"]
    expect: list[str]
    size: Int64 | None = None
    virtual_size: Int64 | None = None
    checksum: str | None = None
    host: str | None = None
    updated_at: str


class ImageDelete(Command):
    type: Literal["image.delete"] = "image.delete"
    id: str
    updated_at: str


class InstanceCreate(Command):
    """A new server record in BUILD/scheduling; quota (instances, cores, ram) checked here."""

    type: Literal["instance.create"] = "instance.create"
    id: str
    name: str
    project_id: str
    user_id: str
    flavor_id: str
    flavor: dict[str, Any]
    image_id: str
    key_name: str | None = None
    public_key: str | None = None
    user_data: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    availability_zone: str | None = None
    server_group_id: str | None = None
    config_drive: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)
    created_at: str


class InstanceUpdate(Command):
    """Change an instance's state; refused unless task_state is one of `expect_task_state`.

    Fields left at UNSET are not changed. This is Nova's save(expected_task_state=...): two
    operations racing on one instance cannot both win.
    """

    type: Literal["instance.update"] = "instance.update"
    id: str
    expect_task_state: list[str | None] | None = None  # None = no check
    expect_vm_state: list[str] | None = None
    expect_host: list[str | None] | None = None  # None = no check; guards a build against reassignment
    vm_state: str = UNSET
    task_state: str | None = UNSET
    power_state: Int64 | None = None
    host: str | None = UNSET
    fault: dict[str, Any] | Literal["__unset__"] | None = UNSET
    launched_at: str | None = None
    flavor_id: str | None = None
    flavor: dict[str, Any] | None = None
    image_id: str | None = None
    extra: dict[str, Any] | None = None  # merged into the instance's extra
    updated_at: str


class InstanceLock(Command):
    type: Literal["instance.lock"] = "instance.lock"
    id: str
    locked: bool
    locked_by: str | None = None
    updated_at: str


class InstanceDestroy(Command):
    """The instance is gone: mark it deleted, drop its claims and group membership."""

    type: Literal["instance.destroy"] = "instance.destroy"
    id: str
    deleted_at: str


PASSWORD_MAX_BYTES = 256  # Nova's metadata password limit (an encrypted, base64-encoded password)
PASSWORD_KEY = "password"  # key in the instance's extra
BOOT_VOLUME_KEY = "boot_volume_id"  # key in the instance's extra: the volume the server boots from


class InstancePasswordSet(Command):
    """The guest posted its (encrypted) admin password through the metadata service: stored once in
    the instance's extra; a second one is refused (Conflict) until the owner clears it (Nova's rule)."""

    since = 2  # catalog protocol level (hvd/catalog/protocol.py): new in hvd 0.2.0
    type: Literal["instance.password_set"] = "instance.password_set"
    id: str
    password: str = Field(min_length=1, max_length=PASSWORD_MAX_BYTES)
    updated_at: str


class InstancePasswordClear(Command):
    """The owner cleared the stored password (the guest may post a new one)."""

    since = 2  # catalog protocol level (hvd/catalog/protocol.py): new in hvd 0.2.0
    type: Literal["instance.password_clear"] = "instance.password_clear"
    id: str
    updated_at: str


class ActionStart(Command):
    type: Literal["action.start"] = "action.start"
    id: str
    instance_id: str
    action: str
    request_id: str
    user_id: str
    project_id: str
    start_time: str


class ActionFinish(Command):
    type: Literal["action.finish"] = "action.finish"
    id: str
    finish_time: str
    result: Literal["success", "error"]
    message: str = ""


class ActionProgress(Command):
    """How far a running action is (e.g. bytes a migration still has to copy): its message until it finishes."""

    type: Literal["action.progress"] = "action.progress"
    id: str
    message: str = Field(max_length=1024)


def _require_live(conn: sqlite3.Connection, instance_id: str) -> dict[str, Any]:
    row = fetch_one(conn, "SELECT * FROM instances WHERE id=? AND deleted_at IS NULL", (instance_id,))
    if row is None:
        raise NotFound(f"Instance {instance_id} could not be found")
    return row


def check_image_room(conn: sqlite3.Connection, owner: str) -> None:
    """QuotaExceeded unless ``owner`` may have one more image (killed ones do not count)."""
    usage = conn.execute(
        "SELECT COUNT(*) FROM images WHERE owner=? AND status NOT IN ('deleted', 'killed')", (owner,)
    ).fetchone()[0]
    quota.check(conn, owner, "images", 1, usage)


@handles(ImageCreate)
def image_create(conn: sqlite3.Connection, cmd: ImageCreate) -> Result:
    check_image_room(conn, cmd.owner)
    conn.execute(
        "INSERT INTO images (id, name, owner, status, disk_format, container_format, visibility, protected,"
        " min_disk, min_ram, properties, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (cmd.id, cmd.name, cmd.owner, "queued", cmd.disk_format, cmd.container_format, cmd.visibility,
         int(cmd.protected), cmd.min_disk, cmd.min_ram, dumps(cmd.properties), cmd.created_at, cmd.created_at),
    )
    return {"id": cmd.id}


@handles(ImageUpdate)
def image_update(conn: sqlite3.Connection, cmd: ImageUpdate) -> Result:
    row = require(conn, "images", "id", cmd.id, "Image")
    if row["status"] == "deleted":
        raise NotFound(f"Image {cmd.id} could not be found")
    conn.execute(
        "UPDATE images SET name=?, visibility=?, protected=?, min_disk=?, min_ram=?, properties=?, updated_at=?"
        " WHERE id=?",
        (
            cmd.name if cmd.name is not None else row["name"],
            cmd.visibility or row["visibility"],
            int(cmd.protected if cmd.protected is not None else row["protected"]),
            cmd.min_disk if cmd.min_disk is not None else row["min_disk"],
            cmd.min_ram if cmd.min_ram is not None else row["min_ram"],
            dumps(cmd.properties if cmd.properties is not None else row["properties"]),
            cmd.updated_at,
            cmd.id,
        ),
    )
    return {"id": cmd.id}


@handles(ImageSetStatus)
def image_set_status(conn: sqlite3.Connection, cmd: ImageSetStatus) -> Result:
    row = require(conn, "images", "id", cmd.id, "Image")
    if row["status"] not in cmd.expect:
        raise Conflict(f"Image {cmd.id} is {row['status']}, expected {' or '.join(cmd.expect)}")
    if cmd.status == "active" and cmd.size:  # the data counts against the owner's quota once it is whole
        used = project_usage(conn, row["owner"])["image_megabytes"]
        quota.check(conn, row["owner"], "image_megabytes", (cmd.size + 2**20 - 1) // 2**20, used)
    conn.execute(
        "UPDATE images SET status=?, size=COALESCE(?, size), virtual_size=COALESCE(?, virtual_size),"
        " checksum=COALESCE(?, checksum), host=COALESCE(?, host), updated_at=? WHERE id=?",
        (cmd.status, cmd.size, cmd.virtual_size, cmd.checksum, cmd.host, cmd.updated_at, cmd.id),
    )
    return {"id": cmd.id, "status": cmd.status}


@handles(ImageDelete)
def image_delete(conn: sqlite3.Connection, cmd: ImageDelete) -> Result:
    row = require(conn, "images", "id", cmd.id, "Image")
    if row["status"] == "deleted":
        raise NotFound(f"Image {cmd.id} could not be found")
    if row["protected"]:
        raise Conflict(f"Image {cmd.id} is protected and cannot be deleted")
    conn.execute("UPDATE images SET status='deleted', updated_at=? WHERE id=?", (cmd.updated_at, cmd.id))
    return {"id": cmd.id, "host": row["host"]}


@handles(InstanceCreate)
def instance_create(conn: sqlite3.Connection, cmd: InstanceCreate) -> Result:
    usage = project_usage(conn, cmd.project_id)
    quota.check(conn, cmd.project_id, "instances", 1, usage["instances"])
    quota.check(conn, cmd.project_id, "cores", int(cmd.flavor["vcpus"]), usage["cores"])
    quota.check(conn, cmd.project_id, "ram", int(cmd.flavor["ram_mb"]), usage["ram"])
    if cmd.server_group_id is not None:
        group = require(conn, "server_groups", "id", cmd.server_group_id, "Server group")
        if group["project_id"] != cmd.project_id:
            raise NotFound(f"Server group {cmd.server_group_id} could not be found")
        members = conn.execute(
            "SELECT COUNT(*) FROM server_group_members WHERE group_id=?", (cmd.server_group_id,)
        ).fetchone()[0]
        quota.check(conn, cmd.project_id, "server_group_members", 1, members)
        conn.execute("INSERT INTO server_group_members VALUES (?,?)", (cmd.server_group_id, cmd.id))
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM instances").fetchone()[0]
    conn.execute(
        "INSERT INTO instances (id, seq, name, project_id, user_id, host, flavor_id, flavor, image_id, key_name,"
        " public_key, user_data, metadata, availability_zone, server_group_id, config_drive, vm_state,"
        " task_state, power_state, extra, created_at, updated_at)"
        " VALUES (?,?,?,?,?,NULL,?,?,?,?,?,?,?,?,?,?,'building','scheduling',0,?,?,?)",
        (cmd.id, seq, cmd.name, cmd.project_id, cmd.user_id, cmd.flavor_id, dumps(cmd.flavor), cmd.image_id,
         cmd.key_name, cmd.public_key, cmd.user_data, dumps(cmd.metadata), cmd.availability_zone,
         cmd.server_group_id, int(cmd.config_drive), dumps(cmd.extra), cmd.created_at, cmd.created_at),
    )
    return {"id": cmd.id, "seq": seq}


@handles(InstanceUpdate)
def instance_update(conn: sqlite3.Connection, cmd: InstanceUpdate) -> Result:
    row = _require_live(conn, cmd.id)
    if cmd.expect_task_state is not None and row["task_state"] not in cmd.expect_task_state:
        raise InvalidState(
            f"Instance {cmd.id} is busy: task_state is {row['task_state']},"
            f" expected {' or '.join(str(s) for s in cmd.expect_task_state)}",
            task_state=row["task_state"],
        )
    if cmd.expect_vm_state is not None and row["vm_state"] not in cmd.expect_vm_state:
        raise InvalidState(f"Instance {cmd.id} is in vm_state {row['vm_state']}", vm_state=row["vm_state"])
    if cmd.expect_host is not None and row["host"] not in cmd.expect_host:
        raise InvalidState(f"Instance {cmd.id} is placed on host {row['host']}, not"
                           f" {' or '.join(str(h) for h in cmd.expect_host)}", host=row["host"])
    changes: dict[str, Any] = {"updated_at": cmd.updated_at}
    if cmd.vm_state != UNSET:
        changes["vm_state"] = cmd.vm_state
    if cmd.task_state != UNSET:
        changes["task_state"] = cmd.task_state
    if cmd.host != UNSET:
        changes["host"] = cmd.host
    if cmd.fault != UNSET:
        changes["fault"] = None if cmd.fault is None else dumps(cmd.fault)
    if cmd.power_state is not None:
        changes["power_state"] = cmd.power_state
    if cmd.launched_at is not None:
        changes["launched_at"] = cmd.launched_at
    if cmd.flavor is not None:
        changes["flavor"] = dumps(cmd.flavor)
        changes["flavor_id"] = cmd.flavor_id or row["flavor_id"]
    if cmd.image_id is not None:
        changes["image_id"] = cmd.image_id
    if cmd.extra is not None:
        changes["extra"] = dumps({**row["extra"], **cmd.extra})
    conn.execute(
        f"UPDATE instances SET {', '.join(f'{k}=?' for k in changes)} WHERE id=?", (*changes.values(), cmd.id)
    )
    return {"id": cmd.id, "vm_state": changes.get("vm_state", row["vm_state"]),
            "task_state": changes.get("task_state", row["task_state"])}


@handles(InstanceLock)
def instance_lock(conn: sqlite3.Connection, cmd: InstanceLock) -> Result:
    _require_live(conn, cmd.id)
    conn.execute(
        "UPDATE instances SET locked=?, locked_by=?, updated_at=? WHERE id=?",
        (int(cmd.locked), cmd.locked_by if cmd.locked else None, cmd.updated_at, cmd.id),
    )
    return {"id": cmd.id, "locked": cmd.locked}


@handles(InstanceDestroy)
def instance_destroy(conn: sqlite3.Connection, cmd: InstanceDestroy) -> Result:
    row = fetch_one(conn, "SELECT deleted_at FROM instances WHERE id=?", (cmd.id,))
    if row is None:
        raise NotFound(f"Instance {cmd.id} could not be found")
    conn.execute(
        "UPDATE instances SET vm_state='deleted', task_state=NULL, power_state=0, deleted_at=COALESCE(deleted_at, ?),"
        " updated_at=? WHERE id=?",
        (cmd.deleted_at, cmd.deleted_at, cmd.id),
    )
    conn.execute("DELETE FROM claims WHERE instance_id=?", (cmd.id,))
    conn.execute("DELETE FROM server_group_members WHERE instance_id=?", (cmd.id,))
    return {"id": cmd.id}


@handles(InstancePasswordSet)
def instance_password_set(conn: sqlite3.Connection, cmd: InstancePasswordSet) -> Result:
    row = _require_live(conn, cmd.id)
    if row["extra"].get(PASSWORD_KEY):
        raise Conflict(f"Instance {cmd.id} already has a password; its owner must clear it first")
    conn.execute("UPDATE instances SET extra=?, updated_at=? WHERE id=?",
                 (dumps({**row["extra"], PASSWORD_KEY: cmd.password}), cmd.updated_at, cmd.id))
    return {"id": cmd.id}


@handles(InstancePasswordClear)
def instance_password_clear(conn: sqlite3.Connection, cmd: InstancePasswordClear) -> Result:
    row = _require_live(conn, cmd.id)
    extra = {k: v for k, v in row["extra"].items() if k != PASSWORD_KEY}
    conn.execute("UPDATE instances SET extra=?, updated_at=? WHERE id=?", (dumps(extra), cmd.updated_at, cmd.id))
    return {"id": cmd.id}


@handles(ActionStart)
def action_start(conn: sqlite3.Connection, cmd: ActionStart) -> Result:
    conn.execute(
        "INSERT INTO instance_actions (id, instance_id, action, request_id, user_id, project_id, start_time)"
        " VALUES (?,?,?,?,?,?,?)",
        (cmd.id, cmd.instance_id, cmd.action, cmd.request_id, cmd.user_id, cmd.project_id, cmd.start_time),
    )
    return {"id": cmd.id}


@handles(ActionProgress)
def action_progress(conn: sqlite3.Connection, cmd: ActionProgress) -> Result:
    cur = conn.execute("UPDATE instance_actions SET message=? WHERE id=? AND finish_time IS NULL",
                       (cmd.message, cmd.id))
    if cur.rowcount == 0:
        raise NotFound(f"action {cmd.id} is not running")
    return {"id": cmd.id}


@handles(ActionFinish)
def action_finish(conn: sqlite3.Connection, cmd: ActionFinish) -> Result:
    # a success without a message keeps the last progress line (e.g. what a migration copied)
    cur = conn.execute(
        "UPDATE instance_actions SET finish_time=?, result=?, message=CASE WHEN ?='' AND ?='success'"
        " THEN COALESCE(message, '') ELSE ? END WHERE id=?",
        (cmd.finish_time, cmd.result, cmd.message, cmd.result, cmd.message, cmd.id),
    )
    if cur.rowcount == 0:
        raise NotFound(f"action {cmd.id} could not be found")
    return {"id": cmd.id}
