"""NBD exports of volumes (hvd.storage.volumes.nbd) with a real qemu-storage-daemon on loopback:
served data, one daemon per volume, a restart of hvd adopts a running export (a guest on another
host keeps its disk) or starts a dead one again on its port, and an export no attachment needs is
stopped with its record (no orphan process)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hvd.storage.volumes import nbd
from hvd.storage.volumes.nbd import ExportRequest, NbdExports

pytestmark = pytest.mark.skipif(shutil.which(nbd.QSD) is None,
                                reason="qemu-storage-daemon not installed (Debian package qemu-system-common)")
VOL = "0b7c3f52-6a57-4a0b-9d8e-0d8a4f1c2e33"


class Catalog:
    """The two reads NbdExports makes: the volume row, and which volumes other hosts attach over NBD."""

    def __init__(self, volume: dict[str, Any]) -> None:
        self.volume = volume
        self.wanted: dict[str, set[str]] = {}
        self.users: list[str] = []

    async def read(self, fn: Any, *args: Any) -> Any:
        if fn is nbd.nbd_users:
            return self.users
        return self.wanted if fn is nbd.wanted_clients else self.volume


class Paths:
    def __init__(self, path: Path) -> None:
        self.path = path

    def connection_info(self, volume: dict[str, Any]) -> dict[str, Any]:
        return {"type": "file", "path": str(self.path), "format": "raw"}


def nbd_read(port: int, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd://127.0.0.1:{port}/volume-{VOL}",
                    str(out)], check=True, capture_output=True, timeout=30)
    return out.read_bytes()[:16]


def test_qsd_argv_for_files_and_logical_volumes(tmp_path: Path) -> None:
    argv = nbd.qsd_argv({"type": "file", "path": "/v/volume-x", "format": "qcow2"}, "10.0.0.1", 10809, "volume-x",
                        tmp_path / "x.pid")
    assert argv[0] == "qemu-storage-daemon" and "driver=file,node-name=proto,filename=/v/volume-x" in argv
    assert "driver=qcow2,node-name=vol,file=proto" in argv
    assert "addr.type=inet,addr.host=10.0.0.1,addr.port=10809" in argv
    assert "type=nbd,id=exp,node-name=vol,name=volume-x,writable=on" in argv
    block = nbd.qsd_argv({"type": "block", "path": "/dev/vg/volume-x"}, "h", 1, "volume-x", tmp_path / "x.pid")
    assert "driver=host_device,node-name=proto,filename=/dev/vg/volume-x" in block
    assert "driver=raw,node-name=vol,file=proto" in block


async def test_export_serves_survives_an_hvd_restart_and_leaves_no_orphan(tmp_path: Path) -> None:
    data = tmp_path / f"volume-{VOL}"
    with data.open("wb") as f:
        f.write(b"HVDMARK-nbd-test")
        f.truncate(16 << 20)
    catalog = Catalog({"id": VOL, "host": "h1"})
    state = tmp_path / "nbd"
    first = NbdExports("h1", "127.0.0.1", state, catalog, Paths(data), None)
    await first.start()
    answer = await first.export(ExportRequest(volume_id=VOL, client_host="h2"))
    assert (answer.host, answer.export) == ("127.0.0.1", f"volume-{VOL}")
    again = await first.export(ExportRequest(volume_id=VOL, client_host="h3"))  # one daemon per volume
    assert again.port == answer.port
    pid = int((state / f"{VOL}.pid").read_text())
    assert nbd_read(answer.port, tmp_path / "copy1") == b"HVDMARK-nbd-test"
    await first.stop()  # hvd stops (or dies): the export keeps serving
    catalog.wanted = {VOL: {"h2"}}
    second = NbdExports("h1", "127.0.0.1", state, catalog, Paths(data), None)
    await second.start()
    assert int((state / f"{VOL}.pid").read_text()) == pid  # adopted, not restarted
    os.kill(pid, signal.SIGKILL)  # the export dies: supervision starts it again on its port
    for _ in range(100):
        if not nbd._alive(pid):
            break
        await asyncio.sleep(0.05)
    await second.supervise()
    new_pid = int((state / f"{VOL}.pid").read_text())
    assert new_pid != pid and nbd_read(answer.port, tmp_path / "copy2") == b"HVDMARK-nbd-test"
    # a detach while another attachment still uses it keeps it; the last one stops it
    catalog.users = ["h3"]
    await second.unexport(ExportRequest(volume_id=VOL, client_host="h2"))
    assert nbd._alive(new_pid)
    catalog.users = []
    await second.unexport(ExportRequest(volume_id=VOL, client_host="h3"))
    assert not nbd._alive(new_pid) and list(state.iterdir()) == []
    # an export nobody attached (an attach that failed after it): stopped once its grace is over
    catalog.wanted = {}
    await second.export(ExportRequest(volume_id=VOL, client_host="h2"))
    last_pid = int((state / f"{VOL}.pid").read_text())
    await second.supervise()
    assert nbd._alive(last_pid)
    second._exports[VOL].started -= nbd.GRACE_S
    second._exports[VOL].started -= nbd.GRACE_S
    await second.supervise()
    await second.stop()
    assert not nbd._alive(last_pid) and list(state.iterdir()) == []
