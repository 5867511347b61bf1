"""Volumes on REAL guests (libvirt qemu:///system, TCG, the test guest image, the hvd API over real
HTTP, the file volume backend): a hot-plugged volume is seen by the guest, which writes a mark on
it; online extend is seen by the guest; the volume is detached and attached to a second server,
which reads the first one's mark; that second server boots from a volume (image -> new volume,
delete on termination) and keeps both volumes across stop/start. Two guests, booted in parallel.

Each step is checked from inside the guest: its user-data script reports every disk that has a
serial (``HVD-VOL <dev> serial=<volume id[:20]> bytes=<size> mark=<first sector>``), marks a blank
one (``HVD-VOL written``) and says when one goes (``HVD-VOL gone``)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import Api, free_port, serve_in_process, write_config
from tests.functional.compute_helpers import action, make_flavor, upload_image
from tests.guest.helpers import guest_image_path, make_searchable_dir
from tests.lab.test_compute_libvirt import mark, wait_console

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GIB = 1 << 30
# never touches vda (the boot disk); a blank volume gets "HVDMARK-<hostname>" in its first sector
VOLUME_SCRIPT = r"""#!/bin/sh
seen=
names=
while :; do
  now=
  nownames=
  for d in /sys/block/vd*; do
    n=${d##*/}
    [ "$n" = vda ] && continue
    s=$(cat "$d/serial" 2>/dev/null)
    [ -n "$s" ] || continue
    z=$(cat "$d/size")
    now="$now $n:$s:$z"
    nownames="$nownames $n:$s"
    case " $seen " in *" $n:$s:$z "*) continue ;; esac
    m=$(dd if=/dev/$n bs=512 count=1 2>/dev/null | tr -cd 'A-Za-z0-9_-' | head -c 40)
    echo "HVD-VOL $n serial=$s bytes=$((z * 512)) mark=${m:-none}"
    if [ -z "$m" ]; then
      echo "HVDMARK-$(hostname)" | dd of=/dev/$n bs=512 count=1 conv=sync 2>/dev/null && sync \
        && echo "HVD-VOL written $s"
    fi
  done
  for old in $names; do
    case " $nownames " in *" $old "*) ;; *) echo "HVD-VOL gone ${old%%:*}" ;; esac
  done
  seen=$now
  names=$nownames
  sleep 0.5
done
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab() -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    base = make_searchable_dir(prefix="hvdtest-vol-")
    volumes = base / "volumes"
    volumes.mkdir(mode=0o755)  # libvirt-qemu opens the volume files
    extra = ("reboot_timeout_s = 20\nshutdown_timeout_s = 20\nsync_power_state_interval_s = 2\n"
             f"[[volumes.backends]]\nname = \"file\"\ndriver = \"file\"\npath = \"{volumes}\"\n")
    config = load_config(write_config(base, free_port(), driver="libvirt", extra=extra))
    try:
        async with serve_in_process(config) as (services, url), aiohttp.ClientSession() as session:
            api = Api(session, url)
            await api.login("admin", "admin-secret", "admin")
            await upload_image(api, guest_image_path("main"), name="guest", visibility="public")
            await make_flavor(api, name="tiny", vcpus=1, ram_mb=128, disk_gb=1)
            try:
                yield {"api": api, "base": base, "services": services}
            finally:
                _, servers = await api.call("GET", "/v1/servers?all_projects=true")
                for s in servers.get("servers", []):
                    await api.call("DELETE", f"/v1/servers/{s['id']}?wait=true")
                _, vols = await api.call("GET", "/v1/volumes?all_projects=true")
                for v in vols.get("volumes", []):
                    await api.call("DELETE", f"/v1/volumes/{v['id']}?wait=true")
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def ok(api: Api, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, answer = await api.call(method, path, body)
    assert got == status, (method, path, got, answer)
    return answer


def vol_line(volume_id: str, size: int, mark_re: str = r"\S+") -> str:
    return rf"HVD-VOL (vd[a-z]+) serial={volume_id[:20]} bytes={size} mark={mark_re}"


async def test_volume_moves_between_real_guests_and_one_boots_from_a_volume(lab: dict[str, Any]) -> None:
    api: Api = lab["api"]
    data = await ok(api, "POST", "/v1/volumes?wait=true", {"name": "data", "size_gb": 1}, 202)
    assert data["status"] == "available", data
    vid = data["id"]
    # two guests booted in parallel: one from the image, one from a new volume made from it
    first, second = await asyncio.gather(
        ok(api, "POST", "/v1/servers?wait=true",
           {"name": "vol-a", "flavor": "tiny", "image": "guest", "user_data": VOLUME_SCRIPT}, 202),
        ok(api, "POST", "/v1/servers?wait=true",
           {"name": "vol-b", "flavor": "tiny", "user_data": VOLUME_SCRIPT, "block_device_mapping": [
               {"source": "image", "id": "guest", "boot_index": 0, "delete_on_termination": True}]}, 202))
    a, b = first["id"], second["id"]
    assert first["status"] == "ACTIVE" and second["status"] == "ACTIVE", (first, second)
    attached_b = (await ok(api, "GET", f"/v1/servers/{b}/volume-attachments"))["volume_attachments"]
    assert [(x["device"], x["status"]) for x in attached_b] == [("/dev/vda", "attached")], attached_b
    boot_vid = attached_b[0]["volume_id"]
    assert not (Path(lab["base"]) / "instances" / b / "disk").exists()  # no local root disk
    await asyncio.gather(wait_console(api, a, r"HVD-GUEST ready", 120),
                         wait_console(api, b, r"HVD-GUEST ready", 120))

    # hot-plug into the running guest: it sees the disk (serial = volume id) and marks it
    att = await ok(api, "POST", f"/v1/servers/{a}/volume-attachments", {"volume": vid}, 201)
    assert att["status"] == "attached" and att["device"].startswith("/dev/vd"), att
    assert (await ok(api, "GET", f"/v1/volumes/{vid}"))["status"] == "in-use"
    await wait_console(api, a, vol_line(vid, GIB, "none"))
    await wait_console(api, a, rf"HVD-VOL written {vid[:20]}")
    # not multi-attach: a second server is refused
    got, body = await api.call("POST", f"/v1/servers/{b}/volume-attachments", {"volume": vid})
    assert got == 409 and "multi-attach" in body["error"]["message"], body

    # online extend: the guest sees the new size
    grown = await ok(api, "POST", f"/v1/volumes/{vid}/extend?wait=true", {"new_size_gb": 2}, 202)
    assert (grown["status"], grown["size_gb"]) == ("in-use", 2), grown
    await wait_console(api, a, vol_line(vid, 2 * GIB))

    # detach: the guest lets go; the volume is available again
    at = await mark(api, a)
    await ok(api, "DELETE", f"/v1/servers/{a}/volume-attachments/{vid}", status=204)
    await wait_console(api, a, r"HVD-VOL gone vd[a-z]+", after=at)
    assert (await ok(api, "GET", f"/v1/volumes/{vid}"))["status"] == "available"

    # the second server (booted from a volume) reads the first one's mark
    await ok(api, "POST", f"/v1/servers/{b}/volume-attachments", {"volume": vid}, 201)
    await wait_console(api, b, vol_line(vid, 2 * GIB, "HVDMARK-vol-a"))

    # stop/start: it boots from its volume again, with the data volume in its definition
    at = await mark(api, b)
    stopped = await action(api, b, "stop")
    assert stopped[1]["status"] == "SHUTOFF", stopped
    started = await action(api, b, "start")
    assert started[1]["status"] == "ACTIVE", started
    await wait_console(api, b, r"HVD-GUEST ready", 120, after=at)
    await wait_console(api, b, vol_line(vid, 2 * GIB, "HVDMARK-vol-a"), after=at)

    # delete: the boot volume goes with it (delete_on_termination), the data volume stays
    await ok(api, "DELETE", f"/v1/servers/{b}?wait=true", status=204)
    for _ in range(100):
        got, _body = await api.call("GET", f"/v1/volumes/{boot_vid}")
        if got == 404:
            break
        await asyncio.sleep(0.2)
    assert got == 404, f"boot volume {boot_vid} still there"
    assert (await ok(api, "GET", f"/v1/volumes/{vid}"))["status"] == "available"
