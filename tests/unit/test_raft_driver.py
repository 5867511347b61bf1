"""The asyncio driver over SQLite storage and the in-memory transport."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from hvd.cluster.raft.driver import NotLeader, RaftDriver
from hvd.cluster.raft.errors import LoopStoppedError, OutcomeUnknownError, StorageFullError
from hvd.cluster.raft.messages import ConfState
from hvd.cluster.raft.node import RaftConfig
from hvd.cluster.raft.storage import SqliteStorage
from hvd.cluster.raft.transport import InMemoryNetwork
from hvd.health import OK, State
from tests.sim.kv import KVStateMachine, get_cmd, put_cmd

TICK = 0.005


def make(
    tmp: Path,
    net: InMemoryNetwork,
    node_id: str,
    voters: list[str],
    sm: KVStateMachine | None = None,
    seed: int = 0,
) -> RaftDriver:
    storage = SqliteStorage(tmp / f"{node_id}.db")
    if voters:
        storage.bootstrap(ConfState(frozenset(voters)))
    return RaftDriver(
        RaftConfig(node_id, election_ticks=10, heartbeat_ticks=2),
        storage,
        net.endpoint(node_id),
        sm or KVStateMachine(),
        tick_seconds=TICK,
        snapshot_every=20,
        rng=random.Random(seed),
    )


async def leader_of(drivers: list[RaftDriver], timeout: float = 5.0) -> RaftDriver:
    async with asyncio.timeout(timeout):
        while True:
            leaders = [d for d in drivers if d.is_leader]
            if leaders:
                return leaders[0]
            await asyncio.sleep(TICK)


async def test_three_nodes_commit_forward_and_read(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    ids = ["a", "b", "c"]
    drivers = [make(tmp_path, net, i, ids, seed=n) for n, i in enumerate(ids)]
    for d in drivers:
        await d.start()
    try:
        leader = await leader_of(drivers)
        assert await leader.propose(put_cmd("k", "v1")) == b""
        assert await leader.propose(get_cmd("k")) == b"v1"
        follower = next(d for d in drivers if d is not leader)
        with pytest.raises(NotLeader) as info:
            await follower.propose(put_cmd("k", "v2"))
        assert info.value.leader_id in (leader.node.id, None)
        index = await leader.read_barrier()
        assert index >= 2 and leader.applied_index >= index
        await follower.wait_applied(index)
    finally:
        for d in drivers:
            await d.stop()


async def test_group_commit_batches_concurrent_proposals(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    drivers = [make(tmp_path, net, i, ["a", "b", "c"], seed=n) for n, i in enumerate("abc")]
    for d in drivers:
        await d.start()
    try:
        leader = await leader_of(drivers)
        before = leader.persist_rounds
        results = await asyncio.gather(*(leader.propose(put_cmd(f"k{i}", str(i))) for i in range(200)))
        assert results == [b""] * 200
        assert leader.persist_rounds - before < 100, "proposals were not batched"
    finally:
        for d in drivers:
            await d.stop()


class RestoreCountingKV(KVStateMachine):
    """Records every snapshot installed into it (index), so a test can tell a catch-up by
    snapshot from a catch-up by log replay."""

    def __init__(self) -> None:
        super().__init__()
        self.restored: list[int] = []

    def restore(self, index: int, data: bytes) -> None:
        self.restored.append(index)
        super().restore(index, data)


async def test_restart_keeps_state_and_lagging_member_catches_up_by_snapshot(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    ids = ["a", "b", "c"]
    sms = {i: RestoreCountingKV() for i in ids}  # the state machine is durable, like the catalog
    drivers = {i: make(tmp_path, net, i, ids, sms[i], seed=n) for n, i in enumerate(ids)}
    for d in drivers.values():
        await d.start()
    try:
        leader = await leader_of(list(drivers.values()))
        lagger = next(i for i in ids if i != leader.node.id)
        await drivers[lagger].stop()
        stopped_at = sms[lagger].applied_index()
        for i in range(60):  # more than snapshot_every: the leader compacts past the lagger
            await leader.propose(put_cmd("n", str(i)))
        compacted_to = leader.node.log.snapshot.meta.index
        assert compacted_to > stopped_at + 1, "the leader's log still holds what the lagger misses"
        drivers[lagger] = make(tmp_path, net, lagger, [], sms[lagger], seed=9)
        await drivers[lagger].start()
        index = await leader.read_barrier()
        async with asyncio.timeout(5):
            await drivers[lagger].wait_applied(index)
        assert sms[lagger].get("n") == "59"
        # it was sent the leader's snapshot (nothing else could bridge the compacted gap)
        assert sms[lagger].restored and sms[lagger].restored[0] >= compacted_to, (sms[lagger].restored, compacted_to)
    finally:
        for d in drivers.values():
            await d.stop()


async def test_membership_and_leadership_transfer(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    drivers = {i: make(tmp_path, net, i, ["a", "b", "c"], seed=n) for n, i in enumerate("abc")}
    drivers["d"] = make(tmp_path, net, "d", [], seed=7)  # a new host: empty storage, no membership
    for d in drivers.values():
        await d.start()
    try:
        leader = await leader_of(list(drivers.values()))
        await leader.propose(put_cmd("m", "1"))
        await leader.add_learner("d")
        await leader.promote("d")
        assert leader.node.conf.voters == frozenset("abcd")
        await leader.transfer_leadership("d")
        new = await leader_of([drivers["d"]])
        assert await new.propose(get_cmd("m")) == b"1"
        await new.remove(leader.node.id)
        assert new.node.conf.voters == frozenset("abcd") - {leader.node.id}
    finally:
        for d in drivers.values():
            await d.stop()


async def test_single_voter_cluster(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    solo = make(tmp_path, net, "solo", ["solo"])
    await solo.start()
    try:
        await leader_of([solo])
        assert await solo.propose(put_cmd("a", "1")) == b""
        assert await solo.read_barrier() >= 2
    finally:
        await solo.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(TICK)


async def test_a_full_disk_refuses_writes_until_space_returns_and_loses_nothing(tmp_path: Path) -> None:
    solo = make(tmp_path, InMemoryNetwork(), "solo", ["solo"])
    await solo.start()
    try:
        await leader_of([solo])
        assert await solo.propose(put_cmd("before", "1")) == b""
        raft_db = solo._storage._db  # type: ignore[attr-defined]
        pages = raft_db.execute("PRAGMA page_count").fetchone()[0]
        raft_db.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL from now on, as on a full disk
        pending = asyncio.create_task(solo.propose(put_cmd("during", "x" * 20_000)))
        await wait_for(lambda: solo.storage_full is not None)
        with pytest.raises(StorageFullError):
            await solo.propose(put_cmd("refused", "1"))
        assert solo.health().state is State.DEGRADED and not pending.done()
        raft_db.execute("PRAGMA max_page_count=1073741823")  # space is back
        async with asyncio.timeout(10):
            assert await pending == b""
        assert await solo.propose(put_cmd("after", "1")) == b""
        assert solo.health() == OK and solo.storage_full is None
    finally:
        await solo.stop()
    again = make(tmp_path, InMemoryNetwork(), "solo", [])
    await again.start()
    try:
        await wait_for(lambda: again._sm.get("after") == "1")  # type: ignore[attr-defined]
        assert again._sm.get("during") == "x" * 20_000  # type: ignore[attr-defined]
    finally:
        await again.stop()


class BrokenApply(KVStateMachine):
    """A state machine with a bug that a command triggers (not a disk problem)."""

    def apply(self, index: int, data: bytes) -> bytes:
        if b"boom" in data:
            raise AssertionError("a bug in apply")
        return super().apply(index, data)


async def test_a_bug_in_apply_stops_the_loop_loudly_instead_of_hanging_every_write(tmp_path: Path) -> None:
    solo = make(tmp_path, InMemoryNetwork(), "solo", ["solo"], sm=BrokenApply())
    await solo.start()
    try:
        await leader_of([solo])
        async with asyncio.timeout(5):  # before: the loop died silently and this waited forever
            with pytest.raises(OutcomeUnknownError):
                await solo.propose(put_cmd("boom", "1"))
        health = solo.health()
        assert health.state is State.DEAD and "AssertionError: a bug in apply" in health.reason
        with pytest.raises(LoopStoppedError):
            await solo.propose(put_cmd("next", "1"))
    finally:
        await solo.stop()


class FailingSnapshots(KVStateMachine):
    def snapshot(self) -> tuple[int, bytes]:
        raise OSError(28, "No space left on device")


async def test_a_failed_snapshot_only_delays_compaction(tmp_path: Path) -> None:
    solo = make(tmp_path, InMemoryNetwork(), "solo", ["solo"], sm=FailingSnapshots())
    await solo.start()
    try:
        await leader_of([solo])
        async with asyncio.timeout(10):  # before: the loop died at the first snapshot, writes hung
            for i in range(50):  # snapshot_every is 20
                assert await solo.propose(put_cmd(f"k{i}", "v")) == b""
        assert solo.health() == OK and solo.node.log.snapshot.meta.index == 0
    finally:
        await solo.stop()
