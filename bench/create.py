"""Benchmark: server create latency, hvd vs. plain libvirt, side by side in one run.

(a) hvd: `POST /v1/servers?wait=true` → ACTIVE, through the real API, catalog and libvirt driver.
(b) baseline: the same qcow2 overlay + the same domain XML straight through libvirt-python
    (defineXML + create), no hvd in between.
Both use the cached test guest image (TCG, `virt_type = "qemu"`). Prints p50/p90 of each, the
ratio a/b, and hvd's own overhead before the libvirt define/create (total minus driver.spawn).

    python3 bench/create.py [-n 15] [--config-drive]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
import libvirt
from aiohttp.test_utils import TestServer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hvd.api.app import build_app  # noqa: E402
from hvd.config import load_config  # noqa: E402
from hvd.daemon import running_services  # noqa: E402
from hvd.drivers.base import DISK, InstanceSpec  # noqa: E402
from hvd.drivers.libvirt.xml import domain_xml  # noqa: E402
from hvd.storage import qemu_img  # noqa: E402
from tests.conftest import Api, free_port, write_config  # noqa: E402
from tests.functional.compute_helpers import make_flavor, upload_image  # noqa: E402
from tests.guest.helpers import guest_image_path  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(n: int, config_drive: bool) -> None:
    base = Path(tempfile.mkdtemp(prefix="hvdbench-create-", dir="/var/tmp"))
    base.chmod(0o755)
    cfg = write_config(base, free_port(), driver="libvirt", extra="shutdown_timeout_s = 5")
    config = load_config(cfg)
    hvd_times: list[float] = []
    spawn_times: list[float] = []
    base_times: list[float] = []
    try:
        async with running_services(config) as services:
            server = TestServer(build_app(services), host="127.0.0.1", port=config.api.port)
            await server.start_server()
            manager = services.extra["compute"].manager
            driver = manager.driver
            original_spawn = driver.spawn

            async def timed_spawn(spec: InstanceSpec) -> None:
                started = time.perf_counter()
                try:
                    await original_spawn(spec)
                finally:
                    spawn_times.append(time.perf_counter() - started)

            driver.spawn = timed_spawn  # type: ignore[method-assign]
            async with aiohttp.ClientSession() as session:
                api = Api(session, f"http://127.0.0.1:{config.api.port}")
                await api.login("admin", "admin-secret", "admin")
                image = await upload_image(api, guest_image_path(), name="guest")
                await make_flavor(api, name="tiny", ram_mb=128, disk_gb=1)
                # warm the image cache (the benchmark is about creates with a cached image)
                _, warm = await api.call("POST", "/v1/servers?wait=true", {
                    "name": "warm", "flavor": "tiny", "image": "guest", "config_drive": config_drive})
                await api.call("DELETE", f"/v1/servers/{warm['id']}?wait=true")
                spawn_times.clear()
                cached, cached_fmt = await manager.cached_image(image["id"])
                conn = libvirt.open("qemu:///system")
                try:
                    for i in range(n):
                        # (a) hvd
                        started = time.perf_counter()
                        status, body = await api.call("POST", "/v1/servers?wait=true", {
                            "name": f"b{i}", "flavor": "tiny", "image": "guest", "config_drive": config_drive})
                        hvd_times.append(time.perf_counter() - started)
                        assert status == 202 and body["status"] == "ACTIVE", body
                        inst = await services.extra["compute"].instance(body["id"])
                        spec = await manager.spec_of(inst)
                        await api.call("DELETE", f"/v1/servers/{body['id']}?wait=true")
                        # (b) the same overlay and XML straight through libvirt
                        bid = str(uuid.uuid4())
                        # the baseline never builds a config drive: with --config-drive, (a) pays for it
                        bspec = replace(spec, uuid=bid, instance_id=0x7B000000 + i,
                                        instance_dir=base / "baseline" / bid, config_drive=None)
                        xml = domain_xml(bspec, "qemu")
                        started = time.perf_counter()
                        bspec.instance_dir.mkdir(parents=True)
                        size = inst["flavor"]["disk_gb"] * 2**30
                        await qemu_img.create_overlay(cached, bspec.instance_dir / DISK, size, cached_fmt)
                        loop = asyncio.get_running_loop()
                        dom = await loop.run_in_executor(None, conn.defineXML, xml)
                        await loop.run_in_executor(None, dom.create)
                        base_times.append(time.perf_counter() - started)
                        await loop.run_in_executor(None, dom.destroy)
                        await loop.run_in_executor(None, dom.undefine)
                        shutil.rmtree(bspec.instance_dir, ignore_errors=True)
                finally:
                    conn.close()
            await server.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    overhead = [h - s for h, s in zip(hvd_times, spawn_times, strict=False)]
    print(f"creates: {n} sequential, cached image, TCG, config_drive={config_drive}")
    for label, values in (("(a) hvd API POST→ACTIVE", hvd_times), ("(b) libvirt overlay+XML", base_times)):
        print(f"{label:25} p50 {pct(values, .5) * 1000:7.1f} ms  p90 {pct(values, .9) * 1000:7.1f} ms")
    p50 = pct(hvd_times, .5) / pct(base_times, .5)
    p90 = pct(hvd_times, .9) / pct(base_times, .9)
    print(f"ratio a/b p50 {p50:.2f}  p90 {p90:.2f}  (target ≤ 1.15)")
    print(f"hvd's own overhead (total − driver.spawn): p50 {statistics.median(overhead) * 1000:.1f} ms"
          f"  p90 {pct(overhead, .9) * 1000:.1f} ms  (target p50 ≤ 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=15)
    parser.add_argument("--config-drive", action="store_true", help="hvd builds a config drive (default: off)")
    args = parser.parse_args()
    asyncio.run(run(args.n, args.config_drive))


if __name__ == "__main__":
    main()
