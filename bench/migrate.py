"""Benchmark: moves between hosts on a 3-host lab (real libvirt under TCG), not a test.

(a) live migration: hvd's POST /v1/servers/{id}/live-migrate?wait=true (API, placement, destination
    prepare, libvirt p2p with incremental storage copy, catalog switch) against plain
    `virsh migrate --live --p2p --copy-storage-inc --persistent --undefinesource` of an equivalent
    guest (a qcow2 overlay on a base both hosts hold, 128 MiB RAM), alternating, N rounds each way;
    prints medians and the ratio hvd / virsh;
(b) evacuation: a host cut off the underlay until its server is ACTIVE elsewhere, with automatic
    evacuation (fence_delay_s + the rebuild); median of M trials, against the configured fence delay.
Lost pings during a live migration are not measured here (the guests have no network in this bench).

    python3 bench/migrate.py [-n 5] [--evacuations 3] [--fence-delay 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.guest.helpers import domain_xml, guest_image_path  # noqa: E402
from tests.lab.cluster import LabCluster, lab_available  # noqa: E402
from tests.lab.test_cluster_compute import create, state, upload  # noqa: E402


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def live_round_trips(lab: LabCluster, image: str, n: int) -> None:
    [server] = create(lab, "h3", "bench-live", image, availability_zone="nova:h1")
    sid = server["id"]
    # the baseline guest: an overlay on the same base at the same path on both hosts
    base = "/var/lib/libvirt/images/bench-base.qcow2"
    disk = "/var/lib/libvirt/images/bench-raw.qcow2"
    for host in ("h1", "h2"):
        lab.host(host).path(base).write_bytes(guest_image_path("main").read_bytes())
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(lab.host("h1").path(base)), "-F", "qcow2",
                    str(lab.host("h1").path(disk))], check=True)
    # the overlay names its base by the root-namespace path: rebase it to the in-host path
    subprocess.run(["qemu-img", "rebase", "-u", "-b", base, "-F", "qcow2", str(lab.host("h1").path(disk))], check=True)
    for host in ("h1", "h2"):
        lab.host(host).path("/var/lib/libvirt/bench-console").mkdir(mode=0o755, exist_ok=True)
    xml = lab.dir / "bench-raw.xml"
    xml.write_text(domain_xml("bench-raw", disk, memory_mib=128, console_log="/var/lib/libvirt/bench-console/log"))
    lab.virsh("h1", "define", str(xml))
    lab.virsh("h1", "start", "bench-raw")
    time.sleep(8)  # both guests boot before the first move
    hvd_times: list[float] = []
    raw_times: list[float] = []
    where = {"hvd": "h1", "raw": "h1"}
    for _ in range(n):
        dest = "h2" if where["hvd"] == "h1" else "h1"

        def hvd_move(dest: str = dest) -> None:
            r = lab.call("h3", "POST", f"/v1/servers/{sid}/live-migrate?wait=true", {"host": dest}, timeout=600)
            assert r.status_code == 202 and r.json()["host"] == dest, r.text

        hvd_times.append(timed(hvd_move))
        where["hvd"] = dest
        src, dest = where["raw"], ("h2" if where["raw"] == "h1" else "h1")
        uri = lab.host(dest).migration_uri

        def raw_move(src: str = src, dest: str = dest, uri: str = uri) -> None:
            # incremental storage copy needs the target overlay in place (libvirt cannot pre-create it):
            # a fresh one, as hvd's destination prepares it (inside hvd's time too)
            target = lab.host(dest).path(disk)
            target.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", "-u", str(target),
                            "40M"], check=True)  # the base's virtual size
            lab.virsh(src, "migrate", "--live", "--p2p", "--copy-storage-inc", "--persistent", "--undefinesource",
                      "bench-raw", uri, timeout=600)

        raw_times.append(timed(raw_move))
        where["raw"] = dest
    h, r = statistics.median(hvd_times), statistics.median(raw_times)
    print(f"  live migration (128 MiB guest, incremental storage copy), {n} moves each:")
    print(f"    hvd API   median {h:6.2f} s  (all: {', '.join(f'{t:.2f}' for t in hvd_times)})")
    print(f"    virsh     median {r:6.2f} s  (all: {', '.join(f'{t:.2f}' for t in raw_times)})")
    print(f"    ratio hvd / virsh: {h / r:.2f}  (target <= 1.2)")
    lab.call("h1", "DELETE", f"/v1/servers/{sid}?wait=true", timeout=300)
    lab.virsh(where["raw"], "destroy", "bench-raw", check=False)
    lab.virsh(where["raw"], "undefine", "bench-raw", check=False)


def evacuations(lab: LabCluster, image: str, trials: int, delay: float) -> None:
    times: list[float] = []
    for k in range(trials):
        leader = lab.leader()
        victim = next(h for h in ("h1", "h2", "h3") if h != leader)
        [server] = create(lab, leader, f"bench-evac-{k}", image, availability_zone=f"nova:{victim}")
        sid = server["id"]
        start = time.perf_counter()
        lab.isolate(victim)
        try:
            while True:
                row = lab.call(leader, "GET", f"/v1/servers/{sid}").json()
                if row["task_state"] is None and row["host"] not in (None, victim) and row["status"] == "ACTIVE":
                    break
                time.sleep(0.25)
            times.append(time.perf_counter() - start)
        finally:
            lab.rejoin(victim)
        while state(lab, victim, sid) != "absent":
            time.sleep(0.5)
        lab.call(leader, "DELETE", f"/v1/servers/{sid}?wait=true", timeout=300)
        time.sleep(3)  # the returned host lifts its fence
    print(f"  evacuation, cut-off host -> ACTIVE elsewhere, {trials} trials (fence_delay_s {delay:.0f}):")
    print(f"    median {statistics.median(times):6.2f} s  (all: {', '.join(f'{t:.1f}' for t in times)});"
          f" over the fence delay: {statistics.median(times) - delay:.1f} s (target <= 15 s + boot)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--evacuations", type=int, default=3)
    parser.add_argument("--fence-delay", type=float, default=10.0)
    args = parser.parse_args()
    if reason := lab_available():
        sys.exit(f"cannot run the lab: {reason}")
    fencing = {"fence_delay_s": args.fence_delay, "self_fence_s": args.fence_delay / 2, "auto_evacuate": True}
    with LabCluster(hosts=3, config={"fencing": fencing}) as lab:
        r = lab.call("h1", "POST", "/v1/flavors", {"name": "c.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1})
        assert r.status_code == 201, r.text
        image = upload(lab, "h1", "guest")
        print("moves on a 3-host lab (TCG)")
        live_round_trips(lab, image, args.n)
        evacuations(lab, image, args.evacuations, args.fence_delay)


if __name__ == "__main__":
    main()
