"""Which cached bases a host keeps (hvd.compute.reconcile.bases_in_use), on a real catalog: its
servers' images and rescue images, and the image of a server that left it in a cold move not yet
confirmed (the kept copy a revert boots is an overlay on that base)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.cmd_compute import InstanceCreate, InstanceUpdate
from hvd.catalog.cmd_identity import ProjectCreate
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.state import CatalogState, decode_result
from hvd.compute.reconcile import bases_in_use

T = "2026-01-01T00:00:00.000000Z"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[CatalogState]:
    conn = connect(tmp_path / "c.db")
    yield CatalogState(conn)
    conn.close()


def test_a_host_keeps_the_bases_of_its_servers_rescues_and_unconfirmed_moves_away(state: CatalogState) -> None:
    index = 0

    def apply(cmd: Command) -> dict[str, Any]:
        nonlocal index
        index += 1
        return decode_result(state.apply(index, encode(cmd)))

    apply(ProjectCreate(id="p1", name="p1", created_at=T))
    for iid, image, host in (("s1", "img-a", "h1"), ("s2", "img-b", "h2"), ("s3", "img-c", "h2"),
                             ("s4", "img-d", "h2")):
        apply(InstanceCreate(id=iid, name=iid, project_id="p1", user_id="u1", flavor_id="f",
                             flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image_id=image, created_at=T))
        apply(InstanceUpdate(id=iid, host=host, vm_state="active", updated_at=T))
    apply(InstanceUpdate(id="s1", vm_state="rescued", extra={"rescue_image_id": "img-r"}, updated_at=T))
    # s2 cold-moved h1 -> h2, not confirmed yet: h1 keeps its copy, and so its base
    apply(InstanceUpdate(id="s2", vm_state="resized", extra={"old_host": "h1"}, updated_at=T))
    # s3 moved h1 -> h2 and was confirmed: h1 has nothing of it any more
    apply(InstanceUpdate(id="s3", vm_state="active", extra={"old_host": "h1"}, updated_at=T))
    assert state.conn is not None
    assert bases_in_use(state.conn, "h1") == {"img-a", "img-r", "img-b"}
    assert bases_in_use(state.conn, "h2") == {"img-b", "img-c", "img-d"}
