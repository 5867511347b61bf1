"""Volume catalog commands: Cinder's state machine and refusals, applied as a replica would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog import cmd_volume_backups as cvb
from hvd.catalog import cmd_volumes as cv
from hvd.catalog.cmd_compute import InstanceCreate
from hvd.catalog.cmd_identity import ProjectCreate
from hvd.catalog.cmd_resources import QuotaSet
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.sql import fetch_one
from hvd.catalog.state import CatalogState, decode_result
from hvd.errors import BadRequest, Conflict, InvalidState, QuotaExceeded
from hvd.storage.volumes import states as st

T = "2026-01-01T00:00:00.000000Z"
V1 = "00000000-0000-4000-8000-000000000001"
V2 = "00000000-0000-4000-8000-000000000002"


class Replica:
    def __init__(self, state: CatalogState) -> None:
        self.state = state
        self.index = 0

    def __call__(self, cmd: Command) -> dict[str, Any]:
        self.index += 1
        return decode_result(self.state.apply(self.index, encode(cmd)))

    def volume(self, vid: str = V1) -> dict[str, Any]:
        row = fetch_one(self.state.conn, "SELECT * FROM volumes WHERE id=?", (vid,))
        assert row is not None
        return row


@pytest.fixture
def apply(tmp_path: Any) -> Iterator[Replica]:
    conn = connect(tmp_path / "c.db")
    replica = Replica(CatalogState(conn))
    replica(ProjectCreate(id="p1", name="p1", created_at=T))
    replica(cv.VolumeTypeCreate(id="t-default", name="default", created_at=T))
    replica(cv.VolumeTypeCreate(id="t-multi", name="multi", extra_specs={"multiattach": "<is> True"}, created_at=T))
    replica(cv.VolumeBackendsReport(host="h1", availability_zone="nova", updated_at=T, backends=[
        {"name": "file", "driver": "file", "total_gb": 1000, "free_gb": 1000, "thin": True}]))
    yield replica
    conn.close()


def create(apply: Replica, vid: str = V1, size: int = 1, vtype: str = "t-default", **kw: Any) -> dict[str, Any]:
    return apply(cv.VolumeCreate(id=vid, project_id="p1", user_id="u1", name=vid[-4:], size_gb=size,
                                 volume_type_id=vtype, availability_zone="nova", host="h1", backend="file",
                                 created_at=T, **kw))


def available(apply: Replica, vid: str = V1, **kw: Any) -> None:
    create(apply, vid, **kw)
    apply(cv.VolumeCreateFinish(id=vid, ok=True, updated_at=T))


def server(apply: Replica, iid: str) -> None:
    apply(InstanceCreate(id=iid, name=iid, project_id="p1", user_id="u1", flavor_id="f",
                         flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image_id="img", created_at=T))


def test_create_then_finish_goes_creating_available_and_a_failure_to_error(apply: Replica) -> None:
    assert create(apply)["status"] == st.CREATING
    assert apply(cv.VolumeCreateFinish(id=V1, ok=True, bootable=True, updated_at=T))["status"] == st.AVAILABLE
    assert apply.volume()["bootable"] is True
    with pytest.raises(InvalidState):  # a second finish finds it available: CAS on status
        apply(cv.VolumeCreateFinish(id=V1, ok=False, error="late", updated_at=T))
    create(apply, V2)
    apply(cv.VolumeCreateFinish(id=V2, ok=False, error="qemu-img failed", updated_at=T))
    assert apply.volume(V2)["status"] == st.ERROR and apply.volume(V2)["error"] == "qemu-img failed"


def test_extend_grows_only_and_only_when_available(apply: Replica) -> None:
    available(apply)
    for size in (1, 0):
        with pytest.raises(BadRequest, match="greater than the current size"):
            apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=size, updated_at=T))
    assert apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=3, updated_at=T))["status"] == st.EXTENDING
    with pytest.raises(InvalidState, match="it is extending"):
        apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=4, updated_at=T))
    assert apply(cv.VolumeFinish(id=V1, op="extend", ok=True, updated_at=T))["size_gb"] == 3
    apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=5, updated_at=T))
    apply(cv.VolumeFinish(id=V1, op="extend", ok=False, error="lvextend failed", updated_at=T))
    vol = apply.volume()
    assert (vol["status"], vol["size_gb"], vol["error"]) == (st.AVAILABLE, 3, "lvextend failed")


def test_quotas_refuse_volumes_gigabytes_and_extends(apply: Replica) -> None:
    apply(QuotaSet(project_id="p1", limits={"volumes": 2, "gigabytes": 5, "snapshots": 0, "backups": 0}))
    with pytest.raises(QuotaExceeded, match="gigabytes"):
        create(apply, V1, size=6)
    available(apply, V1, size=3)
    with pytest.raises(QuotaExceeded, match="gigabytes"):
        apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=6, updated_at=T))
    available(apply, V2, size=1)
    with pytest.raises(QuotaExceeded, match="volumes"):
        create(apply, "00000000-0000-4000-8000-000000000003")
    with pytest.raises(QuotaExceeded, match="snapshots"):
        apply(cv.SnapshotCreate(id="s1", volume_id=V1, project_id="p1", user_id="u1", name="s", created_at=T))
    with pytest.raises(QuotaExceeded, match="backups"):
        apply(cvb.BackupCreate(id="b1", volume_id=V1, project_id="p1", user_id="u1", name="b", host="h1", created_at=T))
    assert apply.volume()["status"] == st.AVAILABLE  # a refused backup leaves no trace


def test_attach_detach_moves_through_reserved_attaching_in_use_detaching(apply: Replica) -> None:
    available(apply)
    server(apply, "i1")
    server(apply, "i2")
    seen = [apply(cv.AttachmentReserve(id="a1", volume_id=V1, instance_id="i1", created_at=T))["volume_status"]]
    seen.append(apply(cv.AttachmentAttaching(id="a1", host="h1", connection_info={"type": "file", "path": "/x"},
                                             updated_at=T))["volume_status"])
    seen.append(apply(cv.AttachmentComplete(id="a1", device="vdb", updated_at=T))["volume_status"])
    with pytest.raises(InvalidState, match="multi-attach"):
        apply(cv.AttachmentReserve(id="a2", volume_id=V1, instance_id="i2", created_at=T))
    with pytest.raises(InvalidState, match="detach it first"):
        apply(cv.VolumeBegin(id=V1, op="delete", updated_at=T))
    with pytest.raises(InvalidState):
        apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=2, updated_at=T))
    seen.append(apply(cv.AttachmentBeginDetach(id="a1", updated_at=T))["volume_status"])
    seen.append(apply(cv.AttachmentDetachFailed(id="a1", error="guest refused", updated_at=T))["volume_status"])
    apply(cv.AttachmentBeginDetach(id="a1", updated_at=T))
    seen.append(apply(cv.AttachmentRemove(id="a1", expect=["detaching"], updated_at=T))["volume_status"])
    assert seen == [st.RESERVED, st.ATTACHING, st.IN_USE, st.DETACHING, st.IN_USE, st.AVAILABLE]
    att = apply(cv.AttachmentReserve(id="a3", volume_id=V1, instance_id="i2", created_at=T))
    assert att["volume_status"] == st.RESERVED


def test_multiattach_type_allows_a_second_server_and_status_follows_attachments(apply: Replica) -> None:
    available(apply, vtype="t-multi")
    server(apply, "i1")
    server(apply, "i2")
    for aid, iid in (("a1", "i1"), ("a2", "i2")):
        apply(cv.AttachmentReserve(id=aid, volume_id=V1, instance_id=iid, created_at=T))
        apply(cv.AttachmentAttaching(id=aid, host="h1", connection_info={}, updated_at=T))
        apply(cv.AttachmentComplete(id=aid, device="vdb", updated_at=T))
    with pytest.raises(Conflict, match="already attached"):
        apply(cv.AttachmentReserve(id="a3", volume_id=V1, instance_id="i1", created_at=T))
    assert apply(cv.AttachmentRemove(id="a1", updated_at=T))["volume_status"] == st.IN_USE
    assert apply(cv.AttachmentRemove(id="a2", updated_at=T))["volume_status"] == st.AVAILABLE


def test_delete_refused_with_snapshots_and_record_gone_after_finish(apply: Replica) -> None:
    available(apply)
    apply(cv.SnapshotCreate(id="s1", volume_id=V1, project_id="p1", user_id="u1", name="s", created_at=T))
    apply(cv.SnapshotFinish(id="s1", op="create", ok=True, updated_at=T))
    with pytest.raises(Conflict, match="snapshot"):
        apply(cv.VolumeBegin(id=V1, op="delete", updated_at=T))
    apply(cv.SnapshotBeginDelete(id="s1", updated_at=T))
    apply(cv.SnapshotFinish(id="s1", op="delete", ok=True, updated_at=T))
    assert apply(cv.VolumeBegin(id=V1, op="delete", updated_at=T))["status"] == st.DELETING
    apply(cv.VolumeFinish(id=V1, op="delete", ok=False, error="lvremove: busy", updated_at=T))
    assert apply.volume()["status"] == st.ERROR_DELETING
    apply(cv.VolumeBegin(id=V1, op="delete", updated_at=T))  # error_deleting may be retried
    assert apply(cv.VolumeFinish(id=V1, op="delete", ok=True, updated_at=T))["status"] == "deleted"
    assert fetch_one(apply.state.conn, "SELECT id FROM volumes WHERE id=?", (V1,)) is None


def test_backup_needs_force_when_in_use_and_returns_to_the_previous_status(apply: Replica) -> None:
    available(apply)
    first = apply(cvb.BackupCreate(id="b1", volume_id=V1, project_id="p1", user_id="u1", name="b", host="h1",
                                  created_at=T))
    assert first["parent_id"] is None and apply.volume()["status"] == st.BACKING_UP
    apply(cvb.BackupFinish(id="b1", ok=True, chunks=1, new_chunks=1, updated_at=T))
    assert apply.volume()["status"] == st.AVAILABLE
    server(apply, "i1")
    apply(cv.AttachmentReserve(id="a1", volume_id=V1, instance_id="i1", created_at=T))
    apply(cv.AttachmentAttaching(id="a1", host="h1", connection_info={}, updated_at=T))
    apply(cv.AttachmentComplete(id="a1", device="vdb", updated_at=T))
    with pytest.raises(InvalidState, match="force=true"):
        apply(cvb.BackupCreate(id="b2", volume_id=V1, project_id="p1", user_id="u1", name="b", host="h1",
                              created_at=T))
    second = apply(cvb.BackupCreate(id="b2", volume_id=V1, project_id="p1", user_id="u1", name="b", host="h1",
                                   force=True, created_at="2026-01-02T00:00:00.000000Z"))
    assert second["parent_id"] == "b1"
    with pytest.raises(InvalidState, match="backing-up"):  # no detach while the backup reads
        apply(cv.AttachmentBeginDetach(id="a1", updated_at=T))
    apply(cvb.BackupFinish(id="b2", ok=False, error="disk full", updated_at=T))
    assert apply.volume()["status"] == st.IN_USE


def test_upload_needs_force_when_in_use_blocks_other_operations_and_returns_to_the_previous_status(
        apply: Replica) -> None:
    available(apply)
    begun = apply(cv.VolumeBegin(id=V1, op="upload", updated_at=T))
    assert (begun["status"], begun["previous_status"]) == (st.UPLOADING, st.AVAILABLE)
    with pytest.raises(InvalidState, match="it is uploading"):
        apply(cv.VolumeBegin(id=V1, op="upload", updated_at=T))  # one upload at a time: CAS on status
    with pytest.raises(InvalidState, match="uploading"):
        apply(cv.VolumeBegin(id=V1, op="delete", updated_at=T))
    with pytest.raises(InvalidState, match="uploading"):
        apply(cv.VolumeBegin(id=V1, op="extend", new_size_gb=2, updated_at=T))
    apply(cv.VolumeFinish(id=V1, op="upload", ok=False, error="qemu-img failed", updated_at=T))
    vol = apply.volume()
    assert (vol["status"], vol["error"], vol["size_gb"]) == (st.AVAILABLE, "qemu-img failed", 1)  # data untouched
    server(apply, "i1")
    apply(cv.AttachmentReserve(id="a1", volume_id=V1, instance_id="i1", created_at=T))
    apply(cv.AttachmentAttaching(id="a1", host="h1", connection_info={}, updated_at=T))
    apply(cv.AttachmentComplete(id="a1", device="vdb", updated_at=T))
    with pytest.raises(InvalidState, match=r"it is in-use.*force=true"):
        apply(cv.VolumeBegin(id=V1, op="upload", updated_at=T))
    assert apply(cv.VolumeBegin(id=V1, op="upload", force=True, updated_at=T))["status"] == st.UPLOADING
    with pytest.raises(InvalidState, match="uploading"):  # no detach while the upload reads
        apply(cv.AttachmentBeginDetach(id="a1", updated_at=T))
    apply(cv.VolumeFinish(id=V1, op="upload", ok=True, updated_at=T))
    vol = apply.volume()
    assert (vol["status"], vol["error"], vol["previous_status"]) == (st.IN_USE, None, None)


def test_restore_into_a_new_and_an_existing_volume(apply: Replica) -> None:
    available(apply, size=2)
    apply(cvb.BackupCreate(id="b1", volume_id=V1, project_id="p1", user_id="u1", name="b", host="h1", created_at=T))
    apply(cvb.BackupFinish(id="b1", ok=True, updated_at=T))
    with pytest.raises(BadRequest, match="smaller than backup"):
        create(apply, V2, size=1, restore_backup_id="b1")
    assert create(apply, V2, size=2, restore_backup_id="b1")["status"] == st.RESTORING_BACKUP
    with pytest.raises(InvalidState):  # one restore at a time per backup
        apply(cvb.BackupRestore(id="b1", volume_id=V1, updated_at=T))
    apply(cvb.BackupRestoreFinish(id="b1", volume_id=V2, ok=True, updated_at=T))
    assert apply.volume(V2)["status"] == st.AVAILABLE
    apply(cvb.BackupRestore(id="b1", volume_id=V1, updated_at=T))
    apply(cvb.BackupRestoreFinish(id="b1", volume_id=V1, ok=False, error="bad chunk", updated_at=T))
    assert apply.volume(V1)["status"] == st.ERROR
    # one that failed before writing into the existing volume leaves it as it was, the reason recorded
    apply(cv.VolumeResetStatus(id=V1, status=st.AVAILABLE, updated_at=T))
    apply(cvb.BackupRestore(id="b1", volume_id=V1, updated_at=T))
    apply(cvb.BackupRestoreFinish(id="b1", volume_id=V1, ok=False, error="no manifest", untouched=True,
                                  updated_at=T))
    assert (apply.volume(V1)["status"], apply.volume(V1)["error"]) == (st.AVAILABLE, "no manifest")
    assert st.restore_status(False, None, True) == st.ERROR  # a volume made for the restore holds nothing
    assert st.restore_status(True, st.AVAILABLE, False) == st.AVAILABLE


def test_volume_type_in_use_cannot_be_deleted(apply: Replica) -> None:
    available(apply)
    with pytest.raises(Conflict, match="used by 1"):
        apply(cv.VolumeTypeDelete(id="t-default"))
    assert json.loads(json.dumps(apply(cv.VolumeTypeDelete(id="t-multi")))) == {"id": "t-multi"}


def test_state_tables() -> None:
    assert st.status_from_attachments([]) == st.AVAILABLE
    assert st.status_from_attachments([st.ATT_ATTACHED, st.ATT_ATTACHING]) == st.ATTACHING
    assert st.status_from_attachments([st.ATT_ATTACHED, st.ATT_DETACHING]) == st.DETACHING
    assert st.status_from_attachments([st.ATT_RESERVED]) == st.RESERVED
    assert st.final_status("backup", True, st.IN_USE) == st.IN_USE
    assert st.final_status("delete", False, st.AVAILABLE) == st.ERROR_DELETING
    assert st.final_status("extend_online", True, None) == st.IN_USE
    # an upload only reads the volume: it ends as it was, whatever happened
    for previous in (st.AVAILABLE, st.IN_USE):
        assert st.final_status("upload", True, previous) == st.final_status("upload", False, previous) == previous
    assert st.UPLOADING in st.TRANSITIONAL and st.UPLOADING in st.VOLUME_STATES  # crash repair sees it
    assert st.check_operation("upload", st.IN_USE, force=True).during == st.UPLOADING
    for status in sorted(set(st.VOLUME_STATES) - {st.AVAILABLE}):
        with pytest.raises(InvalidState, match=f"it is {status}"):
            st.check_operation("upload", status)
    for status in st.VOLUME_STATES:
        allowed = status in (st.AVAILABLE, st.ERROR, st.ERROR_DELETING)
        if allowed:
            st.check_deletable(V1, status, 0, 0)
        else:
            with pytest.raises(InvalidState):
                st.check_deletable(V1, status, 0, 0)


def test_an_upload_never_writes_into_an_image_of_another_project(apply: Replica) -> None:
    """Anyone may put a volume_id property on an image of their own: the volume's host picks only an
    image of the volume's project, however new another project's is."""
    from hvd.catalog.cmd_compute import ImageCreate
    from hvd.storage.volumes.upload import upload_image_of

    available(apply)
    apply(ProjectCreate(id="p2", name="p2", created_at=T))
    apply(cv.VolumeBegin(id=V1, op="upload", updated_at=T))
    for image_id, owner, at in (("img-own", "p1", T), ("img-intruder", "p2", "2026-01-01T00:00:01.000000Z")):
        apply(ImageCreate(id=image_id, name=image_id, owner=owner, disk_format="qcow2", container_format="bare",
                          visibility="private", properties={"volume_id": V1}, created_at=at))
    picked = upload_image_of(apply.state.conn, V1, "p1", T)
    assert picked is not None and picked["id"] == "img-own"
    assert upload_image_of(apply.state.conn, V1, "p3", T) is None
