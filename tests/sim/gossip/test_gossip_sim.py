"""Gossip under a simulated network: crashes, loss, pauses, partitions, clock jumps, leaves.

Each test sweeps many seeds (a seed fixes the network's delays, losses and every member's random
choices) with the default protocol config and names the failing seeds. Timings are virtual: the
bounds in ``wait_for`` are generous limits for "eventually", not performance targets (those are
measured by bench/gossip.py).
"""

from __future__ import annotations

import random

from hvd.cluster.gossip.core import ALIVE, DEAD, LEFT, SUSPECT, CoreConfig
from tests.sim.gossip.sim import GossipSim, NetConfig


def _lossy_net(rng: random.Random) -> NetConfig:
    return NetConfig(loss=rng.choice([0.0, 0.01, 0.05]), jitter=rng.choice([0.001, 0.01, 0.05]))


def _crash_one(seed: int) -> object:
    rng = random.Random(seed)
    sim = GossipSim(rng.choice([3, 5, 8, 12]), seed, net=_lossy_net(rng), codec=seed % 10 == 0)
    sim.run_for(rng.uniform(1, 5))
    victim = rng.choice(sorted(sim.members))
    sim.crash(victim)
    if sim.wait_for(lambda: sim.all_see(victim, (DEAD,)), timeout=60) is None:
        return sim.states_of(victim)
    if sim.false_deaths(set(sim.live())):
        return "a live member was declared dead"
    return None


def test_a_crashed_member_is_eventually_declared_dead_by_all() -> None:
    failed = [(seed, why) for seed in range(400) if (why := _crash_one(seed)) is not None]
    assert not failed, failed[:5]


def _lossy_member(seed: int) -> object:
    sim = GossipSim(8, seed)
    lossy = f"m00{seed % 8}"
    sim.members[lossy].loss = 0.10  # every packet to or from it
    sim.run_for(120)
    if sim.false_deaths(set(sim.members)) or not sim.all_see(lossy, (ALIVE, SUSPECT)):
        return sim.false_deaths(set(sim.members))[:1], sim.states_of(lossy)
    return None


def test_a_live_member_behind_10_percent_loss_is_never_declared_dead() -> None:
    failed = [(seed, why) for seed in range(100) if (why := _lossy_member(seed)) is not None]
    assert not failed, failed[:3]


def test_no_member_is_declared_dead_under_10_percent_loss_everywhere() -> None:
    failed = []
    for seed in range(10):
        sim = GossipSim(10, seed, net=NetConfig(loss=0.10))
        sim.run_for(300)
        if sim.false_deaths(set(sim.members)):
            failed.append((seed, sim.false_deaths(set(sim.members))[0]))
    assert not failed, failed[:3]


def _pause_one(seed: int) -> object:
    rng = random.Random(seed)
    sim = GossipSim(rng.choice([4, 6, 10]), seed, net=_lossy_net(rng), codec=seed % 6 == 0)
    sim.run_for(2)
    sleeper = rng.choice(sorted(sim.members))
    before = sim.members[sleeper].core.incarnation
    sim.pause(sleeper)
    pause = rng.choice([0.5, 2.0, 10.0, 40.0])  # shorter than a suspicion, to long past death
    sim.run_for(pause)
    sim.resume(sleeper)
    others = [n for n in sim.members if n != sleeper]
    took = sim.wait_for(lambda: sim.all_see(sleeper, (ALIVE,), others), timeout=60)
    incarnations = {sim.members[o].core.members[sleeper].incarnation for o in others}
    declared_dead = bool(sim.false_deaths({sleeper}))  # "false" only in name: it was unresponsive
    if took is None:
        return pause, "never came back", sim.states_of(sleeper, others)
    if pause >= 10 and not (declared_dead and min(incarnations) > before):
        return pause, "no death and refutation", before, incarnations
    return None


def test_a_paused_member_refutes_and_comes_back_alive_with_a_higher_incarnation() -> None:
    failed = [(seed, why) for seed in range(150) if (why := _pause_one(seed)) is not None]
    assert not failed, failed[:3]


def _partition_heals(seed: int) -> bool:
    sim = GossipSim(6, seed, config=CoreConfig(push_pull_interval=5.0))
    sim.run_for(2)
    left, right = ["m000", "m001"], ["m002", "m003", "m004", "m005"]
    sim.partition(left, right)
    split = sim.wait_for(lambda: all(sim.all_see(b, (DEAD,), left) for b in right)
                         and all(sim.all_see(a, (DEAD,), right) for a in left), timeout=30)
    sim.heal()
    healed = sim.wait_for(lambda: all(sim.all_see(m, (ALIVE,)) for m in sim.members), timeout=60)
    return split is not None and healed is not None


def test_a_two_way_partition_is_detected_and_heals_through_push_pull() -> None:
    failed = [seed for seed in range(50) if not _partition_heals(seed)]
    assert not failed


def test_a_one_way_partition_between_two_members_kills_nobody() -> None:
    for seed in range(40):
        sim = GossipSim(6, seed)
        sim.partition(["m000"], ["m001"], one_way=True)  # m001 hears m000, m000 never hears m001
        sim.run_for(60)
        assert not sim.false_deaths(set(sim.members)), seed  # indirect probes through others carry the acks


def _clock_jumps(seed: int) -> str | None:
    sim = GossipSim(5, seed, codec=True)
    sim.run_for(2)
    sim.jump_clock("m002", 5.0)  # inside the replay window
    sim.run_for(20)
    if sim.false_deaths(set(sim.members)):
        return "a 5 s jump killed someone"
    sim.jump_clock("m002", 600.0)  # far outside: every packet it sends or gets is refused as stale
    others = [n for n in sim.members if n != "m002"]
    if sim.wait_for(lambda: sim.all_see("m002", (DEAD,), others), timeout=60) is None or not sim.refused:
        return "a 600 s jump went unnoticed"
    sim.jump_clock("m002", -605.0)  # NTP fixed it
    if sim.wait_for(lambda: sim.all_see("m002", (ALIVE,)), timeout=60) is None:
        return "never came back"
    return None


def test_a_small_clock_jump_is_tolerated_and_a_large_one_isolates_until_fixed() -> None:
    failed = [(seed, why) for seed in range(30) if (why := _clock_jumps(seed)) is not None]
    assert not failed, failed[:3]


def _leave(seed: int) -> str | None:
    rng = random.Random(seed)
    sim = GossipSim(rng.choice([3, 6, 10]), seed, net=_lossy_net(rng))
    sim.run_for(1)
    sim.leave("m001")
    if sim.wait_for(lambda: sim.all_see("m001", (LEFT,)), timeout=10) is None:
        return "not seen as left"
    sim.run_for(10)
    if not sim.all_see("m001", (LEFT,)) or [o for o in sim.observations
                                            if o.event.name == "m001" and o.event.state == DEAD]:
        return "seen as dead"
    return None


def test_a_clean_leave_is_seen_as_left_never_dead() -> None:
    failed = [(seed, why) for seed in range(60) if (why := _leave(seed)) is not None]
    assert not failed, failed[:3]


def _restart(seed: int) -> str | None:
    sim = GossipSim(5, seed, codec=seed % 3 == 0)
    sim.run_for(1)
    sim.crash("m003")
    if sim.wait_for(lambda: sim.all_see("m003", (DEAD,)), timeout=30) is None:
        return "crash not detected"
    dead_inc = sim.members["m000"].core.members["m003"].incarnation
    sim.restart("m003")  # a new process: incarnation 0, joins by push-pull through one member
    if sim.wait_for(lambda: sim.all_see("m003", (ALIVE,)), timeout=30) is None:
        return "restart not seen"
    if sim.members["m003"].core.incarnation <= dead_inc or sim.members["m003"].core.live_count() != 5:
        return "no refutation or incomplete view"
    return None


def test_a_restarted_member_rejoins_with_a_higher_incarnation() -> None:
    failed = [(seed, why) for seed in range(60) if (why := _restart(seed)) is not None]
    assert not failed, failed[:3]


def _report_spreads(seed: int) -> bool:
    rng = random.Random(seed)
    sim = GossipSim(rng.choice([5, 20, 50]), seed, net=_lossy_net(rng))
    sim.run_for(3)
    sim.update_report("m001", {"id": "m001", "vcpus_free": 7})
    took = sim.wait_for(lambda: all(sim.members[o].core.members["m001"].report.get("vcpus_free") == 7
                                    for o in sim.members), timeout=30)
    return took is not None


def test_a_report_update_reaches_every_member() -> None:
    failed = [seed for seed in range(30) if not _report_spreads(seed)]
    assert not failed
