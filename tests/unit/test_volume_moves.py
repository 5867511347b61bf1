"""The catalog side of a server moving with its volumes: its attachments follow it (host and
connection), only from the host they name and only while attached."""

from __future__ import annotations

import pytest

from hvd.catalog import cmd_volumes as cv
from hvd.catalog.cmd_volume_moves import AttachmentMoved
from hvd.catalog.sql import fetch_one
from hvd.errors import Conflict
from hvd.storage.volumes import states as st
from tests.unit.test_volume_catalog import V1, Replica, T, apply, available, server

__all__ = ["apply"]  # the fixture, shared with the attach tests
NBD = {"type": "nbd", "host": "10.0.0.1", "port": 10809, "export": f"volume-{V1}", "tls": True}


def test_an_attachment_follows_its_server_and_the_volume_stays_in_use(apply: Replica) -> None:
    available(apply)
    server(apply, "i1")
    apply(cv.AttachmentReserve(id="a1", volume_id=V1, instance_id="i1", created_at=T))
    apply(cv.AttachmentAttaching(id="a1", host="h1", connection_info={"type": "file", "path": "/x"}, updated_at=T))
    with pytest.raises(Conflict, match="attaching on host h1"):  # not attached yet: nothing to move
        apply(AttachmentMoved(id="a1", from_host="h1", host="h2", connection_info=NBD, updated_at=T))
    apply(cv.AttachmentComplete(id="a1", device="vdb", updated_at=T))
    apply(AttachmentMoved(id="a1", from_host="h1", host="h2", connection_info=NBD, updated_at=T))
    row = fetch_one(apply.state.conn, "SELECT * FROM volume_attachments WHERE id='a1'")
    assert row is not None and row["host"] == "h2" and row["connection_info"] == NBD and row["device"] == "vdb"
    assert apply.volume()["status"] == st.IN_USE
    with pytest.raises(Conflict, match="not attached on h1"):  # a stale or repeated move from the old host
        apply(AttachmentMoved(id="a1", from_host="h1", host="h3", connection_info=NBD, updated_at=T))
