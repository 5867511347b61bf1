"""The seed sweep: 2,000 random simulations (20 chunks of 100 so a failure names its seeds)."""

from __future__ import annotations

import pytest

from tests.sim.runner import run_seed

CHUNKS = 20
PER_CHUNK = 100


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seed_chunk_is_safe_and_linearizable(chunk: int) -> None:
    failed = []
    for seed in range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK):
        result = run_seed(seed)
        if not result.ok:
            failed.append(result)
    if failed:
        first = failed[0].report()
        seeds = [r.seed for r in failed]
        pytest.fail(f"{len(failed)} failing seeds {seeds}; first:\n{first[-20000:]}")
