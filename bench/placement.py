"""Benchmark: placement throughput at scale (not a test; prints figures).

(a) the leader's Placement in this process over a real catalog with 100 / 1,000 / 10,000
    simulated hosts (host records; every host up), many concurrent placements whose build step
    does nothing: committed claims per second, decision latency p50/p99 and CPU per placement;
    first with a one-voter catalog (all-in-one), then as the leader of 3 voters (two hvd daemons
    follow over loopback, every commit replicated and fsynced by a majority);
(b) end to end: three voter daemons (fake driver) on loopback, creates sent round-robin to all
    three (followers hand the placement to the leader, the chosen daemon builds after the
    signed build call): servers ACTIVE per second and create-to-ACTIVE p50/p99.
Baseline in the same run for (a): the same number of bare claim commits (no decision), so the
ratio shows what deciding costs on top of committing.

    python3 bench/placement.py [--hosts 100,1000,10000] [-n 3000] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hvd.catalog.cmd_hosts import ClaimResources, HostRegister  # noqa: E402
from hvd.catalog.service import Catalog  # noqa: E402
from hvd.cluster.member import open_raft_coordinator  # noqa: E402
from hvd.config import Config, load_config  # noqa: E402
from hvd.errors import HvdError  # noqa: E402
from hvd.identity.service import now_iso  # noqa: E402
from hvd.scheduler.model import RequestSpec  # noqa: E402
from hvd.scheduler.placement import Placement  # noqa: E402
from tests.conftest import free_port, write_config  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_cmd(n: int) -> HostRegister:
    return HostRegister(name=f"sim{n:05d}", node_id=f"sim{n:05d}", availability_zone="nova", vcpus=64,
                        memory_mb=262144, disk_gb=4000, reserved_vcpus=0, reserved_memory_mb=0, reserved_disk_gb=0,
                        cpu_ratio=16.0, ram_ratio=1.5, disk_ratio=1.0, hypervisor_type="QEMU",
                        hypervisor_version="7002000", arch="x86_64", cpu_model="sim", api_url="http://127.0.0.1:9",
                        updated_at=now_iso())


async def measure(catalog: Catalog, config: Config, hosts: int, n: int, concurrency: int, label: str) -> None:
    """Register ``hosts`` simulated hosts, then time bare claim commits and full placements."""
    await asyncio.gather(*(catalog.propose(host_cmd(i)) for i in range(hosts)))
    placement = Placement(config, catalog, is_up=lambda _name: True)

    async def no_build(_host: str) -> None:
        return None

    # baseline: bare claim commits at the same concurrency, no decision
    sem = asyncio.Semaphore(concurrency)

    async def bare(i: int) -> None:
        async with sem:
            await catalog.propose(ClaimResources(instance_id=f"base-{i}", host=f"sim{i % hosts:05d}", vcpus=1,
                                                 memory_mb=64, disk_gb=1, created_at=now_iso()))

    t0, c0 = time.perf_counter(), cpu()
    await asyncio.gather(*(bare(i) for i in range(n)))
    base_s, base_cpu = time.perf_counter() - t0, cpu() - c0

    latencies: list[float] = []
    spread: dict[str, int] = {}

    async def one(i: int) -> None:
        async with sem:
            start = time.perf_counter()
            req = RequestSpec(instance_id=str(uuid.uuid4()), vcpus=1, memory_mb=512, disk_gb=10)
            host = await placement.place(req, no_build)
            latencies.append(time.perf_counter() - start)
            spread[host] = spread.get(host, 0) + 1

    t0, c0 = time.perf_counter(), cpu()
    await asyncio.gather(*(one(i) for i in range(n)))
    took, used = time.perf_counter() - t0, cpu() - c0
    print(f"  {label} {hosts:>6} hosts: {n / took:8.0f} placements/s  p50 {pct(latencies, .5) * 1e3:7.1f} ms"
          f"  p99 {pct(latencies, .99) * 1e3:7.1f} ms  CPU {used / n * 1e6:6.0f} µs/placement"
          f"  | bare claims {n / base_s:7.0f}/s ({base_cpu / n * 1e6:.0f} µs CPU)"
          f"  ratio {(n / took) / (n / base_s):.2f}  | hosts used {len(spread)}, max {max(spread.values())}")


async def in_process(hosts: int, n: int, concurrency: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="hvdbench-place-", dir="/var/tmp"))
    config = load_config(write_config(base, free_port()))
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open_raft(data / "catalog.db", lambda db, state: open_raft_coordinator(
        config.cluster, config.node_id, data / "raft.db", db, state))
    coordinator = catalog.coordinator
    await coordinator.start()
    try:
        await coordinator.read_barrier()
        await measure(catalog, config, hosts, n, concurrency, "1 voter ")
    finally:
        await coordinator.stop()
        catalog.close()


async def three_voters(hosts: int, n: int, concurrency: int) -> None:
    """The leader's placement in this process, its catalog replicated to two daemons (Raft over
    loopback, each follower fsyncing): what a 3-voter cluster's leader sustains."""
    from hvd.api.internal import PeerEndpoint, StartupListener
    from hvd.cluster.coordinator import RaftCoordinator
    from hvd.cluster.keys import peer_key
    from hvd.cluster.peer_auth import PeerVerifier
    from hvd.daemon import listen_socket
    from tests.conftest import start_daemon
    from tests.functional.test_cluster import KEY

    base = Path(tempfile.mkdtemp(prefix="hvdbench-3v-", dir="/var/tmp"))
    ports = {node: free_port() for node in ("node1", "node2", "node3")}
    peers = ", ".join(f'"{node}=http://127.0.0.1:{port}"' for node, port in ports.items())
    extra = f'[cluster]\npeers = [{peers}]\ncluster_key = "{KEY}"\n'
    config = load_config(write_config(base / "node1", ports["node1"], extra=extra), {"HVD_HOST__NAME": "node1"})
    data = base / "node1" / "data"
    data.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open_raft(data / "catalog.db", lambda db, state: open_raft_coordinator(
        config.cluster, config.node_id, data / "raft.db", db, state))
    coordinator = catalog.coordinator
    assert isinstance(coordinator, RaftCoordinator)
    sock = listen_socket(config)
    await coordinator.start()
    # the peer routes on node1's port, as a daemon serves them while it starts
    startup = StartupListener(PeerEndpoint(coordinator, PeerVerifier(peer_key(KEY.encode()))), sock)
    await startup.start()
    followers = [start_daemon(base / node, extra=extra, env={"HVD_HOST__NAME": node}, port=ports[node])
                 for node in ("node2", "node3")]
    try:
        await coordinator.read_barrier()
        while not coordinator.is_leader:
            with contextlib.suppress(HvdError):
                await coordinator.change_membership({"op": "transfer", "id": "node1"})
            await asyncio.sleep(0.5)
        await measure(catalog, config, hosts, n, concurrency, "3 voters")
    finally:
        for daemon in followers:
            daemon.stop()
        await startup.close()
        await coordinator.stop()
        catalog.close()
        sock.close()


async def end_to_end(n: int, concurrency: int) -> None:
    import aiohttp

    from tests.functional.compute_helpers import make_qcow2
    from tests.functional.test_cluster import IDS, Cluster

    base = Path(tempfile.mkdtemp(prefix="hvdbench-e2e-", dir="/var/tmp"))
    cluster = Cluster(base)
    try:
        for node in IDS:
            cluster.start(node)
        cluster.wait_ready(IDS)
        cluster.call("node1", "PUT", "/v1/quotas/admin", {"quotas": {"instances": -1, "cores": -1, "ram": -1}})
        cluster.call("node1", "POST", "/v1/flavors", {"name": "b.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
        image = cluster.call("node1", "POST", "/v1/images", {"name": "b", "disk_format": "qcow2"}).json()
        disk = make_qcow2(base / "b.qcow2")
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {cluster.tokens['node1']}"}
            async with session.put(cluster.url("node1") + f"/v1/images/{image['id']}/file", data=disk.read_bytes(),
                                   headers={**headers, "Content-Type": "application/octet-stream"}) as r:
                assert r.status == 204, await r.text()
            sem = asyncio.Semaphore(concurrency)
            latencies: list[float] = []

            async def one(i: int) -> None:
                async with sem:
                    start = time.perf_counter()
                    body = {"name": f"b{i}", "flavor": "b.tiny", "image": image["id"], "networks": "none"}
                    url = cluster.url(IDS[i % 3]) + "/v1/servers?wait=true"
                    async with session.post(url, json=body, headers=headers) as r:
                        server = await r.json()
                        assert r.status == 202 and server["status"] == "ACTIVE", server
                    latencies.append(time.perf_counter() - start)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            took = time.perf_counter() - t0
        print(f"  3 daemons: {n / took:8.0f} servers ACTIVE/s  create->ACTIVE p50 {pct(latencies, .5) * 1e3:7.1f} ms"
              f"  p99 {pct(latencies, .99) * 1e3:7.1f} ms")
    finally:
        for node in list(cluster.procs):
            cluster.stop(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="100,1000,10000")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--voters", type=int, choices=(1, 3), default=3, help="also run with 3 voters (default)")
    parser.add_argument("--e2e", type=int, default=90,
                        help="creates in the end-to-end run (the fake hosts hold 96 one-vCPU servers; 0 = skip)")
    args = parser.parse_args()
    print(f"placement, in-process (one-voter Raft catalog), {args.n} placements, concurrency {args.concurrency}")
    for hosts in [int(h) for h in args.hosts.split(",")]:
        asyncio.run(in_process(hosts, args.n, args.concurrency))
    if args.voters == 3:
        print("placement on the leader of 3 voters (two daemons follow over loopback)")
        for hosts in [int(h) for h in args.hosts.split(",")]:
            asyncio.run(three_voters(hosts, args.n, args.concurrency))
    if args.e2e:
        print(f"end to end, {args.e2e} creates, concurrency 32")
        asyncio.run(end_to_end(args.e2e, 32))


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    main()
