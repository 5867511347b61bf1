"""Crash repair of volume attachments on real libvirt: the daemon exits hard (HVD_CRASH_AT) before
the hypervisor attach, after it, and in the middle of a detach; after each restart the attachment is
rolled back or finished from the domain's definition, the volume's status agrees with it, and the
running guest is untouched. One guest, one volume, four daemon runs."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from tests.conftest import DaemonProcess, free_port, start_daemon
from tests.guest.helpers import make_searchable_dir, wait_for_console
from tests.lab.test_crash_repair import Client, prepare, wait_exit

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


@pytest.fixture
def lab() -> Iterator[dict[str, Any]]:
    base = make_searchable_dir(prefix="hvdtest-volcrash-")
    (base / "volumes").mkdir(mode=0o755)
    port = free_port()
    procs: list[DaemonProcess] = []
    extra = ("shutdown_timeout_s = 10\n"
             f"[[volumes.backends]]\nname = \"file\"\ndriver = \"file\"\npath = \"{base / 'volumes'}\"\n")

    def start(crash_at: str | None = None) -> Client:
        d = start_daemon(base, driver="libvirt", env={"HVD_CRASH_AT": crash_at} if crash_at else {}, port=port,
                         extra=extra)
        procs.append(d)
        client = Client(d.url)
        client.login()
        return client

    try:
        yield {"base": base, "start": start, "procs": procs}
    finally:
        try:
            c = start()
            _, servers = c.call("GET", "/v1/servers?all_projects=true")
            for s in servers["servers"]:
                c.call("DELETE", f"/v1/servers/{s['id']}?wait=true")
            _, vols = c.call("GET", "/v1/volumes?all_projects=true")
            for v in vols["volumes"]:
                c.call("DELETE", f"/v1/volumes/{v['id']}?wait=true")
        finally:
            for d in procs:
                d.stop()
            shutil.rmtree(base, ignore_errors=True)


def domain_serials(sid: str) -> set[str]:
    """Serials of the disks in the domain's persistent and live definitions (both must agree)."""
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(sid)
        found = []
        for flags in (libvirt.VIR_DOMAIN_XML_INACTIVE, 0):
            root = ET.fromstring(dom.XMLDesc(flags))
            found.append({d.findtext("serial") for d in root.iterfind("devices/disk") if d.findtext("serial")})
        assert found[0] == found[1], found
        return set(found[0])
    finally:
        conn.close()


def state(c: Client, sid: str, vid: str) -> tuple[str, list[tuple[str, str | None]]]:
    _, vol = c.call("GET", f"/v1/volumes/{vid}")
    _, atts = c.call("GET", f"/v1/servers/{sid}/volume-attachments")
    return vol["status"], [(a["status"], a["error"]) for a in atts["volume_attachments"]]


def crash(lab: dict[str, Any], step: str, method: str, path: str, body: Any = None) -> Client:
    """Restart the daemon set to exit at ``step``, make the request, and start it again normally."""
    lab["procs"][-1].stop()
    c = lab["start"](step)
    with contextlib.suppress(OSError, http.client.HTTPException):  # the daemon dies inside the request
        c.call(method, path, body)
    assert wait_exit(lab["procs"][-1]) == 99
    return lab["start"]()


def test_crash_in_attach_and_detach_is_repaired_from_the_domain(lab: dict[str, Any]) -> None:
    c = lab["start"]()
    prepare(c)
    _, server = c.call("POST", "/v1/servers?wait=true", {"name": "victim", "flavor": "tiny", "image": "guest"})
    assert server["status"] == "ACTIVE", server
    sid = server["id"]
    status, vol = c.call("POST", "/v1/volumes?wait=true", {"name": "v", "size_gb": 1})
    assert status == 202 and vol["status"] == "available", vol
    vid = vol["id"]
    wait_for_console(lab["base"] / "instances" / sid / "console.log", r"HVD-GUEST ready", timeout=120)
    attach = f"/v1/servers/{sid}/volume-attachments"

    # before the hypervisor attach: rolled back
    c = crash(lab, "volume_attach.attaching", "POST", attach, {"volume": vid})
    assert state(c, sid, vid) == ("available", []) and domain_serials(sid) == set()
    # after it: finished, with the device libvirt gave it
    c = crash(lab, "volume_attach.attached", "POST", attach, {"volume": vid})
    assert state(c, sid, vid) == ("in-use", [("attached", None)]) and domain_serials(sid) == {vid[:20]}
    _, listed = c.call("GET", attach)
    assert listed["volume_attachments"][0]["device"].startswith("/dev/vd")
    # in the middle of a detach (the guest not asked yet): still attached, the reason recorded
    c = crash(lab, "volume_detach.detaching", "DELETE", f"{attach}/{vid}")
    status, atts = state(c, sid, vid)
    assert status == "in-use" and atts[0][0] == "attached" and "restart" in (atts[0][1] or ""), atts
    assert domain_serials(sid) == {vid[:20]}
    # and a detach now works; the guest ran through all of it
    status, body = c.call("DELETE", f"{attach}/{vid}")
    assert status == 204, body
    assert state(c, sid, vid) == ("available", []) and domain_serials(sid) == set()
    _, again = c.call("GET", f"/v1/servers/{sid}")
    assert again["status"] == "ACTIVE" and again["power_state"] == 1
