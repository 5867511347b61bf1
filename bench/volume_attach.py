"""Volume attach/detach latency: hvd's libvirt driver against raw `virsh attach-disk` in the same run.

One TCG test guest (booted, so it acknowledges unplugs) and one raw 64 MiB volume file; each round
hot-plugs the volume and unplugs it again, alternately through hvd's driver (attach_volume /
detach_volume: live + persistent definition, detach waits for the guest to release the disk) and
through `virsh attach-disk --live --config` / `virsh detach-disk --live --config` (virsh returns
when libvirt does; the round then waits for the live XML to lose the disk too, as hvd does, so both
measure the same thing). Prints medians and the ratio hvd / virsh.

    .venv/bin/python bench/volume_attach.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hvd.drivers.base import InstanceSpec  # noqa: E402
from hvd.drivers.libvirt import guest  # noqa: E402
from hvd.drivers.libvirt.driver import LibvirtDriver  # noqa: E402
from hvd.drivers.volumes import VolumeDisk  # noqa: E402
from hvd.storage.image_cache import ImageCache  # noqa: E402
from tests.guest.helpers import guest_image_path  # noqa: E402


async def _copy(src: Path, dest: Path) -> None:
    await asyncio.to_thread(shutil.copyfile, src, dest)


async def wait_ready(driver: LibvirtDriver, uuid_: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "HVD-GUEST ready" not in await driver.console_log(uuid_):
        if time.monotonic() > deadline:
            raise SystemExit("the guest did not boot")
        await asyncio.sleep(0.2)


async def main(rounds: int) -> None:
    root = Path("/var/tmp") / f"hvd-bench-attach-{secrets.token_hex(4)}"
    (root / "instances").mkdir(parents=True)
    root.chmod(0o755)
    (root / "instances").chmod(0o755)
    volume = root / "volume-bench"
    with volume.open("wb") as f:
        f.truncate(64 << 20)
    volume.chmod(0o644)
    cache = ImageCache(root / "instances", force_raw=True)
    image = await cache.ensure_cached("hvd-guest", lambda d: _copy(guest_image_path(), d), "qcow2")
    driver = LibvirtDriver(root / "instances", "qemu:///system", "qemu")
    await driver.start()
    uid = str(uuid.uuid4())
    spec = InstanceSpec(uuid=uid, instance_id=0x7B000000 + secrets.randbelow(0xFFFF), name="bench-attach",
                        hostname="bench", vcpus=1, memory_mib=128, root_gb=1, image_id="hvd-guest",
                        image_path=image, image_format="raw", instance_dir=root / "instances" / uid)
    times: dict[str, list[float]] = {k: [] for k in ("hvd attach", "virsh attach", "hvd detach", "virsh detach")}

    def virsh(*argv: str) -> None:
        subprocess.run(["virsh", "-q", *argv], check=True, capture_output=True)

    try:
        await driver.spawn(spec)
        await wait_ready(driver, uid)
        vol = VolumeDisk("bench-volume-0000000000", "vdb", "file", path=str(volume))
        for _ in range(rounds):
            started = time.perf_counter()
            await driver.attach_volume(uid, vol)
            times["hvd attach"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await driver.detach_volume(uid, vol.volume_id, 60)
            times["hvd detach"].append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.to_thread(virsh, "attach-disk", spec.domain_name, str(volume), "vdb", "--live", "--config")
            times["virsh attach"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await asyncio.to_thread(virsh, "detach-disk", spec.domain_name, "vdb", "--live", "--config")
            while "'vdb'" in await driver.host.call(lambda c: guest.lookup(c, uid).XMLDesc(0)):
                await asyncio.sleep(0.02)
            times["virsh detach"].append(time.perf_counter() - started)
    finally:
        await driver.destroy(spec)
        await driver.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"raw 64 MiB volume on a running TCG guest, {rounds} rounds, medians (min-max):")
    for name, values in times.items():
        print(f"  {name:13s} {statistics.median(values) * 1000:8.1f} ms  ({min(values) * 1000:.1f}-"
              f"{max(values) * 1000:.1f})")
    for op in ("attach", "detach"):
        ratio = statistics.median(times[f"hvd {op}"]) / statistics.median(times[f"virsh {op}"])
        print(f"  ratio hvd/virsh {op}: {ratio:.2f}")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args().rounds))
