"""Volume capacity claims: the pure admission (hvd/storage/volumes/claims.py) and apply() refusing
a create or an extend that would overfill a backend, the same on every replica."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from decimal import Decimal
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
    assert claims.Headroom.of(report, 0).capacity_gb == 8
    assert claims.refusal("h1", "f", report, 6, 2) is None  # exactly full is admitted
    reason = claims.refusal("h1", "f", report, 7, 2)
    assert reason is not None and "backend f of host h1" in reason and "7 GiB" in reason and "2 GiB reserve" in reason
    assert claims.refusal("h1", "f", {"total_gb": 10}, 9, 1) is None  # a report without a reserve
    assert claims.Headroom.of({"total_gb": 1, "reserved_gb": 5}, 0).capacity_gb == 0


def test_a_backend_never_reported_takes_nothing() -> None:
    assert claims.refusal("h9", "f", None, 0, 1) == "host h9 has not reported a volume backend named f"


def test_unclaimed_is_the_least_of_free_space_and_what_claims_leave() -> None:
    assert claims.Headroom(10, 100, claimed_gb=4).unclaimed_gb == 6
    assert claims.Headroom(10, 3, claimed_gb=4).unclaimed_gb == 3
    assert claims.Headroom(10, 100, claimed_gb=12).unclaimed_gb == 0


# --- thin provisioning: max_over_subscription_ratio ----------------------------------------------


def thin(total: int = 10, free: int = 10, reserved: int = 0, ratio: str = "2.5", claimed: int = 0) -> claims.Headroom:
    return claims.Headroom.of({"total_gb": total, "free_gb": free, "reserved_gb": reserved, "thin": True,
                               claims.RATIO_KEY: ratio}, claimed)


@pytest.mark.parametrize(("value", "ratio"), [
    ("20.0", "20.0"), ("2.5", "2.5"), ("1.1", "1.1"), (3, "3"), ("1000", "1000"),
    (None, "1"), (True, "1"), ("abc", "1"), ("NaN", "1"), ("Infinity", "1"), ("0.5", "1"), ("1000.5", "1"),
    ("-3", "1"), ("", "1"),
])
def test_a_reported_ratio_is_an_exact_decimal_and_anything_odd_counts_as_no_over_subscription(
        value: object, ratio: str) -> None:
    assert claims.reported_ratio(value) == Decimal(ratio)


def test_a_configured_ratio_travels_as_its_shortest_decimal_and_comes_back_exact() -> None:
    for configured in (20.0, 1.0, 2.5, 1.1, 3.3, 999.99):
        assert claims.reported_ratio(claims.ratio_text(configured)) == Decimal(repr(configured))
    assert thin(total=10, ratio=claims.ratio_text(1.1)).capacity_gb == 11  # float 10 * 1.1 would be 11.000000000000002
    assert thin(total=3, ratio=claims.ratio_text(3.3)).capacity_gb == 9  # 9.9 rounded down


def test_thin_capacity_is_usable_times_the_ratio_and_thick_ignores_it() -> None:
    assert thin(total=10, reserved=2, ratio="2.5").capacity_gb == 20
    assert thin(total=10, reserved=2, ratio="1.0").capacity_gb == 8  # 1.0: no over-subscription
    thick = claims.Headroom.of({"total_gb": 10, "free_gb": 10, "reserved_gb": 2, "thin": False,
                                claims.RATIO_KEY: "20.0"}, 0)
    assert (thick.capacity_gb, thick.oversubscribed, thick.full) == (8, False, False)
    old_host = claims.Headroom.of({"total_gb": 10, "free_gb": 10, "reserved_gb": 2, "thin": True}, 0)
    assert (old_host.capacity_gb, old_host.effective_ratio) == (8, 1)  # a report from before the key
    assert thin(total=2, reserved=5).capacity_gb == 0


def test_thin_claims_pass_the_real_size_up_to_the_ratio_and_are_refused_past_it_naming_it() -> None:
    assert thin(claimed=20).refusal("h1", "f", 5) is None  # 25 of 10 x 2.5
    reason = thin(claimed=21).refusal("h1", "f", 5)
    assert reason == ("backend f of host h1 has 21 GiB of volumes and snapshots claimed out of 25 GiB (10 GiB x"
                      " max_over_subscription_ratio 2.5): 5 GiB more does not fit")
    with_reserve = thin(total=12, free=12, reserved=2, claimed=25).refusal("h1", "f", 1)
    assert with_reserve is not None and "out of 25 GiB (10 GiB (12 GiB less a 2 GiB reserve) x" in with_reserve


def test_a_thin_backend_whose_real_free_space_is_down_to_its_reserve_is_full() -> None:
    for free, reserved in ((0, 0), (2, 2), (1, 3)):
        room = thin(free=free, reserved=reserved, claimed=0)
        assert room.full and room.unclaimed_gb == 0
        reason = room.refusal("h1", "f", 1)
        assert reason is not None and reason.startswith("thin backend f of host h1 is full:")
        assert f"{free} GiB really free, at or below its {reserved} GiB reserve" in reason
        assert "max_over_subscription_ratio 2.5" in reason
        assert room.refusal("h1", "f", 0) is None  # nothing more asked: nothing refused
        assert room.shortfall(1).startswith("thin backend is full:")
    assert not thin(free=1, reserved=0).full
    not_over = thin(free=0, ratio="1.0")  # no over-subscription: today's rule (claims are real space)
    assert not not_over.full and not_over.refusal("h1", "f", 1) is None and not_over.unclaimed_gb == 0


def test_the_schedulers_thin_figure_is_what_the_ratio_leaves_and_what_real_free_space_allows() -> None:
    assert thin(total=10, free=10, claimed=4).unclaimed_gb == 21  # 25 - 4
    assert thin(total=10, free=2, claimed=4).unclaimed_gb == 5  # 2 really free x 2.5 (Cinder's adjusted free)
    assert thin(total=10, free=4, reserved=2, claimed=0).unclaimed_gb == 5  # (4 - 2) x 2.5
    assert thin(total=10, free=10, claimed=30).unclaimed_gb == 0
    text = thin(total=10, free=2, claimed=4).shortfall(6)
    assert text == ("5 GiB free, 6 GiB requested (thin: 4 GiB provisioned out of 25 GiB (10 GiB x"
                    " max_over_subscription_ratio 2.5); 2 GiB really free)")
    assert claims.Headroom(10, 3, claimed_gb=4).shortfall(5) == "3 GiB free, 5 GiB requested"


def test_what_the_scheduler_offers_the_catalog_always_admits_over_every_combination() -> None:
    """Exhaustive over small figures: a request the scheduler's figure allows is never refused at
    commit from the same report, an admitted one never passes the capacity, and thin capacity is
    never below a thick one's."""
    grid = itertools.product(range(5), range(5), range(3), range(12), range(1, 6))
    for total, free, reserved, claimed, request in grid:
        for ratio, is_thin in (("1.0", True), ("1.5", True), ("2.5", True), ("20.0", False)):
            room = claims.Headroom.of({"total_gb": total, "free_gb": free, "reserved_gb": reserved, "thin": is_thin,
                                       claims.RATIO_KEY: ratio}, claimed)
            refused = room.refusal("h", "b", request)
            if room.unclaimed_gb >= request:
                assert refused is None, (room, request)
            if refused is None:
                assert claimed + request <= room.capacity_gb and not room.full
            assert room.capacity_gb >= max(0, total - reserved)
            assert 0 <= room.unclaimed_gb <= max(0, room.capacity_gb - claimed)


def test_the_view_shows_provisioned_gib_and_the_ratio_that_applies() -> None:
    assert thin(total=10, free=7, reserved=1, claimed=12).view() == {
        "thin": True, "total_gb": 10, "free_gb": 7, "reserved_gb": 1, "max_over_subscription_ratio": 2.5,
        "capacity_gb": 22, "provisioned_gb": 12, "available_gb": 10, "full": False}
    thick = claims.Headroom(10, 7, thin=False, ratio=Decimal(20), claimed_gb=3).view()
    assert (thick["max_over_subscription_ratio"], thick["capacity_gb"], thick["available_gb"]) == (1.0, 10, 7)


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


def report_thin(apply: Replica, free: int = 4, ratio: str = "2.5") -> None:
    apply(cv.VolumeBackendsReport(host="h1", availability_zone="nova", updated_at=T, backends=[
        {"name": "small", "driver": "file", "total_gb": 4, "free_gb": free, "thin": True, claims.RATIO_KEY: ratio}]))


def test_a_thin_backends_report_carries_its_ratio_through_the_log_as_a_string(apply: Replica) -> None:
    report_thin(apply)
    row = cv.backend_report(apply.state.conn, "h1", "small")
    assert row is not None and row[claims.RATIO_KEY] == "2.5"  # str | int | bool rows decode on every member


def test_apply_admits_thin_creates_and_extends_up_to_the_ratio_and_refuses_past_it_naming_it(apply: Replica) -> None:
    report_thin(apply)  # 4 GiB x 2.5 = 10 GiB of claims
    create(apply, 1, 4)
    create(apply, 2, 4)  # 8 GiB on a 4 GiB backend
    apply(cv.VolumeCreateFinish(id=vid(1), ok=True, updated_at=T))
    with pytest.raises(CapacityExceeded, match=r"has 8 GiB .* out of 10 GiB \(4 GiB x max_over_subscription_ratio"
                                               r" 2.5\): 3 GiB more does not fit"):
        create(apply, 3, 3)
    with pytest.raises(CapacityExceeded, match=r"max_over_subscription_ratio 2\.5"):
        apply(cv.VolumeBegin(id=vid(1), op="extend", new_size_gb=7, updated_at=T))  # growth 3 > 2 left
    apply(cv.VolumeBegin(id=vid(1), op="extend", new_size_gb=6, updated_at=T))  # exactly 10
    assert apply.state.conn.execute("SELECT COUNT(*) FROM volumes").fetchone()[0] == 2


def test_apply_refuses_anything_new_on_a_full_thin_backend_and_a_ratio_of_one_is_the_old_rule(apply: Replica) -> None:
    report_thin(apply, free=0)
    with pytest.raises(CapacityExceeded, match="thin backend small of host h1 is full: 0 GiB really free"):
        create(apply, 1, 1)
    report_thin(apply, free=0, ratio="1.0")  # no over-subscription: claims are the space, as before
    create(apply, 1, 4)
    with pytest.raises(CapacityExceeded, match=r"has 4 GiB .* out of 4 GiB: 1 GiB more does not fit"):
        create(apply, 2, 1)


def test_the_scheduler_places_on_a_thin_backend_by_its_ratio_and_names_it_when_refusing(apply: Replica) -> None:
    report_thin(apply)
    vs, _ = service(apply)  # h2@mid (8 GiB, thin, no ratio reported) is raced full by the first proposal
    infos = {(b.host, b.name): b for b in asyncio.run(vs.backend_infos())}
    assert infos[("h1", "small")].capacity.free_gb == 10 and infos[("h2", "mid")].capacity.free_gb == 8
    cmd = asyncio.run(vs.create_placed(VolumeRequest(9, None, {}), make(1, 9)))  # > 4 GiB: only by the ratio
    assert (cmd.host, cmd.backend) == ("h1", "small")
    with pytest.raises(NoValidHost, match=r"h1@small: 1 GiB free, 2 GiB requested \(thin: 9 GiB provisioned out of"
                                          r" 10 GiB \(4 GiB x max_over_subscription_ratio 2.5\); 4 GiB really free\)"):
        asyncio.run(vs.create_placed(VolumeRequest(2, None, {"volume_backend_name": "small"}), make(2, 2)))
    report_thin(apply, free=0)
    with pytest.raises(NoValidHost, match="h1@small: thin backend is full: 0 GiB really free"):
        asyncio.run(vs.create_placed(VolumeRequest(1, None, {"volume_backend_name": "small"}), make(3, 1)))
