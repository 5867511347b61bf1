"""`hvd image|server|network ...` as a user runs them, against a real daemon (fake compute driver)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, start_daemon
from tests.functional.compute_helpers import make_qcow2
from tests.functional.test_cli import ERROR_LINE, run


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    d: DaemonProcess = start_daemon(tmp_path_factory.mktemp("cli-compute") / "hvd")
    creds = {"HVD_URL": d.url, "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret", "HVD_PROJECT": "admin"}
    token = run(creds, "token", "issue", "-f", "value", "-c", "token").stdout.strip()
    yield {"HVD_URL": d.url, "HVD_TOKEN": token}
    d.stop()


def test_image_upload_with_progress_then_server_lifecycle(env: dict[str, str], tmp_path: Path) -> None:
    path = make_qcow2(tmp_path / "cli.qcow2", "8M")
    out = run(env, "image", "create", "cli-img", "--file", str(path), "--disk-format", "qcow2", "--progress",
              "-f", "json")
    image = json.loads(out.stdout[out.stdout.index("{"):])
    assert image["status"] == "active" and image["size"] == path.stat().st_size
    saved = tmp_path / "saved.qcow2"
    run(env, "image", "save", "cli-img", "--file", str(saved))
    assert saved.read_bytes() == path.read_bytes()
    run(env, "flavor", "create", "t1", "--vcpus", "1", "--ram", "64", "--disk", "1")
    out = run(env, "server", "create", "vm-cli", "--flavor", "t1", "--image", "cli-img", "--wait", "-f", "json")
    server = json.loads(out.stdout)
    assert server["status"] == "ACTIVE"
    out = run(env, "server", "stop", "vm-cli", "--wait", "-f", "value", "-c", "status")
    assert out.stdout.strip() == "SHUTOFF"
    listing = run(env, "server", "list", "-f", "value", "-c", "name", "-c", "status").stdout
    assert listing.strip() == "vm-cli SHUTOFF"
    actions = run(env, "server", "actions", "vm-cli", "-f", "value", "-c", "action", "-c", "result").stdout
    assert actions.split("\n")[:2] == ["create success", "stop success"]
    bad = run(env, "server", "pause", "vm-cli", ok=False)
    assert bad.returncode == 1
    match = ERROR_LINE.match(bad.stderr.strip())
    assert match and match.group(2) == "409" and "vm_state stopped" in match.group(1)
    run(env, "server", "delete", "vm-cli", "--wait")
    assert run(env, "server", "list", "-f", "value").stdout.strip() == ""


def test_missing_image_file_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    out = run(env, "image", "create", "nofile", "--file", str(tmp_path / "absent.qcow2"), ok=False)
    assert out.returncode == 1 and "no such file" in out.stderr
