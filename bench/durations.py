"""Durations that the tests no longer assert (issue 17: tests check which path ran, benches time it).

(a) a sole voter: coordinator start → first commit, against the election timeout it skips;
(b) 4 different images fetched through the image cache at once, against the same fetches one
    after another (ratio ≈ 1/4 when they overlap);
(c) `hvd daemon` SIGTERM → exit, against the daemon's start-up (launch → listening).
Fake fetches and the fake driver: no libvirt needed.

    python3 bench/durations.py [-n 5]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hvd.catalog.cmd_resources import FlavorCreate  # noqa: E402
from hvd.catalog.service import Catalog  # noqa: E402
from hvd.cluster.member import open_raft_coordinator  # noqa: E402
from hvd.config import ClusterSection  # noqa: E402
from hvd.storage import image_cache as ic  # noqa: E402
from tests.conftest import free_port, wait_listening, write_config  # noqa: E402

FETCH_S = 0.2


async def single_voter_first_commit(base: Path) -> float:
    catalog = Catalog.open_raft(
        base / "catalog.db",
        lambda db, state: open_raft_coordinator(ClusterSection(), "n1", base / "raft.db", db, state),
    )
    started = time.perf_counter()
    await catalog.coordinator.start()
    try:
        await catalog.propose(FlavorCreate(id=str(uuid.uuid4()), name="tiny", vcpus=1, ram_mb=64, disk_gb=1,
                                           created_at="2026-01-01"))
        return time.perf_counter() - started
    finally:
        await catalog.coordinator.stop()
        catalog.close()


async def fetch_images(base: Path, image: Path, parallel: bool) -> float:
    cache = ic.ImageCache(base)

    async def fetch(dest: Path) -> None:
        await asyncio.sleep(FETCH_S)
        dest.write_bytes(image.read_bytes())

    started = time.perf_counter()
    if parallel:
        await asyncio.gather(*(cache.ensure_cached(f"image-{i}", fetch, "qcow2") for i in range(4)))
    else:
        for i in range(4):
            await cache.ensure_cached(f"image-{i}", fetch, "qcow2")
    return time.perf_counter() - started


def daemon_start_and_stop(base: Path) -> tuple[float, float]:
    port = free_port()
    cfg = write_config(base, port)
    started = time.perf_counter()
    with (base / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hvd", "daemon", "-c", str(cfg)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_listening(port, proc)
            up = time.perf_counter() - started
            stopping = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            down = time.perf_counter() - stopping
        finally:
            if proc.poll() is None:
                proc.kill()
    if code != 0:
        raise SystemExit(f"daemon exited {code}; see {base / 'daemon.log'}")
    return up, down


def p50(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="repetitions (p50 is printed)")
    args = parser.parse_args()
    commits, par, ser, ups, downs = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="hvd-bench-") as tmp:
        image = Path(tmp) / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "4M"], check=True)
        for i in range(args.n):
            run = Path(tmp) / f"run{i}"
            for sub in ("voter", "par", "ser", "daemon"):
                (run / sub).mkdir(parents=True)
            commits.append(asyncio.run(single_voter_first_commit(run / "voter")))
            par.append(asyncio.run(fetch_images(run / "par", image, parallel=True)))
            ser.append(asyncio.run(fetch_images(run / "ser", image, parallel=False)))
            up, down = daemon_start_and_stop(run / "daemon")
            ups.append(up)
            downs.append(down)
    election_s = ClusterSection().election_timeout_ms / 1000
    print(f"(a) sole voter start → first commit  {p50(commits)}   election timeout skipped {election_s * 1000:8.1f} ms"
          f"   ratio {statistics.median(commits) / election_s:.2f}")
    print(f"(b) 4 image fetches at once          {p50(par)}   one after another {p50(ser)}"
          f"   ratio {statistics.median(par) / statistics.median(ser):.2f}")
    print(f"(c) daemon SIGTERM → exit            {p50(downs)}   launch → healthy {p50(ups)}"
          f"   ratio {statistics.median(downs) / statistics.median(ups):.2f}")


if __name__ == "__main__":
    main()
