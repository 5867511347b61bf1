"""Gossip figures from the deterministic simulation (default config): ``python bench/gossip.py``.

Prints, for 10, 100 and 1,000 simulated members: time until a crashed member is known dead by
every live member (p50/p99), time until a report update reaches every member (p50/p99), bytes sent
per member per second in steady state (sealed packets, push-pull excluded); and false "dead"
declarations under 10 % loss on every link over 10 simulated minutes. ``--real`` adds the
5-daemon run on loopback: detection after ``kill -9``, median of 10 trials. Not a test.
Targets (issue 11): dead everywhere <= 3 s p99 at 5-10 hosts; a report reaches 1,000 members <= 2 s p99;
0 false dead under 10 % loss.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hvd.cluster.gossip.core import DEAD, CoreConfig
from tests.sim.gossip.sim import GossipSim, NetConfig


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def detection_and_spread(n: int, trials: int, spreads: int, seed: int) -> tuple[list[float], list[float], float]:
    """(detection times, spread times, bytes/member/s) from one settled simulated cluster."""
    sim = GossipSim(n, seed, net=NetConfig(), codec=True)
    rng = random.Random(seed)
    sim.run_for(5)
    bytes0, t0 = sim.bytes_sent, sim.now
    sim.run_for(10)  # steady state: probes only
    rate = (sim.bytes_sent - bytes0) / n / (sim.now - t0)
    detect, spread = [], []
    for trial, name in enumerate(rng.sample(sorted(sim.members), min(n, spreads))):
        sim.update_report(name, {"id": name, "vcpus_free": trial + 1})  # each member once: no report floor
        took = sim.wait_for(lambda name=name, trial=trial: all(  # type: ignore[misc]
            sim.members[o].core.members[name].report.get("vcpus_free") == trial + 1 for o in sim.live()),
            timeout=60, step=0.01)
        spread.append(took if took is not None else float("inf"))
    for _ in range(trials):
        sim.run_for(rng.uniform(0.1, 1.0))
        victim = rng.choice(sim.live())
        sim.crash(victim)
        took = sim.wait_for(lambda victim=victim: sim.all_see(victim, (DEAD,)),  # type: ignore[misc]
                            timeout=120, step=0.01)
        detect.append(took if took is not None else float("inf"))
        sim.restart(victim)  # keep the size: the next trial runs with n members again
        sim.wait_for(lambda victim=victim: sim.all_see(victim, ("alive",)), timeout=120)  # type: ignore[misc]
    return detect, spread, rate


def false_dead(n: int, seeds: int, minutes: float) -> tuple[int, int]:
    """(false dead declarations, suspicions) under 10 % loss on every link."""
    dead = suspects = 0
    for seed in range(seeds):
        sim = GossipSim(n, 1000 + seed, net=NetConfig(loss=0.10))
        sim.run_for(minutes * 60)
        dead += len(sim.false_deaths(set(sim.members)))
        suspects += sum(1 for o in sim.observations if o.event.state == "suspect")
    return dead, suspects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--real", action="store_true", help="also the 5-daemon kill -9 run (needs ~2 min)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-loss-run", action="store_true", help="skip the 10 %% loss runs")
    args = parser.parse_args()
    print(f"default config: {CoreConfig()}")
    trials = {5: 200, 10: 100, 100: 30, 1000: 5}
    spreads = {5: 5, 10: 10, 100: 100, 1000: 30}
    print(f"{'members':>8} {'trials':>6} {'detect p50':>10} {'p99':>6} {'spreads':>7} {'spread p50':>10} {'p99':>6}"
          f" {'B/member/s':>10} {'wall s':>7}")
    for n in [int(s) for s in args.sizes.split(",")]:
        began = time.perf_counter()
        detect, spread, rate = [], [], 0.0
        runs = max(1, trials.get(n, 10) // 10)
        for run in range(runs):
            d, s, r = detection_and_spread(n, trials.get(n, 10) // runs, spreads.get(n, 10), args.seed + run)
            detect += d
            spread += s
            rate += r / runs
        print(f"{n:>8} {len(detect):>6} {pct(detect, 0.5):>10.2f} {pct(detect, 0.99):>6.2f} {len(spread):>7}"
              f" {pct(spread, 0.5):>10.2f} {pct(spread, 0.99):>6.2f} {rate:>10.0f} {time.perf_counter() - began:>7.1f}")
    for n, seeds in () if args.no_loss_run else ((10, 5), (100, 1)):
        began = time.perf_counter()
        dead, suspects = false_dead(n, seeds, 10.0)
        print(f"10 % loss, {n} members, {seeds} x 10 simulated min: false dead = {dead},"
              f" suspicions seen = {suspects} ({time.perf_counter() - began:.1f} s)")
    if args.real:
        from bench.gossip_real import kill_detection

        times = kill_detection(trials=10)
        print(f"5 daemons on loopback, kill -9 -> dead at every other daemon: median {statistics.median(times):.2f} s,"
              f" max {max(times):.2f} s over {len(times)} trials")
    return 0


if __name__ == "__main__":
    sys.exit(main())
