"""API and catalog throughput (a benchmark, not a test: it prints figures).

    python3 bench/api.py [--seconds 5] [--concurrency 32]

1. Starts `hvd daemon` (fake driver, temporary directory) and, side by side, a bare aiohttp server
   (uvloop, like the daemon) that answers GET with the same flavor JSON: the baseline.
2. From a loopback aiohttp client with N requests in flight: requests/s and p50/p99 latency of
   `GET /v1/flavors/{id}` (daemon and baseline), and of `POST` + `DELETE /v1/keypairs` (import of
   a fixed public key under distinct names; every request is a committed catalog write).
3. In-process `CatalogState.apply_batch` commands/s on a file database (synchronous=FULL) with
   batches of 1 and of 64.
Targets: >= 2,000 GET/s and >= 500 committed writes/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import free_port, wait_listening  # noqa: E402 - after the path tweak, as in bench/create.py

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN3x1CuxJzguxj+DcmkGENE0fJc7PY547XflcLwdsccs bench@hvd"


def start_daemon(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "hvd.toml"
    cfg.write_text(f"""
[host]
name = "bench"
data_dir = "{base / 'data'}"
instances_path = "{base / 'instances'}"
[api]
listen = "127.0.0.1"
port = {port}
[identity]
admin_password = "admin-secret"
[log]
level = "WARNING"
[compute]
driver = "fake"
""")
    log = open(base / "daemon.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "hvd", "daemon", "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO)
    wait_listening(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_baseline(body: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port), json.dumps(body)],
                            cwd=REPO)
    wait_listening(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def baseline_server(port: int, body: str) -> None:
    """A bare aiohttp app answering every GET with `body` (what the API costs without hvd)."""
    import uvloop
    from aiohttp import web

    data = json.loads(body)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(data)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Result:
    def __init__(self, name: str, latencies: list[float], elapsed: float, ops_per_call: int = 1) -> None:
        self.name = name
        self.calls = len(latencies)
        self.rate = self.calls * ops_per_call / elapsed
        ordered = sorted(latencies)
        self.p50 = statistics.median(ordered) * 1000
        self.p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    def line(self, unit: str = "req/s") -> str:
        return f"{self.name:<44} {self.rate:>9,.0f} {unit:<9} p50 {self.p50:6.2f} ms  p99 {self.p99:6.2f} ms" \
               f"  ({self.calls} calls)"


async def load(name: str, seconds: float, concurrency: int, one: Callable[[int], Awaitable[None]],
               ops_per_call: int = 1) -> Result:
    """Run `one(i)` from `concurrency` workers for `seconds`; per-call latencies."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter)
            t0 = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, latencies, time.perf_counter() - started, ops_per_call)


async def http_benchmarks(url: str, baseline_url: str, flavor_id: str, token: str, seconds: float,
                          concurrency: int) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as http:

        async def get(base: str) -> Callable[[int], Awaitable[None]]:
            async def one(_: int) -> None:
                async with http.get(f"{base}/v1/flavors/{flavor_id}") as r:
                    assert r.status == 200, r.status
                    await r.read()

            await one(0)  # warm up the connection pool path
            return one

        async def keypair(i: int) -> None:
            async with http.post(f"{url}/v1/keypairs", json={"name": f"k{i}", "public_key": PUBLIC_KEY}) as r:
                assert r.status == 201, await r.text()
            async with http.delete(f"{url}/v1/keypairs/k{i}") as r:
                assert r.status == 204, await r.text()

        base = await load("baseline: bare aiohttp GET (same JSON)", seconds, concurrency, await get(baseline_url))
        got = await load("GET /v1/flavors/{id}", seconds, concurrency, await get(url))
        writes = await load("POST+DELETE /v1/keypairs (committed writes)", seconds, concurrency, keypair,
                            ops_per_call=2)
    return [
        base.line(),
        got.line() + f"  = {got.rate / base.rate:.2f} x baseline",
        writes.line("writes/s") + f"  = {writes.rate / base.rate:.2f} x baseline GET",
        "",
        f"targets: GET >= 2,000/s: {'met' if got.rate >= 2000 else 'MISSED'};"
        f" writes >= 500/s: {'met' if writes.rate >= 500 else 'MISSED'}",
    ]


def catalog_benchmark(batch: int, seconds: float) -> str:
    from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
    from hvd.catalog.cmd_identity import ProjectCreate, UserCreate
    from hvd.catalog.cmd_resources import KeypairCreate, QuotaSet
    from hvd.catalog.commands import encode
    from hvd.catalog.db import connect
    from hvd.catalog.state import CatalogState

    with tempfile.TemporaryDirectory() as tmp:
        state = CatalogState(connect(Path(tmp) / "catalog.db"))
        now = "2026-01-01T00:00:00.000000Z"
        state.apply_batch([(1, encode(ProjectCreate(id="p", name="p", created_at=now))),
                           (2, encode(UserCreate(id="u", name="u", password_hash="x", created_at=now))),
                           (3, encode(QuotaSet(project_id="p", limits={"key_pairs": -1})))])
        index, done = 3, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            entries = []
            for _ in range(batch):
                index += 1
                # distinct keypairs under an unlimited quota: every command writes
                entries.append((index, encode(KeypairCreate(
                    id=f"k{index}", user_id="u", project_id="p", name=f"k{index}", public_key=PUBLIC_KEY,
                    fingerprint="SHA256:x", key_type="ssh-ed25519", created_at=now))))
            results = state.apply_batch(entries)
            assert all(b'"ok"' in r[:6] for r in results), results[0]
            done += batch
        elapsed = time.perf_counter() - started
        state.conn.close()
    return f"CatalogState.apply_batch, batches of {batch:<3}             {done / elapsed:>9,.0f} commands/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each HTTP measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--baseline-server", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(int(args.baseline_server[0]), args.baseline_server[1])
        return
    print(f"hvd API benchmark: {os.cpu_count()} CPUs, {args.concurrency} in flight, {args.seconds:g} s each")
    with tempfile.TemporaryDirectory() as tmp:
        daemon, url = start_daemon(Path(tmp) / "hvd")
        try:
            print("\n".join(asyncio.run(_run_http(url, args))))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(10)
    print()
    for batch in (1, 64):
        print(catalog_benchmark(batch, 3.0))


async def _run_http(url: str, args: argparse.Namespace) -> list[str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/auth/tokens",
                             json={"username": "admin", "password": "admin-secret", "project": "admin"}) as r:
            token = (await r.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{url}/v1/flavors", headers=headers,
                             json={"name": "bench.flavor", "vcpus": 1, "ram_mb": 512, "disk_gb": 1}) as r:
            flavor = await r.json()
    baseline, baseline_url = start_baseline(flavor)
    try:
        return await http_benchmarks(url, baseline_url, flavor["id"], token, args.seconds, args.concurrency)
    finally:
        baseline.send_signal(signal.SIGINT)
        baseline.wait(10)


if __name__ == "__main__":
    main()
