"""Volume capacity claims: the pure admission (hvd/storage/volumes/claims.py) and apply() refusing
a create or an extend that would overfill a backend, the same on every replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog import cmd_volumes as cv
from hvd.catalog.cmd_identity import ProjectCreate
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.state import CatalogState, decode_result
from hvd.config import Config
from hvd.errors import CapacityExceeded, NoValidHost
from hvd.events import EventBus
from hvd.storage.volumes import claims
from hvd.storage.volumes.scheduler import VolumeRequest
from hvd.storage.volumes.service import VolumeService

T = "2026-01-01T00:00:00.000000Z"


def vid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def test_claimed_counts_volumes_at_their_larger_size_and_snapshots() -> None:
    vols = [{"id": "a", "size_gb": 2, "new_size_gb": None}, {"id": "b", "size_gb": 3, "new_size_gb": 5},
            {"id": "c", "size_gb": 1}]
    snaps = [{"size_gb": 2}]
    assert claims.claimed_gb(vols, snaps) == 2 + 5 + 1 + 2


def test_refusal_within_limit_and_past_it_with_reserve() -> None:
    report = {"name": "f", "total_gb": 10, "free_gb": 10, "reserved_gb": 2}
    assert claims.limit_gb(report) == 8
    assert claims.refusal("h1", "f", report, 6, 2) is None  # exactly full is admitted
    reason = claims.refusal("h1", "f", report, 7, 2)
    assert reason is not None and "backend f of host h1" in reason and "7 GiB" in reason and "2 GiB reserve" in reason
    assert claims.refusal("h1", "f", {"total_gb": 10}, 9, 1) is None  # a report without a reserve
    assert claims.limit_gb({"total_gb": 1, "reserved_gb": 5}) == 0


def test_a_backend_never_reported_takes_nothing() -> None:
    assert claims.refusal("h9", "f", None, 0, 1) == "host h9 has not reported a volume backend named f"


def test_unclaimed_is_the_least_of_free_space_and_what_claims_leave() -> None:
    assert claims.unclaimed_gb(100, 10, 4) == 6
    assert claims.unclaimed_gb(3, 10, 4) == 3
    assert claims.unclaimed_gb(100, 10, 12) == 0


class Replica:
    def __init__(self, state: CatalogState) -> None:
        self.state, self.index = state, 0

    def __call__(self, cmd: Command) -> dict[str, Any]:
        self.index += 1
        return decode_result(self.state.apply(self.index, encode(cmd)))


@pytest.fixture
def apply(tmp_path: Any) -> Iterator[Replica]:
    conn = connect(tmp_path / "c.db")
    replica = Replica(CatalogState(conn))
    replica(ProjectCreate(id="p1", name="p1", created_at=T))
    replica(cv.VolumeTypeCreate(id="t", name="default", created_at=T))
    replica(cv.VolumeBackendsReport(host="h1", availability_zone="nova", updated_at=T, backends=[
        {"name": "small", "driver": "file", "total_gb": 6, "free_gb": 6, "thin": True, "reserved_gb": 1},
        {"name": "big", "driver": "file", "total_gb": 100, "free_gb": 100, "thin": True}]))
    yield replica
    conn.close()


def create(apply: Replica, n: int, size: int, backend: str = "small", host: str = "h1") -> dict[str, Any]:
    return apply(cv.VolumeCreate(id=vid(n), project_id="p1", user_id="u1", name=f"v{n}", size_gb=size,
                                 volume_type_id="t", availability_zone="nova", host=host, backend=backend,
                                 created_at=T))


def test_creates_past_a_backends_capacity_are_refused_and_leave_no_record(apply: Replica) -> None:
    create(apply, 1, 2)
    create(apply, 2, 3)  # 5 of 6 - 1 reserved: full
    with pytest.raises(CapacityExceeded, match=r"backend small of host h1 has 5 GiB .* 1 GiB more does not fit"):
        create(apply, 3, 1)
    assert apply.state.conn.execute("SELECT COUNT(*) FROM volumes").fetchone()[0] == 2
    create(apply, 3, 50, backend="big")  # another backend's claims are its own
    with pytest.raises(CapacityExceeded, match="has not reported a volume backend named small"):
        create(apply, 4, 1, host="h2")


def test_snapshots_count_and_a_deleted_volume_frees_its_claim(apply: Replica) -> None:
    create(apply, 1, 2)
    apply(cv.VolumeCreateFinish(id=vid(1), ok=True, updated_at=T))
    apply(cv.SnapshotCreate(id="s1", volume_id=vid(1), project_id="p1", user_id="u1", name="s", created_at=T))
    with pytest.raises(CapacityExceeded):
        create(apply, 2, 2)  # 2 + 2 (snapshot) + 2 > 5
    apply(cv.SnapshotFinish(id="s1", op="create", ok=False, error="x", updated_at=T))
    apply(cv.SnapshotBeginDelete(id="s1", updated_at=T))
    apply(cv.SnapshotFinish(id="s1", op="delete", ok=True, updated_at=T))
    create(apply, 2, 2)


def test_an_extend_counts_the_growth_and_holds_it_while_extending(apply: Replica) -> None:
    create(apply, 1, 2)
    apply(cv.VolumeCreateFinish(id=vid(1), ok=True, updated_at=T))
    with pytest.raises(CapacityExceeded, match=r"has 2 GiB .* 4 GiB more does not fit"):
        apply(cv.VolumeBegin(id=vid(1), op="extend", new_size_gb=6, updated_at=T))  # 6 > 5
    apply(cv.VolumeBegin(id=vid(1), op="extend", new_size_gb=4, updated_at=T))
    with pytest.raises(CapacityExceeded):  # the extend in progress holds its new size
        create(apply, 2, 2)
    apply(cv.VolumeFinish(id=vid(1), op="extend", ok=False, error="x", updated_at=T))
    create(apply, 2, 2)  # the failed extend gave the space back


class RacingCatalog:
    """The catalog as VolumeService sees it; before the first proposal another member's create
    takes the best backend's space (the race the admission exists for)."""

    def __init__(self, replica: Replica) -> None:
        self.replica, self.raced = replica, False

    async def read(self, fn: Any, *args: Any) -> Any:
        return fn(self.replica.state.conn, *args)

    async def propose(self, cmd: Command) -> dict[str, Any]:
        if not self.raced:
            self.raced = True
            create(self.replica, 9, 5, backend="mid", host="h2")
        return self.replica(cmd)


def service(apply: Replica) -> tuple[VolumeService, RacingCatalog]:
    apply(cv.VolumeBackendsReport(host="h2", availability_zone="nova", updated_at=T, backends=[
        {"name": "mid", "driver": "file", "total_gb": 8, "free_gb": 8, "thin": True}]))
    catalog = RacingCatalog(apply)
    config = Config.model_validate({"host": {"name": "h0"}, "volumes": {"backends": []}})
    return VolumeService(config, catalog, EventBus(), {}, Path("/nonexistent")), catalog  # type: ignore[arg-type]


def make(n: int, size: int) -> Any:
    return lambda b: cv.VolumeCreate(id=vid(n), project_id="p1", user_id="u1", name=f"v{n}", size_gb=size,
                                     volume_type_id="t", availability_zone="nova", host=b.host, backend=b.name,
                                     created_at=T)


def test_a_create_whose_only_backend_filled_before_commit_is_refused_naming_why(apply: Replica) -> None:
    vs, _ = service(apply)
    req = VolumeRequest(4, None, {"volume_backend_name": "mid"})
    with pytest.raises(NoValidHost, match=r"h1@small: volume_backend_name mid does not match.*"
                                          r"h2@mid: refused at commit: backend mid of host h2 has 5 GiB"):
        asyncio.run(vs.create_placed(req, make(1, 4)))
    assert apply.state.conn.execute("SELECT COUNT(*) FROM volumes").fetchone()[0] == 1  # only the racer's


def test_the_ranked_second_backend_takes_a_create_the_first_refused(apply: Replica) -> None:
    apply(cv.VolumeBackendsReport(host="h1", availability_zone="nova", updated_at=T, backends=[
        {"name": "small", "driver": "file", "total_gb": 6, "free_gb": 6, "thin": True, "reserved_gb": 1}]))
    vs, catalog = service(apply)  # mid (8 free) ranks before small (5 free); the race fills mid
    cmd = asyncio.run(vs.create_placed(VolumeRequest(4, None, {}), make(1, 4)))
    assert catalog.raced and (cmd.host, cmd.backend) == ("h1", "small")
