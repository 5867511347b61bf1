"""Replay one seed with a full trace: ``python -m tests.sim.replay SEED [--verbose]``."""

from __future__ import annotations

import sys

from tests.sim.runner import run_seed


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tests.sim.replay SEED [--verbose]")
        return 2
    result = run_seed(int(argv[0]), verbose="--verbose" in argv)
    print("\n".join(result.trace))
    print(result.report().split("\n--- trace ---")[0])
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
