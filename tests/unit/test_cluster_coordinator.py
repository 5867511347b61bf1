"""RaftCoordinator over the real catalog: one-voter start-up, restarts, a catalog that lost its tail."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from hvd.catalog.cmd_resources import FlavorCreate
from hvd.catalog.service import Catalog
from hvd.cluster.coordinator import RaftCoordinator
from hvd.cluster.http_transport import READ_INDEX_PATH
from hvd.cluster.member import initial_conf, open_raft_coordinator
from hvd.cluster.raft.transport import InMemoryNetwork
from hvd.config import ClusterSection
from hvd.errors import ConfigError, Conflict


def open_catalog(base: Path, snapshot_every: int = 1000) -> Catalog:
    return Catalog.open_raft(
        base / "catalog.db",
        lambda db, state: open_raft_coordinator(ClusterSection(), "n1", base / "raft.db", db, state,
                                                snapshot_every=snapshot_every),
    )


def flavor(name: str) -> FlavorCreate:
    return FlavorCreate(id=str(uuid.uuid4()), name=name, vcpus=1, ram_mb=64, disk_gb=1, created_at="2026-01-01")


async def names(catalog: Catalog) -> set[str]:
    rows = await catalog.read(lambda c: c.execute("SELECT name FROM flavors").fetchall())
    return {r[0] for r in rows}


async def write(base: Path, prefix: str, n: int, snapshot_every: int = 1000) -> None:
    catalog = open_catalog(base, snapshot_every)
    await catalog.coordinator.start()
    try:
        for i in range(n):
            await catalog.propose(flavor(f"{prefix}{i}"))
    finally:
        await catalog.coordinator.stop()
        catalog.close()


def test_initial_membership_is_the_first_voters_by_id() -> None:
    conf = initial_conf("c", ["e", "a", "d", "b"], 3)
    assert conf.voters == {"a", "b", "c"} and conf.learners == {"d", "e"}
    assert initial_conf("solo", [], 3).voters == {"solo"}


async def test_single_voter_leads_at_once_and_commits(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    await catalog.coordinator.start()
    try:
        # leader as start() returns: no election timeout waited out (ticks were fast-forwarded)
        assert catalog.coordinator.is_leader and catalog.coordinator.leader_id == "n1"
        await catalog.propose(flavor("tiny"))
        with pytest.raises(Conflict):
            await catalog.propose(flavor("tiny"))  # typed apply errors come back as themselves
        await catalog.coordinator.read_barrier()
        assert await names(catalog) == {"tiny"}
        assert catalog.coordinator.term >= 1
    finally:
        await catalog.coordinator.stop()
        catalog.close()


async def test_restart_keeps_everything_and_leads_again(tmp_path: Path) -> None:
    await write(tmp_path, "a", 5)
    catalog = open_catalog(tmp_path)
    await catalog.coordinator.start()
    try:
        assert catalog.coordinator.is_leader
        await catalog.propose(flavor("b0"))
        assert await names(catalog) == {f"a{i}" for i in range(5)} | {"b0"}
    finally:
        await catalog.coordinator.stop()
        catalog.close()


@pytest.mark.parametrize("snapshot_every", [1000, 4])
async def test_catalog_that_lost_its_last_transactions_is_replayed_from_the_log(
    tmp_path: Path, snapshot_every: int
) -> None:
    """synchronous=NORMAL lets a power loss roll catalog.db back; the durable Raft log (or its
    snapshot, once compacted) must bring back every acknowledged write, each exactly once."""
    await write(tmp_path, "a", 3, snapshot_every)
    shutil.copy(tmp_path / "catalog.db", tmp_path / "old.db")  # the catalog as of 3 writes
    await write(tmp_path, "b", 10, snapshot_every)
    (tmp_path / "catalog.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"catalog.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.db", tmp_path / "catalog.db")
    catalog = open_catalog(tmp_path, snapshot_every)
    await catalog.coordinator.start()
    try:
        await catalog.coordinator.read_barrier()
        assert await names(catalog) == {f"a{i}" for i in range(3)} | {f"b{i}" for i in range(10)}
        await catalog.propose(flavor("c0"))
        assert len(await names(catalog)) == 14
    finally:
        await catalog.coordinator.stop()
        catalog.close()


async def test_catalog_written_before_raft_is_adopted(tmp_path: Path) -> None:
    local = Catalog.open_local(tmp_path / "catalog.db", "n1")
    for i in range(3):
        await local.propose(flavor(f"old{i}"))
    local.close()
    catalog = open_catalog(tmp_path)
    await catalog.coordinator.start()
    try:
        await catalog.propose(flavor("new"))
        assert await names(catalog) == {"old0", "old1", "old2", "new"}
        coord = catalog.coordinator
        assert isinstance(coord, RaftCoordinator)
        assert coord.status()["applied"] > 3
    finally:
        await catalog.coordinator.stop()
        catalog.close()


class LossyLeaderLink:
    """A follower's PeerClient that reaches the leader in-process, and loses the first answer:
    the leader commits, the follower only sees the connection break (outcome unknown)."""

    def __init__(self, leader: RaftCoordinator) -> None:
        self.leader = leader
        self.peers = {leader.node_id: "memory://"}
        self.calls = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(self, peer: str, path: str, body: bytes, timeout: float) -> tuple[int, bytes, int]:
        if path == READ_INDEX_PATH:
            return 200, json.dumps({"index": await self.leader.read_index_local(timeout)}).encode(), 0
        self.calls += 1
        out = await self.leader.propose_local(body, timeout)
        if self.calls == 1:
            raise aiohttp.ServerDisconnectedError()
        return 200, out, self.leader.driver.applied_index


async def test_forwarded_write_whose_answer_was_lost_is_resent_and_applied_once(tmp_path: Path) -> None:
    network = InMemoryNetwork()
    cluster = ClusterSection(peers=["n1=http://127.0.0.1:1", "n2=http://127.0.0.1:2"],
                             cluster_key="k" * 32)
    catalogs = {
        node: Catalog.open_raft(tmp_path / f"{node}.db", lambda db, state, node=node: open_raft_coordinator(
            cluster, node, tmp_path / f"{node}-raft.db", db, state, network=network))
        for node in ("n1", "n2")
    }
    coordinators = {node: c.coordinator for node, c in catalogs.items()}
    try:
        for c in coordinators.values():
            await c.start()
        deadline = time.monotonic() + 10
        while not any(c.is_leader for c in coordinators.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        leader = next(node for node, c in coordinators.items() if c.is_leader)
        follower = "n2" if leader == "n1" else "n1"
        fc = coordinators[follower]
        assert isinstance(fc, RaftCoordinator) and fc.leader_id == leader
        link = LossyLeaderLink(coordinators[leader])  # type: ignore[arg-type]
        fc._client = link  # type: ignore[assignment]
        result = await catalogs[follower].propose(flavor("once"))
        assert link.calls == 2  # the first answer was lost, the same proposal went again
        assert result["id"]
        for node in ("n1", "n2"):
            await coordinators[node].read_barrier()
            rows = await catalogs[node].read(lambda c: c.execute("SELECT COUNT(*) FROM flavors").fetchone()[0])
            assert rows == 1, node
    finally:
        for node, c in coordinators.items():
            await c.stop()
            catalogs[node].close()


async def test_a_host_with_a_catalog_of_its_own_cannot_join(tmp_path: Path) -> None:
    await write(tmp_path, "alone", 1)  # it ran alone first
    joining = ClusterSection(peers=["n1=http://127.0.0.1:1", "n2=http://127.0.0.1:2"], cluster_key="k" * 32,
                             join=True)
    with pytest.raises(ConfigError, match=r"needs an empty host\.data_dir"):
        Catalog.open_raft(tmp_path / "catalog.db",
                          lambda db, state: open_raft_coordinator(joining, "n1", tmp_path / "raft.db", db, state))


async def test_a_joining_host_gets_the_compacted_catalog_as_a_snapshot_and_becomes_a_voter(tmp_path: Path) -> None:
    network = InMemoryNetwork()
    founder = ClusterSection(peers=["n1=http://127.0.0.1:1"], cluster_key="k" * 32)
    joiner = ClusterSection(peers=["n1=http://127.0.0.1:1", "n2=http://127.0.0.1:2"], cluster_key="k" * 32,
                            join=True)
    catalogs = {
        node: Catalog.open_raft(tmp_path / f"{node}.db", lambda db, state, node=node, cfg=cfg: open_raft_coordinator(
            cfg, node, tmp_path / f"{node}-raft.db", db, state, network=network, snapshot_every=10))
        for node, cfg in (("n1", founder), ("n2", joiner))
    }
    n1, n2 = catalogs["n1"].coordinator, catalogs["n2"].coordinator
    assert isinstance(n1, RaftCoordinator) and isinstance(n2, RaftCoordinator)
    try:
        await n1.start()
        for i in range(30):
            await catalogs["n1"].propose(flavor(f"f{i}"))
        assert n1.driver.node.log.snapshot.meta.index > 0  # the log no longer starts at 1
        await n2.start()
        assert n2.driver.node.conf.voters == frozenset() and not n2.is_leader  # waits to be added
        await n1.change_membership_local({"op": "add", "id": "n2", "address": "http://127.0.0.1:2", "voter": True},
                                         20)
        async with asyncio.timeout(10):
            await n2.wait_applied(n1.driver.node.commit)  # (in memory there is no read-index forwarding)
        assert await names(catalogs["n2"]) == await names(catalogs["n1"]) == {f"f{i}" for i in range(30)}
        assert n2.driver.node.log.snapshot.meta.index > 0  # it was sent the snapshot, not the whole log
        conf = n2.driver.node.conf
        assert conf.voters == {"n1", "n2"} and conf.address_map()["n2"] == "http://127.0.0.1:2"
        await catalogs["n1"].propose(flavor("acked-by-n2"))  # a quorum of two voters now needs n2
        async with asyncio.timeout(10):
            await n2.wait_applied(n1.driver.node.commit)
        assert "acked-by-n2" in await names(catalogs["n2"])
    finally:
        for catalog in catalogs.values():
            await catalog.coordinator.stop()
            catalog.close()


async def test_a_snapshot_right_after_a_leader_no_op_restores_at_restart(tmp_path: Path) -> None:
    # the no-op a new leader appends does not move the catalog's applied index: the snapshot must be
    # labelled with the catalog's own index, or the next start cannot restore it
    await write(tmp_path, "before", 2, snapshot_every=1)
    catalog = open_catalog(tmp_path, snapshot_every=1)
    await catalog.coordinator.start()  # a new term: its no-op is the last entry applied
    coord = catalog.coordinator
    assert isinstance(coord, RaftCoordinator)
    while coord.driver.node.log.snapshot.meta.index < 3:  # compacted after applying the no-op
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    await coord.stop()
    catalog.close()
    catalog = open_catalog(tmp_path, snapshot_every=1)
    await catalog.coordinator.start()
    try:
        await catalog.propose(flavor("after"))
        assert await names(catalog) == {"before0", "before1", "after"}
    finally:
        await catalog.coordinator.stop()
        catalog.close()


async def test_a_full_catalog_refuses_writes_with_507_and_applies_them_once_space_returns(tmp_path: Path) -> None:
    from hvd.errors import InsufficientStorage

    catalog = open_catalog(tmp_path)
    await catalog.coordinator.start()
    try:
        await catalog.propose(flavor("before"))
        pages = await catalog.read(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await catalog.read(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))  # SQLITE_FULL in apply
        big = FlavorCreate(id=str(uuid.uuid4()), name="during", vcpus=1, ram_mb=64, disk_gb=1,
                           created_at="2026-01-01", description="x" * 200_000)
        pending = asyncio.create_task(catalog.propose(big))
        assert isinstance(catalog.coordinator, RaftCoordinator)
        driver = catalog.coordinator.driver
        async with asyncio.timeout(10):
            while driver.storage_full is None:
                await asyncio.sleep(0.01)
        with pytest.raises(InsufficientStorage) as err:
            await catalog.propose(flavor("refused"))
        assert err.value.status == 507 and "disk is full" in err.value.message
        await catalog.read(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
        async with asyncio.timeout(10):
            await pending
        await catalog.propose(flavor("after"))
        assert await names(catalog) == {"before", "during", "after"}
    finally:
        await catalog.coordinator.stop()
        catalog.close()
