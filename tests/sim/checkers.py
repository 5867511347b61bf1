"""Raft safety checkers (Figure 3 of the Raft paper), fed by the simulator as it runs.

- election safety: at most one leader per term;
- leader completeness: a new leader's log holds every entry committed in an earlier term;
- state machine safety: every replica applies the same entry at each index, in index order;
- log matching: checked over the final logs by ``check_log_matching``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hvd.cluster.raft.messages import Entry
from hvd.cluster.raft.node import RaftNode, Role

if TYPE_CHECKING:
    from tests.sim.cluster import Sim, SimNode


class Observer:
    """Accumulates what the cluster did and the safety violations seen so far."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.leaders: dict[int, str] = {}  # term -> leader
        self.committed: dict[int, tuple[int, int]] = {}  # index -> (entry term, term it was committed in)
        self.max_committed = 0
        self.applied_entries: dict[int, Entry] = {}
        self.last_applied: dict[str, int] = {}
        self.elections = 0

    def fail(self, sim: Sim | None, text: str) -> None:
        if sim is not None:
            sim.log(f"FAILURE {text}")
        self.failures.append(text)

    def observe(self, sim: Sim, node: SimNode) -> None:
        raft = node.raft
        if raft is None or raft.role != Role.LEADER:
            return
        term = raft.term
        holder = self.leaders.get(term)
        if holder is None:
            self.leaders[term] = node.id
            self.elections += 1
            sim.log(f"{node.id} leader term={term} last={raft.log.last_index()} commit={raft.commit}")
            self._check_completeness(sim, node.id, raft)
        elif holder != node.id:
            self.fail(sim, f"election safety: {holder} and {node.id} both leader in term {term}")
        if raft.commit > self.max_committed:
            for i in range(self.max_committed + 1, raft.commit + 1):
                t = raft.log.term(i)
                if t is not None:
                    self.committed[i] = (t, term)
            self.max_committed = raft.commit

    def _check_completeness(self, sim: Sim, node_id: str, raft: RaftNode) -> None:
        snap_index = raft.log.snapshot.meta.index
        for index, (entry_term, commit_term) in self.committed.items():
            if commit_term < raft.term and index > snap_index and raft.log.term(index) != entry_term:
                self.fail(
                    sim,
                    f"leader completeness: {node_id} leads term {raft.term} without entry {index} "
                    f"(term {entry_term}, committed in term {commit_term}); has term {raft.log.term(index)}",
                )
                return

    def restored(self, node_id: str, index: int) -> None:
        self.last_applied[node_id] = index

    def applied(self, node_id: str, entry: Entry) -> None:
        last = self.last_applied.get(node_id, 0)
        if entry.index != last + 1:
            self.fail(None, f"state machine safety: {node_id} applied {entry.index} after {last}")
        self.last_applied[node_id] = entry.index
        first = self.applied_entries.setdefault(entry.index, entry)
        if first != entry:
            self.fail(None, f"state machine safety: index {entry.index} applied as {first} and as {entry}")
        known = self.committed.get(entry.index)
        if known is not None and known[0] != entry.term:
            self.fail(None, f"state machine safety: applied {entry} but term {known[0]} was committed there")


def check_log_matching(nodes: list[SimNode]) -> list[str]:
    """If two logs hold an entry with the same index and term, they are identical up to it."""
    failures = []
    logs = [(n.id, n.raft.log) for n in nodes if n.raft is not None]
    for i, (a_id, a) in enumerate(logs):
        for b_id, b in logs[i + 1 :]:
            lo = max(a.first_index, b.first_index)
            hi = min(a.last_index(), b.last_index())
            idx = hi
            while idx >= lo and a.term(idx) != b.term(idx):
                idx -= 1
            for j in range(lo, idx + 1):
                if a.entry(j) != b.entry(j):
                    failures.append(f"log matching: {a_id} and {b_id} agree at {idx} but differ at {j}")
                    break
    return failures
