"""Apply handlers: volume backups (create, finish, restore into a volume, delete).

Split from hvd.catalog.cmd_volumes, whose helpers and compare-and-swap rules they share.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from hvd.bounds import Int64
from hvd.catalog import cmd_volumes as cv
from hvd.catalog import quota
from hvd.catalog.cmd_volumes import VolumeCommand
from hvd.catalog.commands import Result, handles
from hvd.catalog.sql import fetch_one, require
from hvd.errors import BadRequest, Conflict, NotFound
from hvd.storage.volumes import states as st


class BackupCreate(VolumeCommand):
    """A backup record (creating) on ``host``; the volume goes to backing-up (from available, or
    in-use with ``force``). ``incremental`` builds on the volume's newest available backup."""

    type: Literal["volume_backup.create"] = "volume_backup.create"
    id: str
    volume_id: str
    project_id: str
    user_id: str
    name: str
    description: str = ""
    force: bool = False
    incremental: bool = True
    host: str
    created_at: str


class BackupFinish(VolumeCommand):
    type: Literal["volume_backup.finish"] = "volume_backup.finish"
    id: str
    ok: bool
    error: str | None = None
    chunks: Int64 = 0
    new_chunks: Int64 = 0
    data_bytes: Int64 = 0
    stored_bytes: Int64 = 0
    updated_at: str


class BackupRestore(VolumeCommand):
    """Restore into an existing available volume at least as big: volume → restoring-backup."""

    type: Literal["volume_backup.restore"] = "volume_backup.restore"
    id: str
    volume_id: str
    updated_at: str


class BackupRestoreFinish(VolumeCommand):
    """Backup back to available; the volume to available (ok) or error, or back to the status it
    had when the restore failed before writing into it (``untouched``; states.restore_status)."""

    type: Literal["volume_backup.restore_finish"] = "volume_backup.restore_finish"
    id: str
    volume_id: str
    ok: bool
    error: str | None = None
    untouched: bool = False
    updated_at: str


class BackupBeginDelete(VolumeCommand):
    type: Literal["volume_backup.begin_delete"] = "volume_backup.begin_delete"
    id: str
    updated_at: str


class BackupFinishDelete(VolumeCommand):
    type: Literal["volume_backup.finish_delete"] = "volume_backup.finish_delete"
    id: str
    ok: bool
    error: str | None = None
    updated_at: str


def _backup(conn: sqlite3.Connection, backup_id: str) -> dict[str, Any]:
    return require(conn, "volume_backups", "id", backup_id, "Backup")


@handles(BackupCreate)
def backup_create(conn: sqlite3.Connection, cmd: BackupCreate) -> Result:
    vol = cv.volume_row(conn, cmd.volume_id)
    if vol["project_id"] != cmd.project_id:
        raise NotFound(f"Volume {cmd.volume_id} could not be found")
    st.check_operation("backup", vol["status"], force=cmd.force, volume_id=cmd.volume_id)
    quota.check(conn, cmd.project_id, "backups", 1, cv.usage_of(conn, cmd.project_id, "backups"))
    parent = fetch_one(conn, "SELECT id FROM volume_backups WHERE volume_id=? AND status=? AND host=?"
                       " ORDER BY created_at DESC, id DESC LIMIT 1", (cmd.volume_id, st.AVAILABLE, cmd.host)) \
        if cmd.incremental else None
    parent_id = None if parent is None else parent["id"]
    conn.execute(
        "INSERT INTO volume_backups (id, project_id, user_id, volume_id, name, description, size_gb, status, host,"
        " parent_id, is_incremental, chunks, new_chunks, data_bytes, stored_bytes, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,0,0,0,0,?,?)",
        (cmd.id, cmd.project_id, cmd.user_id, cmd.volume_id, cmd.name, cmd.description, vol["size_gb"], st.CREATING,
         cmd.host, parent_id, int(parent_id is not None), cmd.created_at, cmd.created_at))
    cv.set_volume(conn, cmd.volume_id, cmd.created_at, status=st.BACKING_UP, previous_status=vol["status"])
    return {"id": cmd.id, "status": st.CREATING, "parent_id": parent_id}


@handles(BackupFinish)
def backup_finish(conn: sqlite3.Connection, cmd: BackupFinish) -> Result:
    backup = _backup(conn, cmd.id)
    cv.expect_status(backup, (st.CREATING,), "backup")
    status = st.AVAILABLE if cmd.ok else st.ERROR
    conn.execute("UPDATE volume_backups SET status=?, error=?, chunks=?, new_chunks=?, data_bytes=?, stored_bytes=?,"
                 " updated_at=? WHERE id=?",
                 (status, None if cmd.ok else cmd.error, cmd.chunks, cmd.new_chunks, cmd.data_bytes,
                  cmd.stored_bytes, cmd.updated_at, cmd.id))
    vol = fetch_one(conn, "SELECT * FROM volumes WHERE id=?", (backup["volume_id"],))
    if vol is not None and vol["status"] == st.BACKING_UP:
        cv.set_volume(conn, vol["id"], cmd.updated_at, status=st.final_status("backup", cmd.ok, vol["previous_status"]),
                    previous_status=None)
    return {"id": cmd.id, "status": status}


@handles(BackupRestore)
def backup_restore(conn: sqlite3.Connection, cmd: BackupRestore) -> Result:
    backup = _backup(conn, cmd.id)
    cv.expect_status(backup, (st.AVAILABLE,), "backup")
    vol = cv.volume_row(conn, cmd.volume_id)
    if vol["project_id"] != backup["project_id"]:
        raise NotFound(f"Volume {cmd.volume_id} could not be found")
    st.check_operation("restore", vol["status"], volume_id=cmd.volume_id)
    if backup["size_gb"] > vol["size_gb"]:
        raise BadRequest(f"volume {cmd.volume_id} ({vol['size_gb']} GiB) is smaller than backup {cmd.id}"
                         f" ({backup['size_gb']} GiB)")
    conn.execute("UPDATE volume_backups SET status=?, restore_volume_id=?, updated_at=? WHERE id=?",
                 (st.BACKUP_RESTORING, cmd.volume_id, cmd.updated_at, cmd.id))
    cv.set_volume(conn, cmd.volume_id, cmd.updated_at, status=st.RESTORING_BACKUP, previous_status=vol["status"],
                restore_backup_id=cmd.id, error=None)
    return {"id": cmd.id, "volume_id": cmd.volume_id, "status": st.BACKUP_RESTORING}


@handles(BackupRestoreFinish)
def backup_restore_finish(conn: sqlite3.Connection, cmd: BackupRestoreFinish) -> Result:
    backup = _backup(conn, cmd.id)
    vol = cv.volume_row(conn, cmd.volume_id)
    cv.expect_status(vol, (st.RESTORING_BACKUP,), "volume")
    if vol["restore_backup_id"] != cmd.id:
        raise Conflict(f"volume {cmd.volume_id} is being restored from backup {vol['restore_backup_id']}, not {cmd.id}")
    if backup["status"] == st.BACKUP_RESTORING and backup["restore_volume_id"] == cmd.volume_id:
        conn.execute("UPDATE volume_backups SET status=?, restore_volume_id=NULL, updated_at=? WHERE id=?",
                     (st.AVAILABLE, cmd.updated_at, cmd.id))
    status = st.restore_status(cmd.ok, vol["previous_status"], cmd.untouched)
    cv.set_volume(conn, cmd.volume_id, cmd.updated_at, status=status, previous_status=None, restore_backup_id=None,
                error=None if cmd.ok else cmd.error)
    return {"id": cmd.id, "volume_id": cmd.volume_id, "status": status}


@handles(BackupBeginDelete)
def backup_begin_delete(conn: sqlite3.Connection, cmd: BackupBeginDelete) -> Result:
    backup = _backup(conn, cmd.id)
    cv.expect_status(backup, (st.AVAILABLE, st.ERROR, st.ERROR_DELETING), "backup")
    conn.execute("UPDATE volume_backups SET status=?, updated_at=? WHERE id=?", (st.DELETING, cmd.updated_at, cmd.id))
    return {"id": cmd.id, "status": st.DELETING}


@handles(BackupFinishDelete)
def backup_finish_delete(conn: sqlite3.Connection, cmd: BackupFinishDelete) -> Result:
    backup = _backup(conn, cmd.id)
    cv.expect_status(backup, (st.DELETING,), "backup")
    if cmd.ok:
        conn.execute("DELETE FROM volume_backups WHERE id=?", (cmd.id,))
        # a later backup keeps its own manifest (chunks are shared by content): it stands alone now
        conn.execute("UPDATE volume_backups SET parent_id=NULL WHERE parent_id=?", (cmd.id,))
        return {"id": cmd.id, "status": "deleted"}
    conn.execute("UPDATE volume_backups SET status=?, error=?, updated_at=? WHERE id=?",
                 (st.ERROR_DELETING, cmd.error, cmd.updated_at, cmd.id))
    return {"id": cmd.id, "status": st.ERROR_DELETING}
