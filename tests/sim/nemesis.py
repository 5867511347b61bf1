"""The nemesis: a seeded schedule of crashes, partitions and network misbehaviour."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from hvd.cluster.raft.errors import RaftError
from hvd.cluster.raft.node import ConfChangeOp, Role
from tests.sim.cluster import TICK_MS

if TYPE_CHECKING:
    from tests.sim.cluster import Sim


def plan_faults(sim: Sim, rng: random.Random, until: int) -> None:
    """Schedule faults in [0, until); at ``until`` everything heals and every node restarts."""
    net = sim.net
    net.drop_rate = rng.choice((0.0, 0.0, 0.02, 0.1))
    net.dup_rate = rng.choice((0.0, 0.02, 0.1))
    net.slow_rate = rng.choice((0.0, 0.0, 0.05))
    # one-way delay up to a quarter of the election timeout: Raft needs broadcast time << timeout
    net.max_delay = min(rng.choice((5, 8, 20, 40)), sim.election_ticks * TICK_MS // 4)
    gap = rng.choice((60, 150, 300))  # mean time between faults: some seeds are storms
    t = rng.randint(50, 300)
    while t < until:
        action = rng.choice(ACTIONS)
        heal_at = min(until, t + rng.choice((rng.randint(1, 40), rng.randint(50, 600))))
        sim.schedule(t, lambda a=action, h=heal_at: _start(sim, rng, a, h))  # type: ignore[misc]
        t += rng.randint(gap // 2, gap * 2)
    sim.schedule(until, lambda: heal_all(sim))


ACTIONS = ("crash", "crash_leader", "crash_candidates", "partition", "isolate_leader", "one_way", "pause_leader",
           "depose_leader", "none")


def _start(sim: Sim, rng: random.Random, action: str, heal_at: int) -> None:
    ids = sorted(sim.nodes)
    leader = sim.leader()
    back = max(1, heal_at - sim.now)
    if action in ("crash", "crash_leader"):
        victim = leader.id if action == "crash_leader" and leader else rng.choice(ids)
        sim.crash(victim)
        sim.schedule(back, lambda: sim.restart(victim))
    elif action == "crash_candidates":
        # power-cut whoever is campaigning or voting right now: catches votes that were not persisted
        for node_id in ids:
            node = sim.nodes[node_id]
            if node.raft is not None and node.raft.role != Role.LEADER and rng.random() < 0.5:
                sim.crash(node_id)
                sim.schedule(rng.randint(1, 30), lambda n=node_id: sim.restart(n))  # type: ignore[misc]
    elif action == "partition":
        rng.shuffle(ids)
        cut = rng.randint(1, len(ids) // 2)
        sim.log(f"partition {ids[:cut]} | {ids[cut:]}")
        sim.net.partition(set(ids[:cut]), set(ids[cut:]))
        sim.schedule(back, lambda: _heal_net(sim))
    elif action == "isolate_leader" and leader is not None:
        sim.log(f"isolate leader {leader.id}")
        sim.net.partition({leader.id}, set(ids) - {leader.id})
        sim.schedule(back, lambda: _heal_net(sim))
    elif action == "pause_leader" and leader is not None:
        # a stalled leader that wakes up after its successor has committed: reads must not be stale
        sim.pause(leader.id)
        sim.schedule(back, lambda n=leader.id: sim.resume(n))  # type: ignore[misc]
    elif action == "depose_leader" and leader is not None and len(ids) >= 4:
        # the leader and one follower are cut off and the leader stalls while the rest elect a new
        # one and commit; it wakes still cut off, believing it leads, with a follower acking it
        follower = rng.choice([i for i in ids if i != leader.id])
        sim.log(f"depose {leader.id}: partition {[leader.id, follower]} | rest, pause {leader.id}")
        sim.net.partition({leader.id, follower}, set(ids) - {leader.id, follower})
        sim.pause(leader.id)
        wake = max(1, min(back - 1, rng.randint(150, 400)))
        sim.schedule(wake, lambda n=leader.id: sim.resume(n))  # type: ignore[misc]
        sim.schedule(back, lambda: _heal_net(sim))
    elif action == "one_way":
        src = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
        for dst in ids:
            if dst != src and rng.random() < 0.7:
                sim.net.block_one_way(src, dst)
        sim.log(f"one-way: {src} cannot send to {sorted(b for a, b in sim.net.blocked if a == src)}")
        sim.schedule(back, lambda: _heal_net(sim))


def _heal_net(sim: Sim) -> None:
    if sim.net.blocked:
        sim.log("heal network")
    sim.net.heal()


def heal_all(sim: Sim) -> None:
    """Stop all faults: heal the network, restart crashed nodes, make delivery reliable."""
    sim.log("heal all")
    sim.net.heal()
    for node_id in sorted(sim.paused):
        sim.resume(node_id)
    sim.net.drop_rate = sim.net.dup_rate = sim.net.slow_rate = 0.0
    sim.net.max_delay = min(sim.net.max_delay, 8)
    for node_id, node in sim.nodes.items():
        if not node.up:
            sim.restart(node_id)


def plan_membership(sim: Sim, rng: random.Random, until: int) -> None:
    """Every so often ask the leader for a random single-server change or a leadership transfer."""
    t = rng.randint(200, 500)
    while t < until:
        sim.schedule(t, lambda: _membership_step(sim, rng))
        t += rng.randint(150, 500)


def _membership_step(sim: Sim, rng: random.Random) -> None:
    leader = sim.leader()
    if leader is None or leader.raft is None or leader.raft.role != Role.LEADER:
        return
    conf = leader.raft.conf
    ids = sorted(sim.nodes)
    target = rng.choice(ids)
    if rng.random() < 0.2 and len(conf.voters) > 1:
        op_text = f"transfer leadership {leader.id} -> {target}"
        action = lambda r: r.transfer_leadership(target)  # noqa: E731
    else:
        if target in conf.learners:
            op = ConfChangeOp.PROMOTE
        elif target not in conf.voters:
            op = ConfChangeOp.ADD_LEARNER if rng.random() < 0.7 else ConfChangeOp.ADD_VOTER
        else:
            op = ConfChangeOp.REMOVE if len(conf.voters) > 2 else ConfChangeOp.PROMOTE
        op_text = f"{op} {target} (leader {leader.id}, voters {sorted(conf.voters)})"
        action = lambda r: r.change_membership(op, target)  # noqa: E731
    try:
        leader.call(action)
        sim.log(op_text)
    except RaftError as e:
        sim.log(f"{op_text} refused: {e}")
