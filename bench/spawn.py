"""Starting a child from the daemon (a benchmark, not a test: it prints figures and ratios against
a baseline run side by side in the same process).

    python3 bench/spawn.py [--resident-mib 200] [-n 40]

The process holds --resident-mib of touched memory (a running daemon's size) and runs uvloop, as
the daemon does. Each way of running `true` is timed end to end, and a ticker task measures how
long the event loop was held up meanwhile (its worst lateness): the baseline is asyncio's
create_subprocess_exec on uvloop (fork in the loop's thread), against hvd/spawn.py (vfork in a
spawner thread, a waiter thread per child) that qemu-img, nft, dnsmasq, sysctl and fence agents use.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hvd import spawn  # after the path tweak


async def uvloop_exec() -> None:
    proc = await asyncio.create_subprocess_exec("true", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    await proc.communicate()


async def hvd_spawn() -> None:
    await spawn.run(["true"])


async def measure(fn: Callable[[], Awaitable[None]], n: int) -> tuple[list[float], float]:
    """End-to-end times of ``n`` runs and the loop's worst lateness (a 1 ms ticker) meanwhile."""
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while running:
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    tick = asyncio.create_task(ticker())
    times: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.005)
    running = False
    await tick
    return times, worst


async def main(args: argparse.Namespace) -> None:
    ballast = bytearray(args.resident_mib << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # touched: resident, as a daemon's heap is
    results: dict[str, tuple[list[float], float]] = {"uvloop create_subprocess_exec": ([], 0.0),
                                                     "hvd.spawn.run": ([], 0.0)}
    for _ in range(2):  # alternate, twice each
        for name, fn in (("uvloop create_subprocess_exec", uvloop_exec), ("hvd.spawn.run", hvd_spawn)):
            times, worst = await measure(fn, args.n)
            results[name] = (results[name][0] + times, max(results[name][1], worst))
    base = statistics.median(results["uvloop create_subprocess_exec"][0])
    print(f"running `true` {2 * args.n} times from a uvloop process holding {args.resident_mib} MiB:")
    for name, (times, worst) in results.items():
        p50 = statistics.median(times)
        print(f"  {name:30s} p50 {p50 * 1e3:6.2f} ms (min {min(times) * 1e3:.2f}), event loop held up at worst"
              f" {worst * 1e3:.1f} ms; ratio to uvloop p50 {p50 / base:.2f}")
    del ballast


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--resident-mib", type=int, default=200)
    ap.add_argument("-n", type=int, default=40)
    uvloop.run(main(ap.parse_args()))
