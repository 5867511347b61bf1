"""A volume used across hosts in the multi-host lab (two hosts, real libvirt under TCG): the volume
lives on one host, the server runs on the other and reaches it over NBD (a libvirt network disk to
the volume host's qemu-storage-daemon); the guest sees it and marks it; a cold migration to the
volume's host boots the server there opening the volume directly (the export stops), whose guest
finds the mark; reverted, the server boots on its first host over NBD again (the volume's host
exports it again) and finds the mark; after a detach the export is gone
(no orphan process, no record) and the mark is in the volume's file on its host. The export is NBD
over TLS with the lab's cluster CA (the disk says tls='yes'): a client on the lab network without a
cluster certificate, or with another CA's, is refused. A server on the volume's own host (which
opens the file directly) live-migrates to the other host: the volume's host exports it, the
destination's definition gets the network disk, and the guest reads its mark and goes on writing;
a cold migration takes such a volume along as well. Shelved (the export stops) and unshelved on the
volume's host it opens the volume directly, unshelved on the other host it reaches it over NBD
again, and its guest reads the mark each time."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hvd.cluster.tls import TlsFiles, create_ca, issue_host
from tests.lab.cluster import LabCluster, lab_available
from tests.lab.test_cluster_compute import upload
from tests.lab.test_volumes_libvirt import VOLUME_SCRIPT

VOLUMES_DIR = "/var/lib/libvirt/hvd-volumes"  # each lab host's own /var/lib/libvirt


@pytest.fixture(scope="module")
def lab() -> Iterator[LabCluster]:
    if reason := lab_available():
        pytest.skip(reason)
    backend = {"backends": [{"name": "file", "driver": "file", "path": VOLUMES_DIR}]}
    with LabCluster(hosts=2, config={"volumes": backend}) as cluster:
        yield cluster


def ok(lab: LabCluster, host: str, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    r = lab.call(host, method, path, body, timeout=600)
    assert r.status_code == status, (method, path, r.status_code, r.text)
    return r.json() if r.content else None


def wait_console(lab: LabCluster, sid: str, needle: str, after: int = 0, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = str(ok(lab, "h1", "GET", f"/v1/servers/{sid}/console-log")["output"])
        if needle in text[after:]:
            return text
        assert time.monotonic() < deadline, f"no {needle!r} on the console:\n{text[-2000:]}"
        time.sleep(1)


def assert_only_members_reach(lab: LabCluster, vid: str, vol_host: str, client: str, xml: str, port: int) -> None:
    """The export is TLS with a client certificate required: the guest's disk uses TLS, and clients
    inside the lab (the server's host namespace, never the root one) without a cluster
    certificate, with another CA's, or with a cluster certificate of a member the volume is not
    exported to, are refused by the export."""
    assert "tls='yes'" in xml, xml
    pid = int(lab.host(vol_host).data_dir.joinpath("nbd", f"{vid}.pid").read_text())
    assert "endpoint=server,verify-peer=on" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    now = dt.datetime.now(dt.UTC)
    stranger_ca, stranger_key = create_ca("stranger", now)
    cert, key = issue_host(stranger_ca, stranger_key, "intruder", ["intruder"], now)
    creds = lab.host(client).root / "intruder-x509"
    creds.mkdir(exist_ok=True)
    for name, data in (("ca-cert.pem", lab.ca_file.read_bytes()), ("client-cert.pem", cert), ("client-key.pem", key)):
        (creds / name).write_bytes(data)
    ca_key = TlsFiles.under(lab.host("h1").data_dir / "tls").ca_key.read_bytes()  # h1 keeps the CA key
    member_cert, member_key = issue_host(lab.ca_file.read_bytes(), ca_key, "h9", ["h9"], now)
    member = lab.host(client).root / "member-x509"
    member.mkdir(exist_ok=True)
    for name, data in (("ca-cert.pem", lab.ca_file.read_bytes()), ("client-cert.pem", member_cert),
                       ("client-key.pem", member_key)):
        (member / name).write_bytes(data)
    target = f"driver=nbd,host={lab.host(vol_host).ip},port={port},export=volume-{vid}"
    attempts = {
        "plain NBD": ["qemu-img", "info", f"nbd://{lab.host(vol_host).ip}:{port}/volume-{vid}"],
        "another CA": ["qemu-img", "info", "--object", f"tls-creds-x509,id=c,dir={creds},endpoint=client,"
                       "sanity-check=off", "--image-opts", f"{target},tls-creds=c"],
        "a member it is not exported to": ["qemu-img", "info", "--object", f"tls-creds-x509,id=c,dir={member},"
                                           "endpoint=client", "--image-opts", f"{target},tls-creds=c"],
    }
    results = {why: lab.exec(client, argv, timeout=30) for why, argv in attempts.items()}
    for why, r in results.items():
        assert r.returncode != 0 and "virtual size" not in r.stdout, (why, r.stdout, r.stderr)
    assert "TLS negotiation required" in results["plain NBD"].stderr


def assert_no_export(lab: LabCluster, vol_host: str, vid: str) -> None:
    """No export of the volume is left on its host: no record, no qemu-storage-daemon."""
    assert list(lab.host(vol_host).data_dir.joinpath("nbd").iterdir()) == []
    procs = lab.exec(vol_host, ["pgrep", "-f", f"qemu-storage-daemon.*volume-{vid}"]).stdout.split()
    assert procs == [], procs


def assert_opened_directly(lab: LabCluster, vol_host: str, sid: str, vid: str) -> None:
    """The server on the volume's host opens its file (no network disk) and no export is left."""
    xml = lab.virsh(vol_host, "dumpxml", sid).stdout
    assert f"{VOLUMES_DIR}/volume-{vid}" in xml and "protocol='nbd'" not in xml, xml
    assert_no_export(lab, vol_host, vid)


def test_a_volume_of_one_host_used_on_another_and_cold_migrated_to_its_host(lab: LabCluster) -> None:
    ok(lab, "h1", "POST", "/v1/flavors", {"name": "v.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}, 201)
    image = upload(lab, "h1", "guest")
    volume = ok(lab, "h1", "POST", "/v1/volumes?wait=true", {"name": "shared-data", "size_gb": 1}, 202)
    assert volume["status"] == "available", volume
    vid, vol_host = volume["id"], volume["host"].split("@")[0]
    srv_host = "h2" if vol_host == "h1" else "h1"
    server = ok(lab, "h1", "POST", "/v1/servers?wait=true",
                {"name": "nbd-user", "flavor": "v.tiny", "image": image, "networks": "none",
                 "user_data": VOLUME_SCRIPT, "availability_zone": f"nova:{srv_host}"}, 202)
    sid = server["id"]
    assert server["status"] == "ACTIVE" and server["host"] == srv_host, server
    wait_console(lab, sid, "HVD-GUEST ready")

    att = ok(lab, srv_host, "POST", f"/v1/servers/{sid}/volume-attachments", {"volume": vid}, 201)
    assert att["status"] == "attached", att
    xml = lab.virsh(srv_host, "dumpxml", sid).stdout
    assert "protocol='nbd'" in xml and f"name='volume-{vid}'" in xml, xml  # a network disk to the volume host
    records = list(lab.host(vol_host).data_dir.joinpath("nbd").glob("*.json"))
    assert [r.stem for r in records] == [vid] and json.loads(records[0].read_text())["clients"] == [srv_host]
    assert_only_members_reach(lab, vid, vol_host, srv_host, xml, json.loads(records[0].read_text())["port"])
    wait_console(lab, sid, f"serial={vid[:20]} bytes={1 << 30} mark=none")
    wait_console(lab, sid, f"HVD-VOL written {vid[:20]}")

    # cold migration to the volume's own host: the server boots there opening the volume directly,
    # the export stops, and its guest finds the mark written before the move
    moved = ok(lab, "h1", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": vol_host}, 202)
    assert moved["status"] == "VERIFY_RESIZE" and moved["host"] == vol_host, moved
    assert_opened_directly(lab, vol_host, sid, vid)
    wait_console(lab, sid, f"serial={vid[:20]} bytes={1 << 30} mark=HVDMARK-nbd-user")

    # reverted, it boots its kept copy on its first host, and the volume's host exports it again
    moved = ok(lab, "h1", "POST", f"/v1/servers/{sid}/revert-resize?wait=true", {}, 202)
    assert moved["status"] == "ACTIVE" and moved["host"] == srv_host, moved
    xml = lab.virsh(srv_host, "dumpxml", sid).stdout
    assert "protocol='nbd'" in xml and f"name='volume-{vid}'" in xml, xml
    listed = ok(lab, "h1", "GET", f"/v1/servers/{sid}/volume-attachments")["volume_attachments"]
    assert [(a["volume_id"], a["status"]) for a in listed] == [(vid, "attached")]
    wait_console(lab, sid, f"serial={vid[:20]} bytes={1 << 30} mark=HVDMARK-nbd-user")

    # detach: the guest lets go, the export stops (no process, no record)
    at = len(ok(lab, "h1", "GET", f"/v1/servers/{sid}/console-log")["output"])
    ok(lab, "h1", "DELETE", f"/v1/servers/{sid}/volume-attachments/{vid}", status=204)
    wait_console(lab, sid, "HVD-VOL gone", after=at)
    assert_no_export(lab, vol_host, vid)
    # the guest's write went through NBD into the volume's file on its own host
    with lab.host(vol_host).path(f"{VOLUMES_DIR}/volume-{vid}").open("rb") as f:
        assert f.read(16) == b"HVDMARK-nbd-user"
    assert ok(lab, "h1", "GET", f"/v1/volumes/{vid}")["status"] == "available"
    ok(lab, "h1", "DELETE", f"/v1/servers/{sid}?wait=true", status=204)


# the guest drops its page cache before each read (so a read really goes to the volume), keeps the
# first mark in sector 0 and writes a new tick into sector 1 every round
TICK_SCRIPT = r"""#!/bin/sh
n=0
while :; do
  for d in /sys/block/vd*; do
    b=${d##*/}
    [ "$b" = vda ] && continue
    [ -n "$(cat "$d/serial" 2>/dev/null)" ] || continue
    sync; echo 3 > /proc/sys/vm/drop_caches
    m=$(dd if=/dev/$b bs=512 count=1 2>/dev/null | tr -cd 'A-Za-z0-9_-' | head -c 40)
    if [ -z "$m" ]; then
      echo "HVDMARK-first" | dd of=/dev/$b bs=512 count=1 conv=sync 2>/dev/null && sync && m=new
    fi
    n=$((n + 1))
    echo "HVDTICK-$n" | dd of=/dev/$b bs=512 seek=1 count=1 conv=sync 2>/dev/null && sync \
      && echo "HVD-TICK mark=$m tick=$n"
  done
  sleep 1
done
"""


def test_a_server_on_its_volume_host_live_migrates_away_with_it(lab: LabCluster) -> None:
    ok(lab, "h1", "POST", "/v1/flavors", {"name": "v.move", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}, 201)
    image = upload(lab, "h1", "guest-move")
    volume = ok(lab, "h1", "POST", "/v1/volumes?wait=true", {"name": "moving-data", "size_gb": 1}, 202)
    vid, vol_host = volume["id"], volume["host"].split("@")[0]
    other = "h2" if vol_host == "h1" else "h1"
    server = ok(lab, "h1", "POST", "/v1/servers?wait=true",
                {"name": "mover", "flavor": "v.move", "image": image, "networks": "none",
                 "user_data": TICK_SCRIPT, "availability_zone": f"nova:{vol_host}"}, 202)
    sid = server["id"]
    assert server["status"] == "ACTIVE" and server["host"] == vol_host, server
    wait_console(lab, sid, "HVD-GUEST ready")
    ok(lab, vol_host, "POST", f"/v1/servers/{sid}/volume-attachments", {"volume": vid}, 201)
    xml = lab.virsh(vol_host, "dumpxml", sid).stdout
    assert f"{VOLUMES_DIR}/volume-{vid}" in xml and "protocol='nbd'" not in xml, xml  # opened directly
    wait_console(lab, sid, "HVD-TICK mark=HVDMARK-first tick=")  # the mark is on the volume

    moved = ok(lab, "h1", "POST", f"/v1/servers/{sid}/live-migrate?wait=true",
               {"host": other, "block_migration": True}, 202)
    assert moved["status"] == "ACTIVE" and moved["host"] == other, moved
    xml = lab.virsh(other, "dumpxml", sid).stdout
    assert "protocol='nbd'" in xml and f"name='volume-{vid}'" in xml, xml  # a network disk to the volume host
    att = ok(lab, "h1", "GET", f"/v1/servers/{sid}/volume-attachments")["volume_attachments"]
    assert [(a["volume_id"], a["status"]) for a in att] == [(vid, "attached")], att
    # the destination's console starts empty: these lines were read and written after the move
    text = wait_console(lab, sid, "HVD-TICK mark=HVDMARK-first")
    last = int(text.rsplit("tick=", 1)[1].split()[0])
    with lab.host(vol_host).path(f"{VOLUMES_DIR}/volume-{vid}").open("rb") as f:
        data = f.read(1024)
    assert data.startswith(b"HVDMARK-first") and data[512:].startswith(b"HVDTICK-"), data[:600]
    assert int(data[520:].split(b"\n")[0]) >= last  # the guest's writes reach the file on its host

    # back on the volume's host by live migration it keeps the network disk (see docs/operations.md);
    # attached again, it opens the file directly, and a cold migration takes the volume along too
    ok(lab, "h1", "POST", f"/v1/servers/{sid}/live-migrate?wait=true", {"host": vol_host, "block_migration": True},
       202)
    assert "protocol='nbd'" in lab.virsh(vol_host, "dumpxml", sid).stdout
    att = ok(lab, "h1", "GET", f"/v1/servers/{sid}/volume-attachments")["volume_attachments"]
    assert [(a["volume_id"], a["host"]) for a in att] == [(vid, vol_host)], att  # the NBD attachment followed
    ok(lab, "h1", "DELETE", f"/v1/servers/{sid}/volume-attachments/{vid}", status=204)
    ok(lab, vol_host, "POST", f"/v1/servers/{sid}/volume-attachments", {"volume": vid}, 201)
    assert_opened_directly(lab, vol_host, sid, vid)
    moved = ok(lab, "h1", "POST", f"/v1/servers/{sid}/migrate?wait=true", {"host": other}, 202)
    assert moved["status"] == "VERIFY_RESIZE" and moved["host"] == other, moved
    assert ok(lab, "h1", "POST", f"/v1/servers/{sid}/confirm-resize?wait=true", {}, 202)["status"] == "ACTIVE"
    assert "protocol='nbd'" in lab.virsh(other, "dumpxml", sid).stdout
    wait_console(lab, sid, "HVD-TICK mark=HVDMARK-first tick=2")  # the rebooted guest reads and writes it

    # shelved, the attachment stays and the export stops; unshelved on the volume's host (the other
    # host disabled) it opens the file directly; shelved so and unshelved on the other host, it
    # reaches the volume over NBD again; each time the guest reads the mark written before
    for shelved_from, lands in ((other, vol_host), (vol_host, other)):
        assert ok(lab, "h1", "POST", f"/v1/servers/{sid}/shelve?wait=true", {}, 202)["status"] == "SHELVED_OFFLOADED"
        assert_no_export(lab, vol_host, vid)
        ok(lab, "h1", "PATCH", f"/v1/hosts/{shelved_from}", {"enabled": False, "reason": "unshelve elsewhere"})
        try:
            moved = ok(lab, "h1", "POST", f"/v1/servers/{sid}/unshelve?wait=true", {}, 202)
        finally:
            ok(lab, "h1", "PATCH", f"/v1/hosts/{shelved_from}", {"enabled": True})
        assert moved["status"] == "ACTIVE" and moved["host"] == lands, moved
        if lands == vol_host:
            assert_opened_directly(lab, vol_host, sid, vid)
        else:
            xml = lab.virsh(lands, "dumpxml", sid).stdout
            assert "protocol='nbd'" in xml and f"name='volume-{vid}'" in xml, xml
        wait_console(lab, sid, "HVD-TICK mark=HVDMARK-first tick=")
    ok(lab, "h1", "DELETE", f"/v1/servers/{sid}?wait=true", status=204)
    assert_no_export(lab, vol_host, vid)
