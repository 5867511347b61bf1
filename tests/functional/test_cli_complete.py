"""The CLI covers the whole API: every operation of /v1/openapi.json has a command naming it; and the
commands added for that, run as a user runs them against a daemon (fake driver): api, host,
aggregate, availability zones, cluster, flavor access, token show, events, and --wait progress."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from hvd.cli.client import build_registry
from hvd.cli.docs import markdown
from tests.conftest import REPO, DaemonProcess, start_daemon
from tests.functional.compute_helpers import make_qcow2
from tests.functional.test_cli import run, run_json

# Operations that need no command, each with its reason. None today: the console WebSockets are
# attached outside the route table, so they are not in the document (neither is /internal).
EXCLUDED: dict[str, str] = {}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("cli-complete") / "hvd")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def env(daemon: DaemonProcess) -> dict[str, str]:
    creds = {"HVD_URL": daemon.url, "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret", "HVD_PROJECT": "admin"}
    token = run(creds, "token", "issue", "-f", "value", "-c", "token").stdout.strip()
    return {"HVD_URL": daemon.url, "HVD_TOKEN": token}


def _template(operation: str) -> str:
    return re.sub(r"{\w+}", "{}", operation)  # parameter names do not matter, only the shape


def test_every_openapi_operation_has_a_command(daemon: DaemonProcess) -> None:
    with urllib.request.urlopen(f"{daemon.url}/v1/openapi.json", timeout=30) as resp:
        document = json.load(resp)
    api = {_template(f"{method.upper()} {path}") for path, ops in document["paths"].items() for method in ops}
    declared = {_template(op): commands for op, commands in build_registry().operations().items()}
    missing = sorted(api - set(declared) - {_template(op) for op in EXCLUDED})
    assert not missing, "API operations without a CLI command (declare them in an Action's operations):\n  " \
        + "\n  ".join(missing)
    unknown = {op: cmds for op, cmds in declared.items() if op not in api}
    assert not unknown, f"commands name operations the API does not have: {unknown}"
    assert {_template(op) for op in EXCLUDED} <= api, "an exclusion names an operation that no longer exists"


def test_docs_cli_md_is_current() -> None:
    assert (REPO / "docs" / "cli.md").read_text() == markdown(), \
        "docs/cli.md is stale (a command was added or changed): run .venv/bin/python -m hvd.cli.docs > docs/cli.md"


def test_api_commands(env: dict[str, str]) -> None:
    url_only = {"HVD_URL": env["HVD_URL"]}  # public paths need no credentials
    assert run_json(url_only, "api", "version")["version"] == "v1"
    assert run_json(url_only, "api", "health")["status"] == "ok"
    assert "/v1/servers" in json.loads(run(url_only, "api", "openapi").stdout)["paths"]
    assert "hvd_" in run(url_only, "api", "metrics").stdout  # loopback reads /metrics without a token


def test_host_aggregate_zone_and_cluster_commands(env: dict[str, str]) -> None:
    host = run_json(env, "host", "show", "hvd-test")
    assert host["name"] == "hvd-test" and host["enabled"] is True
    aggregate = run_json(env, "aggregate", "create", "agg-cli", "--zone", "zone-cli", "--property", "ssd=true")
    assert aggregate["availability_zone"] == "zone-cli" and aggregate["metadata"] == {"ssd": "true"}
    assert run_json(env, "aggregate", "add-host", "agg-cli", "hvd-test")["hosts"] == ["hvd-test"]
    zones = {z["name"]: z for z in run_json(env, "availability-zone", "list")}
    assert "hvd-test" in zones["zone-cli"]["hosts"]
    run(env, "aggregate", "set", "agg-cli", "--name", "agg-cli2")
    assert run(env, "aggregate", "list", "-f", "value", "-c", "name", "-c", "hosts").stdout == "agg-cli2 hvd-test\n"
    assert run_json(env, "aggregate", "remove-host", "agg-cli2", "hvd-test")["hosts"] == []
    run(env, "aggregate", "delete", "agg-cli2")
    assert run_json(env, "aggregate", "list") == []
    members = run_json(env, "cluster", "show")
    assert [(m["id"], m["role"], m["leader"]) for m in members] == [("hvd-test", "voter", True)]
    assert run(env, "cluster", "show", "-f", "value", "-c", "id", "-c", "leader").stdout == "hvd-test True\n"


def test_flavor_access_and_token_show(env: dict[str, str]) -> None:
    run(env, "flavor", "create", "cli.priv", "--vcpus", "1", "--ram", "64", "--private")
    run(env, "flavor", "set", "cli.priv", "--project", "demo")
    demo = run_json(env, "project", "show", "demo")["id"]
    assert run(env, "flavor", "access-list", "cli.priv", "-f", "value").stdout == f"{demo}\n"
    shown = run_json(env, "token", "show")
    assert (shown["user"], shown["project"], shown["roles"]) == ("admin", "admin", ["admin"])


def _reader(stream: IO[str]) -> queue.Queue[str]:
    """Lines of a child's pipe, readable with a timeout."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _events(env: dict[str, str], *argv: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`hvd events ...` running, once it is subscribed (its notice on stderr comes after the headers)."""
    proc = subprocess.Popen([sys.executable, "-m", "hvd", "events", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert proc.stderr is not None and proc.stdout is not None
    assert "following" in proc.stderr.readline()
    return proc, _reader(proc.stdout)


def _next_json(lines: queue.Queue[str]) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(lines.get(timeout=30))
    return event


def test_events_follow_and_wait_shows_progress(env: dict[str, str], tmp_path: Path) -> None:
    child_env = {**{k: v for k, v in os.environ.items() if not k.startswith("HVD_")}, **env}
    image = make_qcow2(tmp_path / "ev.qcow2", "8M")
    run(env, "image", "create", "ev-img", "--file", str(image), "--disk-format", "qcow2")
    run(env, "flavor", "create", "ev.tiny", "--vcpus", "1", "--ram", "64", "--disk", "1")
    follower, lines = _events(child_env, "--follow", "--type", "instance.create", "--type", "instance.action.*",
                              "-f", "json")
    try:
        out = run(env, "server", "create", "vm-ev", "--flavor", "ev.tiny", "--image", "ev-img", "--no-network",
                  "--wait", "-f", "json")
        server = json.loads(out.stdout)
        assert server["status"] == "ACTIVE"
        progress = out.stderr.splitlines()
        assert progress[0].startswith("vm-ev BUILD") and progress[-1] == "vm-ev ACTIVE", progress
        seen = [_next_json(lines) for _ in range(3)]
        assert {e["type"] for e in seen} == {"instance.create", "instance.action.start", "instance.action.finish"}
        assert all(e["instance_id"] == server["id"] for e in seen)
        assert next(e for e in seen if e["type"] == "instance.action.finish")["action"] == "create"
    finally:
        follower.terminate()
        follower.wait(timeout=30)
    # without --follow: the first matching event, then exit
    first, first_lines = _events(child_env, "--type", "instance.delete", "-f", "value", "-c", "type",
                                 "-c", "instance_id")
    try:
        out = run(env, "server", "delete", "vm-ev", "--wait")
        assert out.stderr.splitlines()[-1] == "vm-ev deleted"
        assert first.wait(timeout=30) == 0
        assert first_lines.get(timeout=30) == f"instance.delete {server['id']}\n"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    quiet = run(env, "events", "--type", "nothing.*", "--timeout", "1", ok=False)
    assert quiet.returncode == 1 and "no matching event within 1 s" in quiet.stderr


def test_wait_exits_1_naming_why_the_operation_failed(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "image", "create", "big-img", "--file", str(make_qcow2(tmp_path / "big.qcow2", "8M")),
        "--disk-format", "qcow2")
    run(env, "flavor", "create", "too.big", "--vcpus", "1", "--ram", "40000", "--disk", "1")  # > 16 GiB x 1.5
    out = run(env, "server", "create", "vm-big", "--flavor", "too.big", "--image", "big-img", "--no-network",
              "--wait", ok=False)
    assert out.returncode == 1
    progress = out.stderr.splitlines()
    assert progress[-2] == "vm-big ERROR", progress
    assert progress[-1].startswith("hvd: error: create of server vm-big failed: No valid host"), progress
    assert "RamFilter" in progress[-1]
    run(env, "server", "delete", "vm-big", "--wait")
