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
from tests.sim.linearizability import Op, check_linearizable
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


def commit_put(sim: Sim, node: SimNode, key: str, value: str) -> Op:
    """Propose put(key, value) on ``node`` and run until it is applied there; the completed op."""
    call = sim.clock()
    index, term = propose(node, put_cmd(key, value))
    results: list[bytes | None] = []
    node.waiters.setdefault(index, []).append((term, results.append))
    assert wait_for(sim, lambda: bool(results)), f"put {key}={value} never applied on {node.id}"
    assert results[0] is not None, f"put {key}={value} was overwritten"
    return Op(0, key, "put", value, call, sim.clock())


@pytest.mark.parametrize("seed", SEEDS)
def test_deposed_leader_serves_no_stale_read(seed: int) -> None:
    """5 voters, partition {old leader, one follower} | {three}. The old leader stalls (a GC pause)
    while the majority elects a new leader and commits x=2; when it wakes up it still believes it
    leads, and its follower still acknowledges it. A read-index read it serves now must not return
    x=1: the leader and one peer are 2 of 5, not a quorum, so the read must wait (and be dropped
    when check-quorum deposes it)."""
    sim = Sim(seed, voters=5)
    old = elect(sim)
    history = [commit_put(sim, old, "x", "1")]
    sim.run_until(sim.now + 100)  # every replica has x=1
    follower = next(i for i in sorted(sim.nodes) if i != old.id)
    majority = set(sim.nodes) - {old.id, follower}
    sim.pause(old.id)
    sim.net.partition({old.id, follower}, majority)
    assert wait_for(sim, lambda: (m := sim.leader()) is not None and m.id in majority), "majority elected no one"
    new = sim.leader()
    assert new is not None and new.raft is not None and old.raft is not None
    assert new.raft.term > old.raft.term
    history.append(commit_put(sim, new, "x", "2"))
    sim.resume(old.id)
    assert old.raft.role == Role.LEADER  # it has not noticed yet: that is the case under test

    read: list[str | None] = []
    call = sim.clock()
    ctx = b"deposed-read"

    def done(index: int | None) -> None:
        if index is None:
            read.append(None)  # dropped: the leader stepped down first (the right outcome)
        elif old.raft is not None and old.raft.applied >= index:
            read.append(old.sm.get("x"))
        else:
            old.apply_waiters.append((index, lambda: read.append(old.sm.get("x"))))

    old.read_waiters[ctx] = done
    old.call(lambda r: r.read_index(ctx))
    assert wait_for(sim, lambda: bool(read), 2 * 20 * 10 + 100), "the read neither completed nor was dropped"
    if read[0] is not None:
        history.append(Op(1, "x", "get", read[0], call, sim.clock()))
    ok, why = check_linearizable(history)
    assert ok, f"stale read from the deposed leader: {why}"
    assert read == [None]  # with 2 of 5 the read can only be dropped
    sim.net.heal()
    sim.run_until(sim.now + 800)
    assert_safe(sim)


@pytest.mark.parametrize("seed", SEEDS)
def test_new_leader_serves_reads_only_after_a_commit_of_its_term(seed: int) -> None:
    """A new leader does not know the commit index until an entry of its own term commits. Here
    x=1 is committed and acknowledged by the old leader, whose followers never heard that it
    committed; the old leader is then cut off, and the new leader's own entries cannot reach its
    peer (its heartbeats, and so read confirmations, can). A read on the new leader must wait for
    its first commit: serving it at its stale commit index would return x's old value."""
    sim = Sim(seed, voters=3)
    old = elect(sim)
    assert old.raft is not None
    old_term = old.raft.term
    hidden: list[int] = []

    def hide(msg: Message) -> Message | None:
        if not isinstance(msg, AppendRequest):
            return msg
        if msg.frm == old.id and hidden and msg.commit >= hidden[0]:
            return dataclasses.replace(msg, commit=hidden[0] - 1)  # followers never learn x=1 committed
        if msg.frm != old.id and msg.term > old_term:
            return dataclasses.replace(msg, entries=tuple(e for e in msg.entries if e.term <= old_term))
        return msg

    sim.net.filter = hide
    call = sim.clock()
    index, term = propose(old, put_cmd("x", "1"))
    hidden.append(index)
    results: list[bytes | None] = []
    old.waiters.setdefault(index, []).append((term, results.append))
    assert wait_for(sim, lambda: bool(results)) and results[0] is not None
    history = [Op(0, "x", "put", "1", call, sim.clock())]
    others = set(sim.nodes) - {old.id}
    assert all(sim.nodes[n].raft.commit < index for n in others)  # type: ignore[union-attr]
    sim.net.partition({old.id}, others)
    assert wait_for(sim, lambda: any(sim.nodes[n].raft.role == Role.LEADER for n in others))  # type: ignore[union-attr]
    new = next(sim.nodes[n] for n in sorted(others) if sim.nodes[n].raft.role == Role.LEADER)  # type: ignore[union-attr]

    read: list[str] = []
    call = sim.clock()
    ctx = b"new-leader-read"

    def done(at: int | None) -> None:
        assert at is not None, "the read was dropped by a leader that kept leading"
        if new.raft is not None and new.raft.applied >= at:
            read.append(new.sm.get("x"))
        else:
            new.apply_waiters.append((at, lambda: read.append(new.sm.get("x"))))

    new.read_waiters[ctx] = done
    new.call(lambda r: r.read_index(ctx))
    sim.run_until(sim.now + 300)  # heartbeats go back and forth; nothing of the new term commits
    if read:
        history.append(Op(1, "x", "get", read[0], call, sim.clock()))
        ok, why = check_linearizable(history)
        assert ok, f"read served before the new leader's first commit: {why}"
    sim.net.filter = None
    sim.net.heal()
    assert wait_for(sim, lambda: bool(read)), "the read never completed once the cluster healed"
    assert read == ["1"]
    sim.run_until(sim.now + 800)
    assert_safe(sim)
