"""Remote consoles on a REAL guest (libvirt qemu:///system, TCG, the test guest image) behind a
real hvd daemon: `hvd console` in a pseudo-terminal types a command into the guest's shell and
reads its answer (the serial port stays logged meanwhile); the VNC proxy completes an RFB
handshake with QEMU's VNC server; the screenshot is a PNG of the display's size. One guest for
the whole module."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests

from hvd.drivers.remote_console import png_size
from tests.conftest import REPO, DaemonProcess, start_daemon
from tests.functional.test_consoles_fake import rfb_handshake
from tests.guest.helpers import guest_image_path, make_searchable_dir

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

# The test guest's init has no shell on its serial port: the user-data gives it one (busybox sh).
SHELL_SCRIPT = """#!/bin/sh
setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1' &
echo "HVD-SHELL on ttyS0"
"""


class Lab:
    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.http = requests.Session()
        r = self.http.post(daemon.url + "/v1/auth/tokens",
                           json={"username": "admin", "password": "admin-secret", "project": "admin"})
        assert r.status_code == 201, r.text
        self.token = str(r.json()["token"])
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.http.request(method, self.daemon.url + path, timeout=120, **kw)

    def console_log(self, sid: str) -> str:
        r = self.call("GET", f"/v1/servers/{sid}/console-log")
        assert r.status_code == 200, r.text
        return str(r.json()["output"])

    def wait_console(self, sid: str, pattern: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, text := self.console_log(sid)):
            assert time.monotonic() < deadline, f"console never matched {pattern!r}:\n{text[-2000:]}"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, str]]:
    image = guest_image_path("main")
    base = make_searchable_dir(prefix="hvdtest-consoles-")
    daemon: DaemonProcess | None = None
    try:
        daemon = start_daemon(base / "hvd", driver="libvirt", extra="sync_power_state_interval_s = 2")
        lab = Lab(daemon)
        r = lab.call("POST", "/v1/images", json={"name": "guest", "disk_format": "qcow2"})
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        r = lab.call("PUT", f"/v1/images/{image_id}/file", data=image.read_bytes(),
                     headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 204, r.text
        r = lab.call("POST", "/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1})
        assert r.status_code == 201, r.text
        r = lab.call("POST", "/v1/servers?wait=true", json={"name": "con", "flavor": "tiny", "image": "guest",
                                                            "user_data": SHELL_SCRIPT})
        assert r.status_code == 202 and r.json()["status"] == "ACTIVE", r.text
        sid = str(r.json()["id"])
        lab.wait_console(sid, r"HVD-SHELL on ttyS0")
        lab.wait_console(sid, r"HVD-GUEST ready")
        try:
            yield lab, sid
        finally:
            lab.call("DELETE", f"/v1/servers/{sid}?wait=true")
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def read_until(fd: int, wanted: bytes, timeout: float = 60.0) -> bytes:
    """What the terminal shows until ``wanted`` appears (AssertionError with the output if not)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {wanted!r}; saw {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {wanted!r}; saw {seen[-2000:]!r}"
            seen += chunk
    return seen


def test_hvd_console_in_a_terminal_runs_a_command_in_the_guest(lab: tuple[Lab, str]) -> None:
    api, sid = lab
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HVD_")},
           "HVD_URL": api.daemon.url, "HVD_TOKEN": api.token}
    proc = subprocess.Popen([sys.executable, "-m", "hvd", "console", sid], stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, env=env, start_new_session=True)
    os.close(slave)
    try:
        read_until(master, b"escape character is ^]")
        # the shell echoes the command line as typed; only the guest's own arithmetic prints 42
        os.write(master, b"echo hvd-$((6*7))\r")
        read_until(master, b"hvd-42")
        os.write(master, b"\x1d")  # ^] detaches
        tail = read_until(master, b"detached")
        assert proc.wait(30) == 0, tail
        after = termios.tcgetattr(master)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        os.close(master)
    assert after[3] & termios.ICANON and after[3] & termios.ECHO  # the terminal is cooked again
    assert after == before
    # the serial port stayed logged while attached
    api.wait_console(sid, r"hvd-42", timeout=10)


async def test_vnc_proxy_speaks_rfb_and_screenshot_has_its_size(lab: tuple[Lab, str]) -> None:
    api, sid = lab
    r = api.call("POST", f"/v1/servers/{sid}/remote-console", json={"protocol": "vnc"})
    assert r.status_code == 200, r.text
    url = r.json()["remote_console"]["url"]
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
        width, height, name = await rfb_handshake(ws)  # QEMU's own VNC server, through the proxy
    assert "instance-" in name and width > 0 and height > 0  # QEMU names the display "QEMU (<domain>)"
    r = api.call("GET", f"/v1/servers/{sid}/screenshot")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png", r.text[:200]
    assert png_size(r.content) == (width, height)
