"""The multi-host lab itself (tests/lab/cluster.py): three hosts, each with its own hvd daemon and
libvirtd, one Raft cluster; a real guest live-migrates between two hosts' libvirtds with storage
copy; VXLAN across the underlay, by hand and through hvd's own networks (per-host namespaces);
an API create lands on the host that received it; a killed daemon restarts, an isolated host
comes back; teardown (also of a killed run) leaves nothing behind."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest.helpers import domain_xml, guest_image_path, wait_for_console
from tests.lab.cluster import (
    INSTANCES_PATH,
    REPO,
    LabCluster,
    cgroup_pids,
    cgroup_root,
    clean_stale_labs,
    lab_available,
    lab_name,
    labs_lock,
    leftovers,
    netns_names,
    pid_alive,
    spare_cidr,
    wait_gone,
)
from tests.lab.lab_system import http_session

GUEST = "lab-mig"
CONSOLE = f"/var/lib/libvirt/hvd-lab-console/{GUEST}.log"  # the same path on both hosts, each its own


@pytest.fixture(scope="module")
def lab() -> Iterator[LabCluster]:
    """Three hosts; a guest starts booting on h1 (virsh) while the hvd daemons start."""
    if reason := lab_available():
        pytest.skip(reason)
    # the periodic converge is left long (300 s), so DHCP across hosts proves that every host
    # converges when the catalog changes (a new port's host joins the flood lists at once)
    with LabCluster(hosts=3, start_daemons=False, config={"network": {"converge_interval_s": 300.0}}) as cluster:
        boot_guest(cluster)
        cluster.start_all_daemons()
        yield cluster


def boot_guest(lab: LabCluster) -> None:
    """Define and start the test guest on h1 with virsh, its console in CONSOLE on h1 (and, once
    migrated, on h2)."""
    disk = f"/var/lib/libvirt/images/{GUEST}.qcow2"
    for host in ("h1", "h2"):
        lab.host(host).path(CONSOLE).parent.mkdir(mode=0o755)
    shutil.copyfile(guest_image_path("main"), lab.host("h1").path(disk))
    xml_path = lab.dir / f"{GUEST}.xml"
    xml_path.write_text(domain_xml(GUEST, disk, memory_mib=128, console_log=CONSOLE))
    lab.virsh("h1", "define", str(xml_path))
    lab.virsh("h1", "start", GUEST)


pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(240)]


def test_every_daemon_answers_and_the_cluster_has_three_members_and_one_leader(lab: LabCluster) -> None:
    leaders = set()
    for name in lab.hosts:
        health = lab.health(name)
        assert health is not None and health["host"] == name, health
        leaders.add(health["leader"])
        r = lab.call(name, "GET", "/v1/cluster")
        assert r.status_code == 200, r.text
        members = r.json()["members"]
        assert sorted(m["id"] for m in members) == ["h1", "h2", "h3"]
        assert [m["id"] for m in members if m["leader"]] == [health["leader"]]
        assert {m["address"] for m in members} == {h.url for h in lab.hosts.values()}
    assert len(leaders) == 1
    # HTTPS under the lab's cluster CA; the peers talk mutual TLS, a client without a host certificate
    # gets no peer route
    session = http_session()
    session.verify = str(lab.ca_file)
    r = session.get(lab.url("h1") + "/internal/v1/cluster/status", timeout=5)
    assert r.status_code == 401 and "client certificate" in r.text, r.text


def test_each_host_runs_its_own_libvirtd(lab: LabCluster) -> None:
    uuids = {}
    for name, host in lab.hosts.items():
        caps = ET.fromstring(lab.virsh(name, "capabilities").stdout)
        uuids[name] = caps.findtext("host/uuid")
        assert uuids[name] == host.host_uuid
        assert lab.virsh(name, "hostname").stdout.strip() == name
        assert lab.exec(name, ["hostname"]).stdout.strip() == name
        # its TCP listener (p2p migration) is on the host's own address only
        assert lab.exec(name, ["virsh", "-c", host.migration_uri, "uri"], check=True).stdout.strip() \
            == host.migration_uri
    assert len(set(uuids.values())) == 3


def test_vxlan_between_two_hosts_carries_a_ping(lab: LabCluster) -> None:
    """A bridge and VXLAN 42 on h1 and h2 (head-end replication over the underlay), a namespace
    standing for a VM on each bridge: they ping each other with 1500-byte payloads (the underlay's
    MTU 1600 leaves VXLAN 1550)."""
    net = spare_cidr(lab.index).rsplit(".", 1)[0]
    ends = {"h1": "h2", "h2": "h1"}
    for k, (name, peer) in enumerate(ends.items(), start=1):
        host, other = lab.host(name), lab.host(peer)
        for argv in (
            ["ip", "link", "add", "labbr", "type", "bridge"],
            ["ip", "link", "add", "labvx42", "type", "vxlan", "id", "42", "local", host.ip, "dev", "ul0",
             "dstport", "4789"],
            ["ip", "link", "set", "labvx42", "master", "labbr", "up"],
            ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "labvx42", "dst", other.ip],
            ["ip", "link", "set", "labbr", "up"],
        ):
            lab.exec(name, argv, check=True)
        vm = f"{lab.prefix}vm{k}"
        subprocess.run(["ip", "netns", "add", vm], check=True)
        subprocess.run(["ip", "-n", host.netns, "link", "add", "labtap", "type", "veth", "peer", "name", "eth0",
                        "netns", vm], check=True)
        lab.exec(name, ["ip", "link", "set", "labtap", "mtu", "1550", "master", "labbr", "up"], check=True)
        for argv in (["addr", "add", f"{net}.{k}/24", "dev", "eth0"], ["link", "set", "eth0", "mtu", "1550", "up"],
                     ["link", "set", "lo", "up"]):
            subprocess.run(["ip", "-n", vm, *argv], check=True)
    ping = ["ip", "netns", "exec", f"{lab.prefix}vm1", "busybox", "ping", "-c", "3", "-W", "2", "-s", "1500",
            f"{net}.2"]
    result = subprocess.run(ping, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0% packet loss" in result.stdout, result.stdout


def upload_guest(lab: LabCluster, host: str) -> str:
    """The test guest uploaded as an image through `host` (its image store); returns the image id."""
    r = lab.call(host, "POST", "/v1/images", {"name": f"guest-{host}", "disk_format": "qcow2",
                                              "visibility": "public"})
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    r = lab.call(host, "PUT", f"/v1/images/{image_id}/file", data=guest_image_path("main").read_bytes(),
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    return image_id


def create_on(lab: LabCluster, host: str, name: str, image_id: str, **fields: object) -> dict[str, Any]:
    """A server created through `host` and forced onto it (true of today's local placement and of
    leader placement alike); returns it once ACTIVE."""
    r = lab.call(host, "POST", "/v1/flavors", {"name": "lab.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1})
    assert r.status_code in (201, 409), r.text
    body = {"name": name, "flavor": "lab.tiny", "image": image_id, "availability_zone": f"nova:{host}", **fields}
    r = lab.call(host, "POST", "/v1/servers?wait=true", body, timeout=180)
    assert r.status_code == 202, r.text
    server: dict[str, Any] = r.json()
    assert server["status"] == "ACTIVE" and server["host"] == host, server
    return server


def test_an_api_create_reaches_active_on_the_host_that_received_it(lab: LabCluster) -> None:
    server = create_on(lab, "h3", "on-h3", upload_guest(lab, "h3"), networks="none")
    assert lab.virsh("h3", "domstate", server["id"]).stdout.strip() == "running"
    for other in ("h1", "h2"):
        assert lab.virsh(other, "domstate", server["id"], check=False).returncode != 0
    assert lab.host("h3").path(f"{INSTANCES_PATH}/{server['id']}/disk").is_file()


def test_hvd_networks_live_in_each_hosts_own_namespaces(lab: LabCluster) -> None:
    """A tenant VXLAN network with DHCP, a server on h1 and one on h2: both get a lease over hvd's
    own VXLAN across the underlay; the qdhcp- namespace is in its host's private /run/netns with
    the host's prefix, never in the root namespace's."""
    r = lab.call("h1", "POST", "/v1/networks", {"name": "labnet", "shared": True})
    assert r.status_code == 201, r.text
    net_id = r.json()["id"]
    r = lab.call("h1", "POST", "/v1/subnets", {"name": "labsub", "network": net_id, "cidr": "10.77.0.0/24"})
    assert r.status_code == 201, r.text
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both boot at once
        futures = {h: pool.submit(lambda h: create_on(lab, h, f"net-{h}", upload_guest(lab, h),
                                                      networks=[{"network": net_id}]), h) for h in ("h1", "h2")}
        servers = {h: f.result() for h, f in futures.items()}
    for host, server in servers.items():
        deadline = time.monotonic() + 90
        while not re.search(r"HVD-GUEST (lease|nolease) eth0",
                            out := lab.call(host, "GET", f"/v1/servers/{server['id']}/console-log").json()["output"]):
            assert time.monotonic() < deadline, out[-2000:]
            time.sleep(0.5)
        assert re.search(r"HVD-GUEST lease eth0 10\.77\.0\.\d+/24", out), out[-2000:]
    qdhcp = {h: [ns for ns in lab.exec(h, ["ip", "netns", "list"], check=True).stdout.split() if "qdhcp-" in ns]
             for h in lab.hosts}
    assert any(qdhcp.values()), qdhcp
    for host, names in qdhcp.items():
        assert all(ns.startswith(f"{lab.prefix.rstrip('-')}{host}-qdhcp-{net_id}") for ns in names), names
    assert not [ns for ns in netns_names() if "qdhcp-" in ns and ns.startswith(lab.prefix.rstrip("-"))]


def test_a_guest_live_migrates_p2p_with_storage_copy(lab: LabCluster) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    wait_for_console(h1.path(CONSOLE), r"HVD-GUEST ready", timeout=120)
    before = int(wait_for_console(h1.path(CONSOLE), r"HVD-GUEST heartbeat \d+", timeout=30).split()[-1])
    lab.virsh("h1", "migrate", "--live", "--p2p", "--copy-storage-all", "--persistent", "--undefinesource",
              GUEST, h2.migration_uri, timeout=180)
    assert lab.virsh("h2", "domstate", GUEST).stdout.strip() == "running"
    assert GUEST not in lab.virsh("h1", "list", "--all", "--name").stdout.split()
    assert h2.path(f"/var/lib/libvirt/images/{GUEST}.qcow2").is_file()  # the disk was copied
    # the same boot goes on at the destination: heartbeats continue, no new boot
    line = wait_for_console(h2.path(CONSOLE), r"HVD-GUEST heartbeat \d+", timeout=60)
    assert int(line.split()[-1]) > before
    assert "HVD-GUEST boot" not in h2.path(CONSOLE).read_text(errors="replace")


def test_daemon_kill_restart_and_host_isolation(lab: LabCluster) -> None:
    leader = lab.leader()
    pid = lab.daemon_pid(leader)
    assert pid is not None
    assert lab.kill_daemon(leader, signal.SIGKILL) == -signal.SIGKILL
    assert not pid_alive(pid) and lab.daemon_pid(leader) is None
    survivors = [n for n in lab.hosts if n != leader]
    new_leader = lab.wait_ready(survivors, timeout=60)
    assert new_leader in survivors
    lab.restart_daemon(leader)
    assert lab.wait_ready() in lab.hosts

    # an isolated host drops off the underlay (no answer even to the root namespace) and comes back
    lab.isolate(leader)
    assert lab.health(leader) is None
    lab.rejoin(leader)
    assert lab.wait_ready() in lab.hosts
    members = lab.call(leader, "GET", "/v1/cluster").json()["members"]
    assert sorted(m["id"] for m in members) == ["h1", "h2", "h3"]


def test_a_killed_run_is_cleaned_by_the_next_start() -> None:
    """A `make lab` owner killed with SIGKILL leaves its hosts running; the next lab start (here
    its stale-lab cleanup) removes all of it."""
    serve = subprocess.Popen([sys.executable, "-m", "tests.lab.lab_cli", "serve", "--hosts", "1"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert serve.stdout is not None
    line = serve.stdout.readline().strip()
    if not line.startswith("READY"):
        serve.kill()
        pytest.fail(f"lab did not start: {line} {serve.stderr.read() if serve.stderr else ''}")
    index = int(line.split()[1])
    pids = cgroup_pids(cgroup_root() / f"{lab_name(index)}-h1")
    assert len([p for p in pids if pid_alive(p)]) >= 4  # holder, virtlogd, libvirtd, hvd
    serve.kill()
    serve.wait(10)
    with labs_lock():  # under the lock: no other lab start cleans it first
        assert leftovers(index), "the killed owner must leave its lab behind for this test to mean anything"
        assert index in clean_stale_labs()
    assert wait_gone(pids) == []
    assert leftovers(index) == []


def test_teardown_leaves_nothing_behind(lab: LabCluster) -> None:
    pids = [p for host_pids in lab.pids().values() for p in host_pids]
    assert any(re.search(rb"qemu-system", Path(f"/proc/{p}/cmdline").read_bytes()) for p in pids)
    lab.stop()
    assert wait_gone(pids) == []
    assert leftovers(lab.index) == []
