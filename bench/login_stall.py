"""Event-loop lag while a burst of bad logins hashes (issue 10: unauthenticated loop stall).

A daemon's services and API run in this process (fake driver); a probe task sleeps 5 ms in a
loop and records how late it wakes. `N` concurrent logins for unknown users are sent; the
worst probe lateness, the time until every login answered and the answers are printed, with
the time one /healthz takes while they run. Compare checkouts with PYTHONPATH=<checkout>.

    python3 bench/login_stall.py [-n 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from tests.conftest import free_port, serve_in_process, write_config  # noqa: E402


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - started - 0.005)


async def one_run(n: int) -> tuple[float, float, float, collections.Counter[int]]:
    from hvd.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp) / "hvd", free_port()))
        async with serve_in_process(config) as (_, url), aiohttp.ClientSession() as session:

            async def login(i: int) -> int:
                body = {"username": f"nobody-{i}", "password": "wrong", "project": "admin"}
                async with session.post(url + "/v1/auth/tokens", json=body) as resp:
                    return resp.status

            async def healthz() -> float:
                await asyncio.sleep(0.02)
                started = time.perf_counter()
                async with session.get(url + "/healthz") as resp:
                    await resp.read()
                return time.perf_counter() - started

            lags: list[float] = []
            stop = asyncio.Event()
            task = asyncio.create_task(probe(lags, stop))
            started = time.perf_counter()
            health = asyncio.create_task(healthz())
            statuses = await asyncio.gather(*(login(i) for i in range(n)))
            total = time.perf_counter() - started
            stop.set()
            await task
            return max(lags), total, await health, collections.Counter(statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="concurrent bad logins")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import hvd

    print(f"hvd from {Path(hvd.__file__).parent}; {args.n} concurrent logins of unknown users, {args.runs} runs")
    results = [asyncio.run(one_run(args.n)) for _ in range(args.runs)]
    for lag, total, health, statuses in results:
        print(f"  max loop lag {lag * 1000:7.1f} ms   all answered in {total * 1000:7.1f} ms"
              f"   /healthz {health * 1000:6.1f} ms   answers {dict(statuses)}")
    print(f"median max loop lag {statistics.median(r[0] for r in results) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
