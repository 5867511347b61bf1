"""The tricky rules of the pure Raft node, one by one."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hvd.cluster.raft.errors import MembershipError, NotLeaderError
from hvd.cluster.raft.messages import (
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    HardState,
    Message,
    Snapshot,
    SnapshotMeta,
    SnapshotRequest,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_message,
)
from hvd.cluster.raft.node import ConfChangeOp, RaftConfig, RaftNode, Role
from hvd.cluster.raft.storage import SqliteStorage

ABC = ConfState(frozenset({"a", "b", "c"}))


def node(node_id: str = "a", entries: list[Entry] | None = None, term: int = 0, commit: int = 0) -> RaftNode:
    snap = Snapshot(SnapshotMeta(0, 0, ABC))
    return RaftNode(RaftConfig(node_id), random.Random(1), HardState(term, None, commit), snap, entries or [])


def drain(n: RaftNode) -> list[Message]:
    rd = n.ready()
    n.advance(rd)
    return list(rd.messages)


def elect(n: RaftNode) -> None:
    """Make ``n`` leader of the next terms through pre-vote and vote."""
    for _ in range(30):
        n.tick()
    drain(n)
    n.step(VoteResponse(n.term + 1, "b", n.id, True, pre_vote=True))
    drain(n)
    n.step(VoteResponse(n.term, "b", n.id, True))
    assert n.role == Role.LEADER
    drain(n)


def test_vote_is_in_the_same_ready_as_the_granting_reply() -> None:
    n = node("b")
    n.step(VoteRequest(1, "a", "b", 0, 0))
    rd = n.ready()
    assert rd.hard_state == HardState(1, "a", 0)
    assert rd.messages == (VoteResponse(1, "b", "a", True),)


def test_pre_vote_changes_no_term_on_either_side() -> None:
    cand = node("a")
    for _ in range(30):
        cand.tick()
    assert cand.role == Role.PRE_CANDIDATE and cand.term == 0
    (req, _) = drain(cand)
    assert isinstance(req, VoteRequest) and req.pre_vote and req.term == 1
    voter = node("b")
    voter.step(req)
    assert voter.term == 0 and voter.vote is None
    assert drain(voter) == [VoteResponse(1, "b", "a", True, pre_vote=True)]


def test_follower_with_a_live_leader_ignores_vote_requests() -> None:
    f = node("b", term=1)
    f.step(AppendRequest(1, "a", "b", 0, 0, (), 0))
    drain(f)
    f.step(VoteRequest(2, "c", "b", 5, 1))
    assert f.term == 1 and drain(f) == []


def test_stale_log_loses_the_vote() -> None:
    f = node("b", entries=[Entry(1, 1), Entry(2, 2)], term=2)
    f.step(VoteRequest(3, "c", "b", 5, 1))
    assert drain(f) == [VoteResponse(3, "b", "c", False)]


def test_reordered_old_append_does_not_truncate_newer_entries() -> None:
    f = node("b", term=1)
    f.step(AppendRequest(1, "a", "b", 0, 0, (Entry(1, 1), Entry(2, 1), Entry(3, 1)), 0))
    f.step(AppendRequest(1, "a", "b", 0, 0, (Entry(1, 1),), 0))  # delayed duplicate
    assert f.log.last_index() == 3


def test_conflicting_suffix_is_replaced() -> None:
    f = node("b", entries=[Entry(1, 1), Entry(2, 1), Entry(3, 1)], term=2)
    f.step(AppendRequest(2, "a", "b", 1, 1, (Entry(2, 2),), 0))
    assert [e.term for e in f.log.entries] == [1, 2]


def test_rejection_carries_the_conflicting_term_and_its_first_index() -> None:
    f = node("b", entries=[Entry(1, 1), Entry(2, 2), Entry(3, 2), Entry(4, 2)], term=3)
    f.step(AppendRequest(3, "a", "b", 4, 3, (), 0))
    (resp,) = drain(f)
    assert isinstance(resp, AppendResponse) and not resp.success
    assert (resp.conflict_term, resp.conflict_index) == (2, 2)


def test_leader_does_not_commit_an_old_term_entry_by_counting() -> None:
    leader = node("a", entries=[Entry(1, 1), Entry(2, 2)], term=2)
    elect(leader)  # term 3; appends its no-op at index 3
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=2))
    assert leader.commit == 0
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=3))
    assert leader.commit == 3


def test_one_membership_change_at_a_time() -> None:
    leader = node("a")
    elect(leader)
    with pytest.raises(MembershipError):  # its no-op is not committed yet
        leader.change_membership(ConfChangeOp.ADD_LEARNER, "d")
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=1))
    leader.change_membership(ConfChangeOp.ADD_LEARNER, "d")
    assert leader.conf.learners == frozenset({"d"})  # in force as soon as it is in the log
    with pytest.raises(MembershipError):
        leader.change_membership(ConfChangeOp.PROMOTE, "d")


def test_read_index_waits_for_a_quorum_heartbeat() -> None:
    leader = node("a")
    elect(leader)
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=1))
    drain(leader)
    leader.read_index(b"r1")
    msgs = drain(leader)
    assert leader.ready().read_states == ()
    seq = next(m.seq for m in msgs if isinstance(m, AppendRequest))
    leader.step(AppendResponse(leader.term, "c", "a", True, match_index=1, seq=seq))
    assert [r.ctx for r in leader.ready().read_states] == [b"r1"]


def test_follower_refuses_client_calls() -> None:
    with pytest.raises(NotLeaderError):
        node().propose(b"x")
    with pytest.raises(NotLeaderError):
        node().read_index(b"x")


def test_messages_round_trip_through_json() -> None:
    snap = Snapshot(SnapshotMeta(3, 2, ABC), b"\x00img")
    msgs: list[Message] = [
        AppendRequest(2, "a", "b", 1, 1, (Entry(2, 2, data=b"\xff"),), 1, seq=4),
        VoteRequest(3, "c", "a", 9, 2, pre_vote=True),
    ]
    msgs.append(SnapshotRequest(2, "a", "b", snap))
    for m in msgs:
        assert decode_message(encode_message(m)) == m


def test_sqlite_storage_truncates_and_installs_snapshots(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "raft.db")
    st.bootstrap(ABC)
    st.persist(HardState(1, "a", 0), None, (Entry(1, 1), Entry(2, 1), Entry(3, 1)))
    st.persist(HardState(2, None, 1), None, (Entry(2, 2),))
    hs, snap, entries = st.load()
    assert hs == HardState(2, None, 1) and snap.meta.conf == ABC
    assert [(e.index, e.term) for e in entries] == [(1, 1), (2, 2)]
    st.persist(None, Snapshot(SnapshotMeta(5, 3, ABC), b"img"), (Entry(6, 3),))
    st.close()
    _, snap, entries = SqliteStorage(tmp_path / "raft.db").load()
    assert snap.data == b"img" and [e.index for e in entries] == [6]


def test_member_addresses_travel_with_the_membership(tmp_path: Path) -> None:
    leader = node("a")
    elect(leader)
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=1))
    index, _ = leader.change_membership(ConfChangeOp.ADD_LEARNER, "d", "http://10.0.0.4:8774")
    assert leader.conf.address_map() == {"d": "http://10.0.0.4:8774"}
    # a follower learns it from the log entry; a snapshot and the storage keep it
    conf = ConfState.from_json(leader.log.entry(index).data)
    assert conf == leader.conf
    snap = Snapshot(SnapshotMeta(index, leader.term, conf), b"img")
    assert decode_message(encode_message(SnapshotRequest(leader.term, "a", "d", snap))).snapshot == snap
    st = SqliteStorage(tmp_path / "raft.db")
    st.persist(None, snap, ())
    assert st.load()[1].meta.conf.address_map() == {"d": "http://10.0.0.4:8774"}
    # a removal forgets the address (once the add is committed)
    drain(leader)
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=index))
    leader.change_membership(ConfChangeOp.REMOVE, "d")
    assert leader.conf.address_map() == {} and "d" not in leader.conf.members()


def test_commit_index_alone_is_not_written_but_never_falls_below_applied() -> None:
    leader = node("a")
    elect(leader)
    leader.propose(b"x")
    drain(leader)
    leader.step(AppendResponse(leader.term, "b", "a", True, match_index=2))
    assert leader.commit == 2
    rd = leader.ready()
    assert rd.hard_state is None and rd.committed_entries  # apply, but no fsync for the commit alone
    leader.advance(rd)
    # after a restart the stored commit may be old: the applied index bounds it from below
    restarted = RaftNode(RaftConfig("a"), random.Random(1), HardState(leader.term, "a", 0),
                         Snapshot(SnapshotMeta(0, 0, ABC)), list(leader.log.entries), applied=2)
    assert restarted.commit == 2 and not restarted.has_ready()


def test_a_leader_sends_appends_before_its_write_only_once_its_term_is_durable() -> None:
    # a sole voter takes the term and leadership in one step: its first appends (to a learner)
    # must wait for the disk like a vote would
    conf = ConfState(frozenset({"a"}), frozenset({"l"}))
    n = RaftNode(RaftConfig("a"), random.Random(1), HardState(), Snapshot(SnapshotMeta(0, 0, conf)), [])
    for _ in range(30):
        n.tick()
    assert n.role == Role.LEADER
    rd = n.ready()
    assert rd.hard_state is not None and not rd.term_durable
    assert rd.before_persist() == () and any(isinstance(m, AppendRequest) for m in rd.after_persist())
    n.advance(rd)
    n.propose(b"x")
    rd = n.ready()
    assert rd.term_durable and any(isinstance(m, AppendRequest) and m.to == "l" for m in rd.before_persist())
