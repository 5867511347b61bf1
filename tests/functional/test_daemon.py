"""`hvd daemon` as a real subprocess: health, metrics, request ids, clean shutdown, sd_notify."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
import uuid
from pathlib import Path

from tests.conftest import DaemonProcess, start_daemon


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def test_healthz_answers(daemon: DaemonProcess) -> None:
    status, headers, body = _get(daemon.url + "/healthz")
    assert status == 200
    data = json.loads(body)
    assert data["status"] == "ok" and data["host"] == "hvd-test" and data["leader"]
    assert re.match(r"^req-[0-9a-f-]{36}$", headers["X-Request-Id"])


def test_metrics_are_prometheus_text(daemon: DaemonProcess) -> None:
    _get(daemon.url + "/healthz")
    status, headers, body = _get(daemon.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "# TYPE hvd_api_requests_total counter" in text
    assert 'hvd_api_requests_total{method="GET",route="/healthz",status="200"}' in text


def test_request_id_is_echoed_and_logged(daemon: DaemonProcess) -> None:
    rid = f"req-{uuid.uuid4()}"
    _, headers, _ = _get(daemon.url + "/healthz", {"X-Request-Id": rid})
    assert headers["X-Request-Id"] == rid
    deadline = time.monotonic() + 5
    while rid not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in daemon.log().splitlines() if rid in line)
    # `time level module [req-<uuid> user project] message`
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"
    assert re.match(stamp + r" INFO hvd\.api \[req-[0-9a-f-]{36} - -\] GET /healthz", line), line


def test_malformed_request_id_is_replaced(daemon: DaemonProcess) -> None:
    _, headers, _ = _get(daemon.url + "/healthz", {"X-Request-Id": "req-<script>"})
    assert re.match(r"^req-[0-9a-f-]{36}$", headers["X-Request-Id"])


def test_sigterm_exits_zero_by_itself(daemon: DaemonProcess) -> None:
    code = daemon.stop(signal.SIGTERM, timeout=5)
    assert code == 0  # its own clean exit: a kill after the timeout would read -9
    assert "shutting down" in daemon.log()


def test_sd_notify_ready_and_watchdog(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    d = start_daemon(tmp_path / "hvd", env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    try:
        seen = set()
        deadline = time.monotonic() + 30
        while not {"READY=1", "WATCHDOG=1"} <= seen and time.monotonic() < deadline:
            seen.add(sock.recv(256).decode())
        assert {"READY=1", "WATCHDOG=1"} <= seen
        assert d.stop() == 0
        assert sock.recv(256).decode() in ("STOPPING=1", "WATCHDOG=1")
    finally:
        d.stop()
        sock.close()


def test_bad_config_exits_with_a_named_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "bad.toml"
    cfg.write_text("[api]\nportt = 1\n")
    out = subprocess.run([sys.executable, "-m", "hvd", "daemon", "-c", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "unknown key 'api.portt'" in out.stderr


def test_metrics_need_a_token_from_outside_the_metrics_networks(tmp_path: Path) -> None:
    import requests

    d = start_daemon(tmp_path / "hvd", env={"HVD_API__METRICS_FROM": "[]"})  # loopback is not trusted here
    try:
        assert requests.get(d.url + "/metrics", timeout=10).status_code == 401
        creds = {"username": "admin", "password": "admin-secret", "project": "admin"}
        token = requests.post(d.url + "/v1/auth/tokens", json=creds, timeout=30).json()["token"]
        r = requests.get(d.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200 and "hvd_" in r.text
    finally:
        d.stop()
