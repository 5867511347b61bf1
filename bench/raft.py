"""Raft catalog benchmark over real ``hvd daemon`` processes on loopback (not a test).

    python3 bench/raft.py single            # one daemon: keypair POST+DELETE writes/s (public API)
    python3 bench/raft.py cluster           # three daemons: commits/s, latency, failover, idle terms
    python3 bench/raft.py cluster --idle 60 --failovers 10

Commits are measured two ways, both against the leader: the lightweight internal path (a signed
``POST /internal/v1/raft/propose`` carrying one encoded FlavorCreate: peer HTTP + Raft + apply) and
the public API (``POST /v1/flavors`` with a token: adds auth, validation and the API's own reads).
Targets: failover p50 <= 1.5 s, >= 2,000 commits/s with group commit, 0 spurious elections idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hvd.catalog.cmd_resources import FlavorCreate
from hvd.catalog.commands import encode
from hvd.cluster.http_transport import PROPOSE_PATH, STATUS_PATH
from hvd.cluster.keys import peer_key
from hvd.cluster.peer_auth import sign_headers
from tests.conftest import DaemonProcess, free_port, start_daemon, wait_listening

KEY = "bench-cluster-key-0123456789abcdef"


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.token = ""

    async def login(self) -> None:
        body = {"username": "admin", "password": "admin-secret", "project": "admin"}
        async with self.session.post(self.url + "/v1/auth/tokens", json=body) as resp:
            assert resp.status == 201, await resp.text()
            self.token = (await resp.json())["token"]

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=15)
        async with self.session.request(method, self.url + path, json=json, headers=headers,
                                        timeout=timeout) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body


async def rate(n: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """Run op(0..n-1) with `concurrency` workers; (ops/s, per-op latencies in s)."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started), latencies


class _Pipe(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared requests one at a time.

    A load generator as light as wrk's inner loop: aiohttp's client costs ~0.5 ms of CPU per
    request, which on this 2-core machine is CPU taken away from the three daemons it measures.
    """

    def __init__(self, requests: list[bytes], latencies: list[float], done: asyncio.Future[None]) -> None:
        self.requests, self.latencies, self.done = requests, latencies, done
        self.buf = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if not self.requests:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.sent = time.perf_counter()
        self.transport.write(self.requests.pop())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4: head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            if not head.startswith("HTTP/1.1 200"):
                if not self.done.done():
                    self.done.set_exception(RuntimeError(f"{head.splitlines()[0]}: {body[:200]!r}"))
                return
            self.latencies.append(time.perf_counter() - self.sent)
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"connection lost: {exc}"))


async def raw_rate(url: str, requests: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Send prepared requests over ``concurrency`` connections; (requests/s, latencies in s)."""
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    shares = [requests[i::concurrency] for i in range(concurrency)]
    dones = [loop.create_future() for _ in shares]
    started = time.perf_counter()
    transports = [
        (await loop.create_connection(lambda s=share, d=done: _Pipe(s, latencies, d), host, int(port)))[0]  # type: ignore[misc]
        for share, done in zip(shares, dones, strict=True)
    ]
    try:
        await asyncio.gather(*dones)
    finally:
        for t in transports:
            t.close()
    return len(requests) / (time.perf_counter() - started), latencies


def signed_request(host: str, path: str, body: bytes) -> bytes:
    """A complete signed HTTP/1.1 POST, ready to write to a socket."""
    headers = sign_headers(peer_key(KEY.encode()), "bench", "POST", path, body)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/octet-stream",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def baseline_server(port: int) -> None:
    """A bare aiohttp app (uvloop, like the daemon) answering every POST with a small JSON body:
    what one Python process on this machine can serve right now, with no Raft behind it."""
    import uvloop
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok": {"id": "x"}}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def baseline_rate(requests: list[bytes], concurrency: int) -> float:
    """Requests/s of the same load generator against :func:`baseline_server`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port)])
    try:
        wait_listening(port, proc)
        rate_, _ = await raw_rate(f"http://127.0.0.1:{port}", requests, concurrency)
        return rate_
    finally:
        proc.terminate()
        proc.wait(10)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# ---------------------------------------------------------------------------------------- single
async def bench_single(base: Path, n: int) -> None:
    d = start_daemon(base / "single")
    try:
        async with aiohttp.ClientSession() as session:
            c = Client(session, d.url)
            await wait_ready(c)
            await c.login()

            async def keypair(i: int) -> None:
                name = f"k{i}-{uuid.uuid4().hex[:6]}"
                status, body = await c.call("POST", "/v1/keypairs", {"name": name})
                assert status == 201, body
                status, body = await c.call("DELETE", f"/v1/keypairs/{name}")
                assert status == 204, body

            for conc in (1, 16):
                ops, lat = await rate(n, conc, keypair)
                print(f"single daemon, keypair POST+DELETE, concurrency {conc:2d}: {2 * ops:7.0f} writes/s "
                      f"(p50 {pct(lat, 50) * 500:.2f} ms/write)")
    finally:
        d.stop()


# --------------------------------------------------------------------------------------- cluster
def cluster_extra(ids: list[str], ports: list[int]) -> str:
    peers = ", ".join(f'"{i}=http://127.0.0.1:{p}"' for i, p in zip(ids, ports, strict=True))
    return f'[cluster]\npeers = [{peers}]\ncluster_key = "{KEY}"\n'


class Cluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.ids = [f"node{i}" for i in range(1, size + 1)]
        self.ports = [free_port() for _ in self.ids]
        self.procs: dict[str, DaemonProcess] = {}

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[self.ids.index(node)]}"

    def start(self, node: str) -> None:
        i = self.ids.index(node)
        self.procs[node] = start_daemon(self.base / node, extra=cluster_extra(self.ids, self.ports),
                                        env={"HVD_HOST__NAME": node}, port=self.ports[i])

    def kill(self, node: str) -> None:
        self.procs.pop(node).stop(signal.SIGKILL)

    def stop_all(self) -> None:
        for node in list(self.procs):
            self.procs.pop(node).stop()


async def health(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return dict(await resp.json()) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def wait_ready(c: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await health(c.session, c.url)
        if h and h.get("leader"):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{c.url} not ready")


async def status(session: aiohttp.ClientSession, cluster: Cluster, node: str) -> dict[str, Any] | None:
    path = STATUS_PATH
    headers = sign_headers(peer_key(KEY.encode()), "bench", "GET", path, b"")
    try:
        async with session.get(cluster.url(node) + path, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return dict(await resp.json()) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def leader_of(session: aiohttp.ClientSession, cluster: Cluster, nodes: list[str]) -> str | None:
    for node in nodes:
        st = await status(session, cluster, node)
        if st and st["role"] == "leader":
            return node
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_cluster(base: Path, n: int, failovers: int, idle: float, opts: argparse.Namespace) -> None:
    cluster = Cluster(base)
    try:
        for node in cluster.ids:
            cluster.start(node)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            for node in cluster.ids:
                await wait_ready(Client(session, cluster.url(node)))
            leader = await leader_of(session, cluster, cluster.ids)
            assert leader is not None
            c = Client(session, cluster.url(leader))
            await c.login()

            async def flavor(i: int) -> None:
                body = {"name": f"f{i}-{uuid.uuid4().hex[:6]}", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
                status_, out = await c.call("POST", "/v1/flavors", body)
                assert status_ == 201, out

            leader_url = cluster.url(leader)
            host = leader_url.removeprefix("http://")

            def commands(count: int) -> list[bytes]:
                # signed just before the run: the signatures' timestamps must fall in the peer window
                return [signed_request(host, PROPOSE_PATH, encode(FlavorCreate(
                    id=str(uuid.uuid4()), name=f"c{i}-{uuid.uuid4().hex[:8]}", vcpus=1, ram_mb=64, disk_gb=1,
                    created_at="2026-01-01T00:00:00Z"))) for i in range(count)]

            paths = ["internal", "public"]
            labels = {"internal": "signed POST /internal/v1/raft/propose", "public": "public POST /v1/flavors"}
            for path in (p for p in paths if p in opts.paths):
                label = labels[path]
                for conc in opts.concurrency:
                    count = max(200, n // 10) if conc == 1 else n
                    prepared = commands(count) if path == "internal" else []
                    baseline = await baseline_rate(list(prepared), conc) if prepared and conc > 1 else 0.0
                    cpu0 = {x: cpu_seconds(cluster.procs[x].proc.pid) for x in cluster.ids}
                    me0 = cpu_seconds(os.getpid())
                    rounds0 = (await status(session, cluster, leader) or {}).get("persist_rounds", 0)
                    if path == "internal":
                        ops, lat = await raw_rate(leader_url, prepared, conc)
                    else:
                        ops, lat = await rate(count, conc, flavor)
                    rounds = (await status(session, cluster, leader) or {}).get("persist_rounds", 0) - rounds0
                    me = (cpu_seconds(os.getpid()) - me0) / count * 1e6
                    used = {x: cpu_seconds(cluster.procs[x].proc.pid) - cpu0[x] for x in cluster.ids}
                    cpu = " ".join(f"{'L' if x == leader else 'F'}{used[x] / count * 1e6:.0f}" for x in cluster.ids)
                    print(f"{label}: {conc:2d} clients  {ops:6.0f} commits/s  "
                          f"p50 {pct(lat, 50) * 1000:.2f} ms  p99 {pct(lat, 99) * 1000:.2f} ms  "
                          f"{count / max(rounds, 1):.1f} commits/round  CPU us/commit {cpu} bench {me:.0f}", flush=True)
                    if baseline:
                        print(f"    baseline: bare aiohttp POST, same load generator: {baseline:6.0f} req/s"
                              f"  -> commits/s = {ops / baseline:.2f} x baseline", flush=True)

            if idle > 0:
                before = {x: (await status(session, cluster, x) or {}).get("term") for x in cluster.ids}
                print(f"idle {idle:.0f} s: terms before {before}", flush=True)
                await asyncio.sleep(idle)
                after = {x: (await status(session, cluster, x) or {}).get("term") for x in cluster.ids}
                spurious = max(a or 0 for a in after.values()) - max(b or 0 for b in before.values())
                print(f"idle {idle:.0f} s: terms after  {after} -> {spurious} spurious elections")

            times: list[float] = []
            for trial in range(failovers):
                leader = await leader_of(session, cluster, list(cluster.procs))
                assert leader is not None
                survivors = [x for x in cluster.ids if x != leader]
                cluster.kill(leader)
                t0 = time.perf_counter()
                while await leader_of(session, cluster, survivors) is None:
                    await asyncio.sleep(0.01)
                times.append(time.perf_counter() - t0)
                print(f"failover {trial + 1}: {leader} killed, new leader after {times[-1]:.3f} s", flush=True)
                cluster.start(leader)
                await wait_ready(Client(session, cluster.url(leader)))
                await asyncio.sleep(0.5)  # let it catch up before the next kill
            if times:
                print(f"failover after SIGKILL ({len(times)} trials): median {statistics.median(times):.3f} s"
                      f"  max {max(times):.3f} s")
    finally:
        cluster.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["single", "cluster"], nargs="?", default="cluster")
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=2000, help="operations per throughput run")
    parser.add_argument("--failovers", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle run (0 = skip)")
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 16, 64],
                        help="comma-separated client counts (1 = the sequential run, n/10 operations)")
    parser.add_argument("--paths", type=lambda v: v.split(","), default=["internal", "public"],
                        help="which write paths to measure: internal,public")
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server)
        return 0
    base = Path(tempfile.mkdtemp(prefix="hvd-bench-raft-"))
    try:
        if args.mode == "single":
            asyncio.run(bench_single(base, args.n))
        else:
            asyncio.run(bench_cluster(base, args.n, args.failovers, args.idle, args))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
