"""Named scenarios from the Raft paper and from operations, each over a few seeds."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from hvd.cluster.raft.errors import NotLeaderError
from hvd.cluster.raft.messages import (
    AppendRequest,
    ConfState,
    Entry,
    HardState,
    Message,
    Snapshot,
    SnapshotMeta,
)
from hvd.cluster.raft.node import ConfChangeOp, RaftNode, Role
from hvd.cluster.raft.storage import MemoryStorage
from tests.sim.clients import Client
from tests.sim.cluster import Sim, SimNode
from tests.sim.kv import put_cmd
from tests.sim.runner import finish

SEEDS = range(8)


def wait_for(sim: Sim, cond: Callable[[], bool], timeout: int = 3000) -> bool:
    end = sim.now + timeout
    while sim.now < end:
        if cond():
            return True
        sim.run_until(sim.now + 5)
    return cond()


def elect(sim: Sim) -> SimNode:
    assert wait_for(sim, lambda: sim.leader() is not None), "no leader elected"
    leader = sim.leader()
    assert leader is not None
    return leader


def assert_safe(sim: Sim, clients: list[Client] | None = None) -> None:
    result = finish(sim, clients or [])
    assert result.ok, result.report()


def propose(node: SimNode, data: bytes) -> tuple[int, int]:
    def call(r: RaftNode) -> tuple[int, int]:
        return r.propose(data)

    out = node.call(call)
    assert isinstance(out, tuple)
    return out


def _strip_new_terms(msg: Message) -> Message | None:
    if isinstance(msg, AppendRequest) and any(e.term >= 4 for e in msg.entries):
        return dataclasses.replace(msg, entries=tuple(e for e in msg.entries if e.term < 4))
    return msg


@pytest.mark.parametrize("seed", SEEDS)
def test_figure8_old_term_entry_is_not_committed_by_counting(seed: int) -> None:
    """Figure 8: a leader of term 4 replicates an entry of term 2 to a majority; it must not
    count that as committed, because S5 (last term 3) can still win and overwrite it."""
    ids = [f"n{i}" for i in range(1, 6)]
    boot = Snapshot(SnapshotMeta(0, 0, ConfState(frozenset(ids))))
    first = Entry(1, 1, data=put_cmd("x", "1"))
    logs = {
        "n1": [first, Entry(2, 2, data=put_cmd("x", "2"))],
        "n2": [first, Entry(2, 2, data=put_cmd("x", "2"))],
        "n3": [first],
        "n4": [first],
        "n5": [first, Entry(2, 3, data=put_cmd("x", "3"))],
    }
    storages = {}
    for node_id in ids:
        st = MemoryStorage(HardState(term=3, vote=None, commit=1), boot)
        st.entries = list(logs[node_id])
        storages[node_id] = st
    sim = Sim(seed, storages=storages, max_entries_per_msg=1)
    sim.crash("n5")
    # the term-4 leader's own entries never arrive, so only the term-2 entry can spread
    sim.net.filter = _strip_new_terms
    leader = elect(sim)
    assert leader.raft is not None and leader.raft.log.term(2) == 2
    sim.run_until(sim.now + 500)
    holders = [n.id for n in sim.nodes.values() if n.raft is not None and n.raft.log.term(2) == 2]
    assert len(holders) >= 3, "scenario did not replicate the old entry to a majority"
    assert all(n.raft is None or n.raft.commit < 2 for n in sim.nodes.values())
    # (d): the old leader's side goes down; S5 wins with its term-3 entry and overwrites index 2
    sim.net.filter = None
    for node_id in ("n1", "n2"):
        sim.crash(node_id)
    sim.restart("n5")
    assert wait_for(
        sim, lambda: sim.nodes["n5"].raft is not None and sim.nodes["n5"].raft.role == Role.LEADER
    )
    assert wait_for(sim, lambda: all(sim.nodes[i].raft.commit >= 3 for i in ("n3", "n4", "n5")))  # type: ignore[union-attr]
    sim.restart("n1")
    sim.restart("n2")
    sim.run_until(sim.now + 1000)
    assert all(n.sm.get("x") == "3" for n in sim.nodes.values())
    assert_safe(sim)


@pytest.mark.parametrize("seed", SEEDS)
def test_partitioned_leader_accepts_proposals_that_never_commit(seed: int) -> None:
    sim = Sim(seed, voters=5)
    old = elect(sim)
    others = set(sim.nodes) - {old.id}
    sim.net.partition({old.id}, others)
    outcomes: list[bytes | None] = []
    for i in range(5):
        index, term = propose(old, put_cmd("x", f"stale{i}"))
        old.waiters.setdefault(index, []).append((term, outcomes.append))
    # check-quorum: the isolated leader steps down within about two election timeouts
    assert wait_for(sim, lambda: old.raft is not None and old.raft.role != Role.LEADER, 2 * 20 * 10 + 50)
    with pytest.raises(NotLeaderError):
        propose(old, put_cmd("x", "late"))
    new = elect(sim)
    assert new.id != old.id
    for i in range(3):
        propose(new, put_cmd("x", f"fresh{i}"))
    sim.net.heal()
    sim.run_until(sim.now + 800)
    assert outcomes and all(o is None for o in outcomes), "an isolated leader entry was applied"
    assert not any(b"stale" in e.data for e in sim.obs.applied_entries.values())
    assert all(n.sm.get("x") == "fresh2" for n in sim.nodes.values())
    assert_safe(sim)


@pytest.mark.parametrize("seed", SEEDS)
def test_node_with_stale_log_cannot_win_or_disrupt(seed: int) -> None:
    sim = Sim(seed, voters=3)
    leader = elect(sim)
    stale = next(i for i in sorted(sim.nodes) if i != leader.id)
    sim.crash(stale)
    for i in range(10):
        propose(leader, put_cmd("y", str(i)))
    assert wait_for(sim, lambda: leader.raft is not None and leader.raft.commit >= 11)
    # it comes back cut off: it times out again and again, but pre-vote keeps its term still
    sim.net.partition({stale}, set(sim.nodes) - {stale})
    sim.restart(stale)
    term_before = sim.nodes[stale].raft.term  # type: ignore[union-attr]
    sim.run_until(sim.now + 1500)
    assert sim.nodes[stale].raft.term == term_before  # type: ignore[union-attr]
    leader_term = leader.raft.term  # type: ignore[union-attr]
    sim.net.heal()
    sim.run_until(sim.now + 1000)
    assert sim.leader() is leader and leader.raft is not None and leader.raft.term == leader_term
    assert sim.nodes[stale].sm.get("y") == "9"
    assert_safe(sim)


@pytest.mark.parametrize("seed", SEEDS)
def test_membership_change_during_partition(seed: int) -> None:
    sim = Sim(seed, voters=3, spares=2)
    leader = elect(sim)
    cut = next(i for i in ("n1", "n2", "n3") if i != leader.id)
    sim.net.partition({cut}, set(sim.nodes) - {cut})

    def change(op: ConfChangeOp, node: str) -> None:
        def call(r: RaftNode) -> tuple[int, int]:
            return r.change_membership(op, node)

        assert wait_for(
            sim,
            lambda: leader.raft is not None and leader.raft.log.term(leader.raft.commit) == leader.raft.term,
        )
        index, _ = leader.call(call)  # type: ignore[misc]
        assert wait_for(sim, lambda: leader.raft is not None and leader.raft.commit >= index)

    change(ConfChangeOp.ADD_LEARNER, "n4")
    change(ConfChangeOp.PROMOTE, "n4")
    change(ConfChangeOp.REMOVE, cut)  # removing the unreachable voter needs 3 of {leader, other, n4}
    change(ConfChangeOp.ADD_VOTER, "n5")
    for i in range(5):
        propose(leader, put_cmd("x", str(i)))
    term = leader.raft.term  # type: ignore[union-attr]
    sim.net.heal()
    sim.run_until(sim.now + 1500)
    assert sim.leader() is leader and leader.raft is not None and leader.raft.term == term
    assert leader.raft.conf.voters == frozenset(
        {leader.id, "n4", "n5"} | ({"n1", "n2", "n3"} - {cut, leader.id})
    )
    for node_id in leader.raft.conf.members():
        assert sim.nodes[node_id].raft.conf == leader.raft.conf  # type: ignore[union-attr]
        assert sim.nodes[node_id].sm.get("x") == "4"
    assert_safe(sim)


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_install_races_with_appends(seed: int) -> None:
    sim = Sim(seed, voters=3, snapshot_every=4)
    sim.net.dup_rate = 0.2
    sim.net.slow_rate = 0.2
    sim.net.max_delay = 15
    rng = random.Random(seed)
    clients = [Client(sim, c, 14, random.Random(rng.random())) for c in range(3)]
    for c in clients:
        c.start()
    leader = elect(sim)
    lagger = next(i for i in sorted(sim.nodes) if i != leader.id)
    sim.crash(lagger)
    sim.run_until(sim.now + 500)
    sim.restart(lagger)
    sim.run_until(sim.now + 2500)
    assert any("installed snapshot" in line for line in sim.trace), "no snapshot was installed"
    assert_safe(sim, clients)
