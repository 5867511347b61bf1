"""The asyncio driver over SQLite storage and the in-memory transport."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from hvd.cluster.raft.driver import NotLeader, RaftDriver
from hvd.cluster.raft.messages import ConfState
from hvd.cluster.raft.node import RaftConfig
from hvd.cluster.raft.storage import SqliteStorage
from hvd.cluster.raft.transport import InMemoryNetwork
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


async def test_restart_keeps_state_and_lagging_member_catches_up_by_snapshot(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    ids = ["a", "b", "c"]
    sms = {i: KVStateMachine() for i in ids}  # the state machine is durable, like the catalog
    drivers = {i: make(tmp_path, net, i, ids, sms[i], seed=n) for n, i in enumerate(ids)}
    for d in drivers.values():
        await d.start()
    try:
        leader = await leader_of(list(drivers.values()))
        lagger = next(i for i in ids if i != leader.node.id)
        await drivers[lagger].stop()
        for i in range(60):  # more than snapshot_every: the leader compacts past the lagger
            await leader.propose(put_cmd("n", str(i)))
        drivers[lagger] = make(tmp_path, net, lagger, [], sms[lagger], seed=9)
        await drivers[lagger].start()
        index = await leader.read_barrier()
        async with asyncio.timeout(5):
            await drivers[lagger].wait_applied(index)
        assert sms[lagger].get("n") == "59"
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
