"""Apply handlers: volume types, volumes, volume snapshots, volume attachments (backups: cmd_volume_backups).

Every state change is a compare-and-swap on the row's status, decided by the pure tables of
hvd/storage/volumes/states.py, so two operations racing on one volume cannot both win. The
contract for callers (which command moves which state) is in hvd/storage/volumes/__init__.py.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar, Literal

from pydantic import Field

from hvd.bounds import Int64
from hvd.catalog import quota
from hvd.catalog.commands import Command, Result, handles
from hvd.catalog.sql import dumps, fetch_all, fetch_one, require
from hvd.catalog.usage import USAGE_SQL
from hvd.errors import BadRequest, CapacityExceeded, Conflict, InvalidState, NotFound
from hvd.storage.volumes import claims
from hvd.storage.volumes import states as st

MULTIATTACH_TRUE = ("<is> True", "True", "true")
VOLUMES_PROTOCOL = 2  # the catalog protocol level (hvd/catalog/protocol.py) that introduced these commands


class VolumeCommand(Command):
    """Base of the volume commands: none is proposed while a member older than their level remains."""

    since: ClassVar[int] = VOLUMES_PROTOCOL


def type_allows_multiattach(extra_specs: dict[str, Any]) -> bool:
    """Cinder's ``multiattach="<is> True"`` extra spec (plain true accepted)."""
    return str(extra_specs.get("multiattach", "")) in MULTIATTACH_TRUE


def usage_of(conn: sqlite3.Connection, project_id: str, resource: str) -> int:
    return int(conn.execute(USAGE_SQL[resource], (project_id,)).fetchone()[0])


def volume_row(conn: sqlite3.Connection, volume_id: str) -> dict[str, Any]:
    return require(conn, "volumes", "id", volume_id, "Volume")


def set_volume(conn: sqlite3.Connection, volume_id: str, updated_at: str, **fields: Any) -> None:
    cols = ", ".join(f"{k}=?" for k in fields)
    conn.execute(f"UPDATE volumes SET {cols}, updated_at=? WHERE id=?", (*fields.values(), updated_at, volume_id))


def expect_status(row: dict[str, Any], expected: tuple[str, ...] | list[str], what: str) -> None:
    if row["status"] not in expected:
        raise InvalidState(f"{what} {row['id']} is {row['status']}, expected {' or '.join(expected)}",
                           status=row["status"])


# --- volume types --------------------------------------------------------------------------------


class VolumeTypeCreate(VolumeCommand):
    type: Literal["volume_type.create"] = "volume_type.create"
    id: str
    name: str
    description: str = ""
    extra_specs: dict[str, str] = Field(default_factory=dict)
    is_public: bool = True
    created_at: str


class VolumeTypeUpdate(VolumeCommand):
    type: Literal["volume_type.update"] = "volume_type.update"
    id: str
    description: str | None = None
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class VolumeTypeDelete(VolumeCommand):
    type: Literal["volume_type.delete"] = "volume_type.delete"
    id: str


@handles(VolumeTypeCreate)
def volume_type_create(conn: sqlite3.Connection, cmd: VolumeTypeCreate) -> Result:
    if fetch_one(conn, "SELECT id FROM volume_types WHERE name=? OR id=?", (cmd.name, cmd.id)) is not None:
        raise Conflict(f"a volume type named '{cmd.name}' or with id '{cmd.id}' already exists")
    conn.execute("INSERT INTO volume_types VALUES (?,?,?,?,?,?)",
                 (cmd.id, cmd.name, cmd.description, dumps(cmd.extra_specs), int(cmd.is_public), cmd.created_at))
    return {"id": cmd.id}


@handles(VolumeTypeUpdate)
def volume_type_update(conn: sqlite3.Connection, cmd: VolumeTypeUpdate) -> Result:
    row = require(conn, "volume_types", "id", cmd.id, "Volume type")
    specs: dict[str, Any] = dict(row["extra_specs"])
    specs.update(cmd.set)
    for key in cmd.unset:
        if key not in specs:
            raise NotFound(f"volume type {cmd.id} has no extra spec '{key}'")
        del specs[key]
    description = row["description"] if cmd.description is None else cmd.description
    conn.execute("UPDATE volume_types SET extra_specs=?, description=? WHERE id=?", (dumps(specs), description, cmd.id))
    return {"id": cmd.id, "extra_specs": specs}


@handles(VolumeTypeDelete)
def volume_type_delete(conn: sqlite3.Connection, cmd: VolumeTypeDelete) -> Result:
    require(conn, "volume_types", "id", cmd.id, "Volume type")
    used = conn.execute("SELECT COUNT(*) FROM volumes WHERE volume_type_id=?", (cmd.id,)).fetchone()[0]
    if used:
        raise Conflict(f"volume type {cmd.id} is used by {used} volume(s)")
    conn.execute("DELETE FROM volume_types WHERE id=?", (cmd.id,))
    return {"id": cmd.id}


# --- volumes --------------------------------------------------------------------------------------


class VolumeCreate(VolumeCommand):
    """A new volume record placed on ``host``/``backend``; quotas (volumes, gigabytes) checked here.

    With ``restore_backup_id`` the volume starts in restoring-backup (filled from that backup),
    else in creating (blank, or from the image / snapshot / volume named).
    """

    type: Literal["volume.create"] = "volume.create"
    id: str
    project_id: str
    user_id: str
    name: str
    description: str = ""
    size_gb: Int64
    volume_type_id: str
    availability_zone: str
    host: str
    backend: str
    volume_format: Literal["raw", "qcow2"] = "raw"
    bootable: bool = False
    source_image_id: str | None = None
    source_snapshot_id: str | None = None
    source_volume_id: str | None = None
    restore_backup_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: str


class VolumeCreateFinish(VolumeCommand):
    """creating → available (ok) or error; ``bootable`` set when the volume came from an image."""

    type: Literal["volume.create_finish"] = "volume.create_finish"
    id: str
    ok: bool
    error: str | None = None
    bootable: bool | None = None
    updated_at: str


class VolumeUpdate(VolumeCommand):
    """Name, description, bootable flag, metadata: no state change."""

    type: Literal["volume.update"] = "volume.update"
    id: str
    name: str | None = None
    description: str | None = None
    bootable: bool | None = None
    metadata: dict[str, str] | None = None
    updated_at: str


class VolumeBegin(VolumeCommand):
    """Start ``op`` (delete, extend, extend_online, upload): CAS from the op's allowed states (with
    ``force``, its forced ones too) to its transitional one (deleting, extending, uploading); the
    state before is kept in previous_status. An upload's image record is made just before it
    (ImageCreate, properties ``volume_id``)."""

    type: Literal["volume.begin"] = "volume.begin"
    id: str
    op: Literal["delete", "extend", "extend_online", "upload"]
    new_size_gb: Int64 | None = None
    force: bool = False
    updated_at: str


class VolumeFinish(VolumeCommand):
    """End ``op``: from its transitional state to its final one (states.final_status). A delete
    that succeeded removes the record; an extend that succeeded takes the new size."""

    type: Literal["volume.finish"] = "volume.finish"
    id: str
    op: Literal["delete", "extend", "extend_online", "upload"]
    ok: bool
    error: str | None = None
    updated_at: str


class VolumeResetStatus(VolumeCommand):
    """Admin repair (Cinder's reset-state): set any status, no checks beyond the name."""

    type: Literal["volume.reset_status"] = "volume.reset_status"
    id: str
    status: Literal["available", "error", "in-use", "error_deleting"]
    updated_at: str


@handles(VolumeCreate)
def volume_create(conn: sqlite3.Connection, cmd: VolumeCreate) -> Result:
    require(conn, "projects", "id", cmd.project_id, "Project")
    vtype = require(conn, "volume_types", "id", cmd.volume_type_id, "Volume type")
    if cmd.size_gb < 1:
        raise BadRequest(f"a volume's size must be at least 1 GiB, got {cmd.size_gb}")
    if fetch_one(conn, "SELECT id FROM volumes WHERE id=?", (cmd.id,)) is not None:
        raise Conflict(f"volume {cmd.id} already exists")
    sources = [s for s in (cmd.source_image_id, cmd.source_snapshot_id, cmd.source_volume_id, cmd.restore_backup_id)
               if s is not None]
    if len(sources) > 1:
        raise BadRequest("a volume has at most one source: image, snapshot, volume or backup")
    if cmd.source_snapshot_id is not None:
        snap = require(conn, "volume_snapshots", "id", cmd.source_snapshot_id, "Snapshot")
        expect_status(snap, (st.AVAILABLE,), "snapshot")
        if snap["size_gb"] > cmd.size_gb:
            raise BadRequest(f"size {cmd.size_gb} GiB is smaller than snapshot {snap['id']} ({snap['size_gb']} GiB)")
    if cmd.source_volume_id is not None:
        src = volume_row(conn, cmd.source_volume_id)
        expect_status(src, (st.AVAILABLE, st.IN_USE), "source volume")
        if src["size_gb"] > cmd.size_gb:
            raise BadRequest(f"size {cmd.size_gb} GiB is smaller than volume {src['id']} ({src['size_gb']} GiB)")
    status = st.CREATING
    if cmd.restore_backup_id is not None:
        backup = require(conn, "volume_backups", "id", cmd.restore_backup_id, "Backup")
        expect_status(backup, (st.AVAILABLE,), "backup")
        if backup["size_gb"] > cmd.size_gb:
            raise BadRequest(f"size {cmd.size_gb} GiB is smaller than backup {backup['id']} ({backup['size_gb']} GiB)")
        conn.execute("UPDATE volume_backups SET status=?, restore_volume_id=?, updated_at=? WHERE id=?",
                     (st.BACKUP_RESTORING, cmd.id, cmd.created_at, backup["id"]))
        status = st.RESTORING_BACKUP
    quota.check(conn, cmd.project_id, "volumes", 1, usage_of(conn, cmd.project_id, "volumes"))
    quota.check(conn, cmd.project_id, "gigabytes", cmd.size_gb, usage_of(conn, cmd.project_id, "gigabytes"))
    admit_claim(conn, cmd.host, cmd.backend, cmd.size_gb)
    conn.execute(
        "INSERT INTO volumes (id, project_id, user_id, name, description, size_gb, status, host, backend,"
        " volume_type_id, availability_zone, bootable, multiattach, volume_format, source_image_id,"
        " source_snapshot_id, source_volume_id, restore_backup_id, metadata, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (cmd.id, cmd.project_id, cmd.user_id, cmd.name, cmd.description, cmd.size_gb, status, cmd.host,
         cmd.backend, cmd.volume_type_id, cmd.availability_zone, int(cmd.bootable),
         int(type_allows_multiattach(vtype["extra_specs"])), cmd.volume_format, cmd.source_image_id,
         cmd.source_snapshot_id, cmd.source_volume_id, cmd.restore_backup_id, dumps(cmd.metadata),
         cmd.created_at, cmd.created_at),
    )
    return {"id": cmd.id, "status": status}


@handles(VolumeCreateFinish)
def volume_create_finish(conn: sqlite3.Connection, cmd: VolumeCreateFinish) -> Result:
    row = volume_row(conn, cmd.id)
    expect_status(row, (st.CREATING,), "volume")
    status = st.AVAILABLE if cmd.ok else st.ERROR
    bootable = row["bootable"] if cmd.bootable is None else cmd.bootable
    set_volume(conn, cmd.id, cmd.updated_at, status=status, error=None if cmd.ok else cmd.error,
                bootable=int(bootable))
    return {"id": cmd.id, "status": status}


@handles(VolumeUpdate)
def volume_update(conn: sqlite3.Connection, cmd: VolumeUpdate) -> Result:
    row = volume_row(conn, cmd.id)
    set_volume(
        conn, cmd.id, cmd.updated_at,
        name=row["name"] if cmd.name is None else cmd.name,
        description=row["description"] if cmd.description is None else cmd.description,
        bootable=int(row["bootable"] if cmd.bootable is None else cmd.bootable),
        metadata=dumps(row["metadata"] if cmd.metadata is None else cmd.metadata),
    )
    return {"id": cmd.id}


@handles(VolumeBegin)
def volume_begin(conn: sqlite3.Connection, cmd: VolumeBegin) -> Result:
    row = volume_row(conn, cmd.id)
    if cmd.op == "delete":
        attachments = conn.execute("SELECT COUNT(*) FROM volume_attachments WHERE volume_id=?", (cmd.id,)).fetchone()[0]
        snapshots = conn.execute("SELECT COUNT(*) FROM volume_snapshots WHERE volume_id=?", (cmd.id,)).fetchone()[0]
        st.check_deletable(cmd.id, row["status"], attachments, snapshots)
        clones = conn.execute("SELECT COUNT(*) FROM volumes WHERE source_volume_id=? AND status=?",
                              (cmd.id, st.CREATING)).fetchone()[0]
        if clones:
            raise Conflict(f"volume {cmd.id} is being copied into {clones} new volume(s): delete it when they are")
        new_size = None
    elif cmd.op == "upload":  # the data is only read: no size change, no claim
        st.check_operation(cmd.op, row["status"], force=cmd.force, volume_id=cmd.id)
        new_size = None
    else:
        op = st.check_operation(cmd.op, row["status"], volume_id=cmd.id)
        if cmd.new_size_gb is None:
            raise BadRequest(f"{op.name} needs new_size_gb")
        st.check_extend_size(int(row["size_gb"]), cmd.new_size_gb)
        quota.check(conn, row["project_id"], "gigabytes", cmd.new_size_gb - int(row["size_gb"]),
                    usage_of(conn, row["project_id"], "gigabytes"))
        admit_claim(conn, str(row["host"]), str(row["backend"]), cmd.new_size_gb - int(row["size_gb"]))
        new_size = cmd.new_size_gb
    op = st.OPERATIONS[cmd.op]
    set_volume(conn, cmd.id, cmd.updated_at, status=op.during, previous_status=row["status"],
                new_size_gb=new_size, error=None)
    return {"id": cmd.id, "status": op.during, "previous_status": row["status"]}


@handles(VolumeFinish)
def volume_finish(conn: sqlite3.Connection, cmd: VolumeFinish) -> Result:
    row = volume_row(conn, cmd.id)
    op = st.OPERATIONS[cmd.op]
    expect_status(row, (op.during,), "volume")
    if cmd.op == "delete" and cmd.ok:
        conn.execute("DELETE FROM volumes WHERE id=?", (cmd.id,))
        return {"id": cmd.id, "status": "deleted"}
    status = st.final_status(cmd.op, cmd.ok, row["previous_status"])
    size = row["new_size_gb"] if cmd.ok and row["new_size_gb"] is not None else row["size_gb"]
    set_volume(conn, cmd.id, cmd.updated_at, status=status, previous_status=None, new_size_gb=None, size_gb=size,
                error=None if cmd.ok else cmd.error)
    return {"id": cmd.id, "status": status, "size_gb": size}


@handles(VolumeResetStatus)
def volume_reset_status(conn: sqlite3.Connection, cmd: VolumeResetStatus) -> Result:
    volume_row(conn, cmd.id)
    set_volume(conn, cmd.id, cmd.updated_at, status=cmd.status, previous_status=None, new_size_gb=None)
    return {"id": cmd.id, "status": cmd.status}


# --- snapshots ------------------------------------------------------------------------------------


class SnapshotCreate(VolumeCommand):
    """A snapshot record (creating) of an available volume, or of an in-use one with ``force``."""

    type: Literal["volume_snapshot.create"] = "volume_snapshot.create"
    id: str
    volume_id: str
    project_id: str
    user_id: str
    name: str
    description: str = ""
    force: bool = False
    created_at: str


class SnapshotBeginDelete(VolumeCommand):
    type: Literal["volume_snapshot.begin_delete"] = "volume_snapshot.begin_delete"
    id: str
    updated_at: str


class SnapshotFinish(VolumeCommand):
    """End a snapshot's create (→ available | error) or delete (→ removed | error_deleting)."""

    type: Literal["volume_snapshot.finish"] = "volume_snapshot.finish"
    id: str
    op: Literal["create", "delete"]
    ok: bool
    error: str | None = None
    updated_at: str


@handles(SnapshotCreate)
def snapshot_create(conn: sqlite3.Connection, cmd: SnapshotCreate) -> Result:
    vol = volume_row(conn, cmd.volume_id)
    if vol["project_id"] != cmd.project_id:
        raise NotFound(f"Volume {cmd.volume_id} could not be found")
    allowed = (st.AVAILABLE, st.IN_USE) if cmd.force else (st.AVAILABLE,)
    if vol["status"] not in allowed:
        hint = " (force=true snapshots an attached volume; its data may be inconsistent)" \
            if vol["status"] == st.IN_USE else ""
        raise InvalidState(f"cannot snapshot volume {cmd.volume_id}: it is {vol['status']}{hint}", status=vol["status"])
    quota.check(conn, cmd.project_id, "snapshots", 1, usage_of(conn, cmd.project_id, "snapshots"))
    conn.execute("INSERT INTO volume_snapshots VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (cmd.id, cmd.project_id, cmd.user_id, cmd.volume_id, cmd.name, cmd.description, vol["size_gb"],
                  st.CREATING, vol["host"], vol["backend"], None, cmd.created_at, cmd.created_at))
    return {"id": cmd.id, "status": st.CREATING}


@handles(SnapshotBeginDelete)
def snapshot_begin_delete(conn: sqlite3.Connection, cmd: SnapshotBeginDelete) -> Result:
    snap = require(conn, "volume_snapshots", "id", cmd.id, "Snapshot")
    expect_status(snap, (st.AVAILABLE, st.ERROR, st.ERROR_DELETING), "snapshot")
    users = conn.execute("SELECT COUNT(*) FROM volumes WHERE source_snapshot_id=? AND status=?",
                         (cmd.id, st.CREATING)).fetchone()[0]
    if users:
        raise Conflict(f"snapshot {cmd.id} is being copied into {users} new volume(s): delete it when they are")
    conn.execute("UPDATE volume_snapshots SET status=?, updated_at=? WHERE id=?", (st.DELETING, cmd.updated_at, cmd.id))
    return {"id": cmd.id, "status": st.DELETING}


@handles(SnapshotFinish)
def snapshot_finish(conn: sqlite3.Connection, cmd: SnapshotFinish) -> Result:
    snap = require(conn, "volume_snapshots", "id", cmd.id, "Snapshot")
    expect_status(snap, (st.CREATING if cmd.op == "create" else st.DELETING,), "snapshot")
    if cmd.op == "delete" and cmd.ok:
        conn.execute("DELETE FROM volume_snapshots WHERE id=?", (cmd.id,))
        return {"id": cmd.id, "status": "deleted"}
    status = (st.AVAILABLE if cmd.ok else st.ERROR) if cmd.op == "create" else st.ERROR_DELETING
    conn.execute("UPDATE volume_snapshots SET status=?, error=?, updated_at=? WHERE id=?",
                 (status, None if cmd.ok else cmd.error, cmd.updated_at, cmd.id))
    return {"id": cmd.id, "status": status}


# --- attachments (the compute side drives these; see hvd/storage/volumes/__init__.py) ------------


class AttachmentReserve(VolumeCommand):
    """A new attachment (reserved) of a volume to a server; the volume becomes reserved (or keeps
    in-use when it is multi-attach and attached elsewhere)."""

    type: Literal["volume_attachment.reserve"] = "volume_attachment.reserve"
    id: str
    volume_id: str
    instance_id: str
    attach_mode: Literal["rw", "ro"] = "rw"
    created_at: str


class AttachmentAttaching(VolumeCommand):
    """reserved → attaching: the compute host and the backend's connection info are known."""

    type: Literal["volume_attachment.attaching"] = "volume_attachment.attaching"
    id: str
    host: str
    connection_info: dict[str, Any]
    updated_at: str


class AttachmentComplete(VolumeCommand):
    """attaching → attached, with the device the guest sees (vdb...): the volume is in-use."""

    type: Literal["volume_attachment.complete"] = "volume_attachment.complete"
    id: str
    device: str
    updated_at: str


class AttachmentBeginDetach(VolumeCommand):
    """attached → detaching (refused while the volume is in another operation: backing-up, extending)."""

    type: Literal["volume_attachment.begin_detach"] = "volume_attachment.begin_detach"
    id: str
    updated_at: str


class AttachmentDetachFailed(VolumeCommand):
    """detaching → attached again (the guest refused to let go), with the error."""

    type: Literal["volume_attachment.detach_failed"] = "volume_attachment.detach_failed"
    id: str
    error: str
    updated_at: str


class AttachmentRemove(VolumeCommand):
    """The attachment is gone: a finished detach, a rolled-back attach, or its server deleted.
    ``expect`` (optional) guards the attachment's status."""

    type: Literal["volume_attachment.remove"] = "volume_attachment.remove"
    id: str
    expect: list[str] | None = None
    updated_at: str


def _attachment(conn: sqlite3.Connection, attachment_id: str) -> dict[str, Any]:
    return require(conn, "volume_attachments", "id", attachment_id, "Volume attachment")


def _recompute(conn: sqlite3.Connection, volume_id: str, updated_at: str) -> str:
    """The volume's status from its attachments; a volume in another operation (backing-up,
    extending) keeps it, and the attachment-derived status becomes its previous_status."""
    vol = volume_row(conn, volume_id)
    derived = st.status_from_attachments(
        r["status"] for r in fetch_all(conn, "SELECT status FROM volume_attachments WHERE volume_id=?", (volume_id,)))
    if vol["status"] in st.ATTACHED_STATES or vol["status"] == st.AVAILABLE:
        set_volume(conn, volume_id, updated_at, status=derived)
        return derived
    set_volume(conn, volume_id, updated_at, previous_status=derived)
    return str(vol["status"])


def _attachment_step(conn: sqlite3.Connection, attachment_id: str, expect: tuple[str, ...], status: str,
                     updated_at: str, **fields: Any) -> Result:
    att = _attachment(conn, attachment_id)
    expect_status(att, expect, "volume attachment")
    cols = "".join(f", {k}=?" for k in fields)
    conn.execute(f"UPDATE volume_attachments SET status=?, updated_at=?{cols} WHERE id=?",
                 (status, updated_at, *fields.values(), attachment_id))
    volume_status = _recompute(conn, att["volume_id"], updated_at)
    return {"id": attachment_id, "status": status, "volume_id": att["volume_id"], "volume_status": volume_status}


@handles(AttachmentReserve)
def attachment_reserve(conn: sqlite3.Connection, cmd: AttachmentReserve) -> Result:
    vol = volume_row(conn, cmd.volume_id)
    require(conn, "instances", "id", cmd.instance_id, "Server")
    mine = fetch_one(conn, "SELECT id FROM volume_attachments WHERE volume_id=? AND instance_id=?",
                     (cmd.volume_id, cmd.instance_id)) is not None
    st.check_reservable(cmd.volume_id, vol["status"], bool(vol["multiattach"]), mine)
    conn.execute("INSERT INTO volume_attachments VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (cmd.id, cmd.volume_id, cmd.instance_id, None, None, st.ATT_RESERVED, cmd.attach_mode, "{}",
                  None, cmd.created_at, cmd.created_at))
    return {"id": cmd.id, "status": st.ATT_RESERVED, "volume_id": cmd.volume_id,
            "volume_status": _recompute(conn, cmd.volume_id, cmd.created_at)}


@handles(AttachmentAttaching)
def attachment_attaching(conn: sqlite3.Connection, cmd: AttachmentAttaching) -> Result:
    return _attachment_step(conn, cmd.id, (st.ATT_RESERVED,), st.ATT_ATTACHING, cmd.updated_at, host=cmd.host,
                            connection_info=dumps(cmd.connection_info))


@handles(AttachmentComplete)
def attachment_complete(conn: sqlite3.Connection, cmd: AttachmentComplete) -> Result:
    return _attachment_step(conn, cmd.id, (st.ATT_ATTACHING,), st.ATT_ATTACHED, cmd.updated_at, device=cmd.device,
                            error=None)


@handles(AttachmentBeginDetach)
def attachment_begin_detach(conn: sqlite3.Connection, cmd: AttachmentBeginDetach) -> Result:
    att = _attachment(conn, cmd.id)
    vol = volume_row(conn, att["volume_id"])
    if vol["status"] not in st.ATTACHED_STATES:
        raise InvalidState(f"cannot detach volume {vol['id']} while it is {vol['status']}", status=vol["status"])
    return _attachment_step(conn, cmd.id, (st.ATT_ATTACHED,), st.ATT_DETACHING, cmd.updated_at)


@handles(AttachmentDetachFailed)
def attachment_detach_failed(conn: sqlite3.Connection, cmd: AttachmentDetachFailed) -> Result:
    return _attachment_step(conn, cmd.id, (st.ATT_DETACHING,), st.ATT_ATTACHED, cmd.updated_at, error=cmd.error)


@handles(AttachmentRemove)
def attachment_remove(conn: sqlite3.Connection, cmd: AttachmentRemove) -> Result:
    att = _attachment(conn, cmd.id)
    if cmd.expect is not None:
        expect_status(att, cmd.expect, "volume attachment")
    conn.execute("DELETE FROM volume_attachments WHERE id=?", (cmd.id,))
    return {"id": cmd.id, "status": "removed", "volume_id": att["volume_id"],
            "volume_status": _recompute(conn, att["volume_id"], cmd.updated_at)}


# --- backend capacity reports (the volume scheduler's view of every host) ----------------------

BACKENDS_KEY = "volume-backends:"  # meta key prefix; value: JSON list of a host's backends


class VolumeBackendsReport(VolumeCommand):
    """A host's volume backends and their capacity (sent at start and when it changes by 1 GiB+)."""

    type: Literal["volume_backend.report"] = "volume_backend.report"
    host: str = Field(min_length=1, max_length=255)
    availability_zone: str = Field(max_length=255)
    backends: list[dict[str, str | Int64 | bool]] = Field(max_length=16)
    updated_at: str


@handles(VolumeBackendsReport)
def volume_backends_report(conn: sqlite3.Connection, cmd: VolumeBackendsReport) -> Result:
    value = dumps({"availability_zone": cmd.availability_zone, "backends": cmd.backends, "updated_at": cmd.updated_at})
    conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                 (BACKENDS_KEY + cmd.host, value))
    return {"host": cmd.host}


def backend_reports(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """host -> its last report ({"availability_zone", "backends": [{name, driver, total_gb, free_gb, thin}]})."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE ?", (BACKENDS_KEY + "%",)):
        out[key[len(BACKENDS_KEY):]] = json.loads(value)
    return out


def backend_report(conn: sqlite3.Connection, host: str, backend: str) -> dict[str, Any] | None:
    """The last report of ``host``'s ``backend`` ({name, driver, total_gb, free_gb, thin, reserved_gb?})."""
    row = conn.execute("SELECT value FROM meta WHERE key=?", (BACKENDS_KEY + host,)).fetchone()
    if row is None:
        return None
    found = [b for b in json.loads(row[0]).get("backends", []) if b.get("name") == backend]
    return dict(found[0]) if found else None


def backend_claims(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(host, backend) -> GiB claimed there by volumes and snapshots (for the scheduler's view)."""
    vols: dict[tuple[str, str], list[dict[str, Any]]] = {}
    snaps: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for v in fetch_all(conn, "SELECT id, host, backend, size_gb, new_size_gb FROM volumes"):
        vols.setdefault((v["host"], v["backend"]), []).append(v)
    for s in fetch_all(conn, "SELECT host, backend, size_gb FROM volume_snapshots"):
        snaps.setdefault((s["host"], s["backend"]), []).append(s)
    return {key: claims.claimed_gb(vols.get(key, []), snaps.get(key, [])) for key in vols.keys() | snaps.keys()}


def admit_claim(conn: sqlite3.Connection, host: str, backend: str, size_gb: int) -> None:
    """CapacityExceeded unless ``host``'s ``backend`` takes ``size_gb`` more GiB (hvd/storage/volumes/claims.py)."""
    vols = fetch_all(conn, "SELECT id, size_gb, new_size_gb FROM volumes WHERE host=? AND backend=?", (host, backend))
    snaps = fetch_all(conn, "SELECT size_gb FROM volume_snapshots WHERE host=? AND backend=?", (host, backend))
    reason = claims.refusal(host, backend, backend_report(conn, host, backend),
                            claims.claimed_gb(vols, snaps), size_gb)
    if reason is not None:
        raise CapacityExceeded(reason)
