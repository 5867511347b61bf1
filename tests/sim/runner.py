"""Run one seeded simulation and check it: ``run_seed(seed)`` -> ``SimResult``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hvd.cluster.raft.node import Role
from tests.sim.checkers import check_log_matching
from tests.sim.clients import Client
from tests.sim.cluster import Sim
from tests.sim.linearizability import check_linearizable
from tests.sim.nemesis import heal_all, plan_faults, plan_membership

FAULT_MS = 1500  # faults happen during this window
SETTLE_MS = 1200  # then the cluster is healed and must converge


@dataclass
class SimResult:
    seed: int
    failures: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        head = f"seed {self.seed}: " + ("ok" if self.ok else "FAILED") + f" {self.stats}"
        lines = [head, *self.failures]
        if not self.ok:
            lines += ["--- trace ---", *self.trace, f"replay: python -m tests.sim.replay {self.seed}"]
        return "\n".join(lines)


def run_seed(seed: int, verbose: bool = False) -> SimResult:
    """A random cluster (3 or 5 voters, sometimes spare hosts and membership churn) under a
    random nemesis, with concurrent clients; then heal, settle and check everything."""
    rng = random.Random(seed)
    voters = rng.choice((3, 3, 5))
    spares = 1 if rng.random() < 0.3 else 0
    election_ticks = rng.choice((4, 10, 10))  # short timeouts: frequent split votes and elections
    # frequent compaction: laggards and restarted nodes catch up by snapshot, not only by log replay
    snapshot_every = rng.choice((3, 6, 24))
    sim = Sim(
        seed,
        voters=voters,
        spares=spares,
        verbose=verbose,
        election_ticks=election_ticks,
        heartbeat_ticks=min(3, election_ticks // 3),
        snapshot_every=snapshot_every,
    )
    sim.log(f"seed {seed}: {voters} voters, {spares} spare")
    clients = [
        Client(sim, c, rng.randint(5, 9), random.Random(rng.random())) for c in range(rng.randint(2, 3))
    ]
    for c in clients:
        c.start()
    plan_faults(sim, random.Random(rng.random()), FAULT_MS)
    if spares:
        plan_membership(sim, random.Random(rng.random()), FAULT_MS)
    sim.run_until(FAULT_MS + SETTLE_MS)
    return finish(sim, clients)


def check_replicas_agree(sim: Sim, members: frozenset[str] | set[str]) -> list[str]:
    """Every member's state machine, once applied to the same index, holds the same data (a lost
    or extra key anywhere, e.g. a snapshot that drops one, shows here)."""
    states = {
        n.id: (n.sm.applied_index(), n.sm.data) for n in sim.nodes.values() if n.id in members and n.raft is not None
    }
    if not states:
        return []
    top = max(index for index, _ in states.values())
    reference_id = min(i for i, (index, _) in states.items() if index == top)
    reference = states[reference_id][1]
    return [
        f"state machines differ at index {top}: {node_id} has {data}, {reference_id} has {reference}"
        for node_id, (index, data) in sorted(states.items())
        if index == top and data != reference
    ]


def finish(sim: Sim, clients: list[Client]) -> SimResult:
    """Run the end-of-run checks on a simulation that should have converged."""
    failures = list(sim.obs.failures)
    failures += check_log_matching(list(sim.nodes.values()))
    leader = sim.leader()
    if leader is None or leader.raft is None:
        failures.append("liveness: no leader after healing")
    else:
        members = leader.raft.conf.members()
        for node in sim.nodes.values():
            r = node.raft
            if node.id in members and (r is None or r.applied < leader.raft.commit):
                failures.append(
                    f"liveness: {node.id} applied {r and r.applied} < commit {leader.raft.commit}"
                )
        if any(
            n.raft and n.raft.role == Role.LEADER and n.raft.term == leader.raft.term and n is not leader
            for n in sim.nodes.values()
        ):
            failures.append("two leaders at the end")
        failures += check_replicas_agree(sim, members)
    for c in clients:
        if not c.finished:
            failures.append(f"liveness: client {c.cid} stuck after {c.done_ops} ops")
    history = [op for c in clients for op in c.history]
    ok, why = check_linearizable(history)
    if not ok:
        failures.append("linearizability: " + why)
    stats = {
        "ops": len(history),
        "elections": sim.obs.elections,
        "committed": sim.obs.max_committed,
        "msgs": sim.net.sent,
    }
    return SimResult(sim.seed, failures, sim.trace, stats)


__all__ = ["FAULT_MS", "SETTLE_MS", "SimResult", "finish", "heal_all", "run_seed"]
