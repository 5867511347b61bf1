"""Raft simulation sweep benchmark: ``python bench/raft_sim.py [--seeds N] [--start S] [--jobs J]``.

Default is the long mode (100,000 seeds). Prints seeds/s and every failing seed with its replay
command. Not part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sim.runner import run_seed


def _run_range(bounds: tuple[int, int]) -> list[tuple[int, str]]:
    failures = []
    for seed in range(*bounds):
        result = run_seed(seed)
        if not result.ok:
            failures.append((seed, result.failures[0][:300]))
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=100_000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=500)
    args = parser.parse_args()
    chunks = [
        (s, min(s + args.chunk, args.start + args.seeds))
        for s in range(args.start, args.start + args.seeds, args.chunk)
    ]
    began = time.perf_counter()
    failures: list[tuple[int, str]] = []
    done = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for (lo, hi), found in zip(chunks, pool.map(_run_range, chunks), strict=True):
            done += hi - lo
            failures += found
            for seed, why in found:
                print(f"FAIL seed {seed}: {why}\n  replay: python -m tests.sim.replay {seed}", flush=True)
            rate = done / (time.perf_counter() - began)
            print(f"{done}/{args.seeds} seeds, {rate:.1f} seeds/s, {len(failures)} failures", flush=True)
    elapsed = time.perf_counter() - began
    print(
        f"done: {args.seeds} seeds in {elapsed:.1f}s = {args.seeds / elapsed:.1f} seeds/s "
        f"({args.jobs} jobs), {len(failures)} failures"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
