"""Catalog command of a server that moves with its volumes: its attachments follow it.

Kept apart from hvd.catalog.cmd_volumes (attach and detach): a move changes neither the
attachment's state nor the volume's status, only where the server runs and how it reaches the
volume (the decision is hvd.compute.volumes.reach).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from hvd.catalog.cmd_volumes import VolumeCommand
from hvd.catalog.commands import Result, handles
from hvd.catalog.sql import dumps, require
from hvd.errors import Conflict
from hvd.storage.volumes import states as st


class AttachmentMoved(VolumeCommand):
    """An attached volume's server now runs on ``host`` and reaches the volume by
    ``connection_info``; refused unless the attachment is attached and still on ``from_host``."""

    type: Literal["volume_attachment.moved"] = "volume_attachment.moved"
    id: str
    from_host: str
    host: str
    connection_info: dict[str, Any]
    updated_at: str


@handles(AttachmentMoved)
def attachment_moved(conn: sqlite3.Connection, cmd: AttachmentMoved) -> Result:
    att = require(conn, "volume_attachments", "id", cmd.id, "Volume attachment")
    if att["status"] != st.ATT_ATTACHED or att["host"] != cmd.from_host:
        raise Conflict(f"volume attachment {cmd.id} is {att['status']} on host {att['host']}, not attached on"
                       f" {cmd.from_host}: it cannot move")
    conn.execute("UPDATE volume_attachments SET host=?, connection_info=?, updated_at=? WHERE id=?",
                 (cmd.host, dumps(cmd.connection_info), cmd.updated_at, cmd.id))
    return {"id": cmd.id, "host": cmd.host, "volume_id": att["volume_id"]}
