"""The `hvd <object> <action>` client as a user runs it: the real command against a real daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, DaemonProcess, free_port, start_daemon
from tests.functional.conftest import PUBLIC_KEY, PUBLIC_KEY_FINGERPRINT

ERROR_LINE = re.compile(r"^hvd: error: (.+) \(HTTP (\d{3}), (req-[0-9a-f-]{36})\)$")


@pytest.fixture(scope="module")
def hvd_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("cli") / "hvd")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def creds(hvd_daemon: DaemonProcess) -> dict[str, str]:
    return {"HVD_URL": hvd_daemon.url, "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret",
            "HVD_PROJECT": "admin"}


@pytest.fixture(scope="module")
def token_env(creds: dict[str, str]) -> dict[str, str]:
    """Environment with a token (one login for the module instead of one per command)."""
    token = run(creds, "token", "issue", "-f", "value", "-c", "token").stdout.strip()
    return {"HVD_URL": creds["HVD_URL"], "HVD_TOKEN": token}


def run(env: dict[str, str], *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HVD_")}
    out = subprocess.run([sys.executable, "-m", "hvd", *argv], capture_output=True, text=True, cwd=REPO,
                         env={**clean, **env}, timeout=60)
    if ok:
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def run_json(env: dict[str, str], *argv: str) -> Any:
    return json.loads(run(env, *argv, "-f", "json").stdout)


def api_error(out: subprocess.CompletedProcess[str], status: int) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    match = ERROR_LINE.match(out.stderr.strip())
    assert match, out.stderr
    assert int(match.group(2)) == status
    return match.group(1)


def test_flavor_commands(token_env: dict[str, str]) -> None:
    created = run_json(token_env, "flavor", "create", "cli.small", "--vcpus", "2", "--ram", "1024", "--disk", "5",
                       "--property", "hw:cpu_policy=shared")
    assert (created["name"], created["vcpus"], created["ram_mb"], created["disk_gb"]) == ("cli.small", 2, 1024, 5)
    assert created["extra_specs"] == {"hw:cpu_policy": "shared"}
    table = run(token_env, "flavor", "list").stdout
    assert "cli.small" in table and "vcpus" in table
    assert "cli.small" in run(token_env, "flavor", "list", "-f", "value", "-c", "name").stdout.split("\n")
    assert run(token_env, "flavor", "show", "cli.small", "-f", "value", "-c", "id", "-c", "vcpus").stdout == \
        f"{created['id']}\n2\n"
    run(token_env, "flavor", "set", "cli.small", "--property", "hw:a=1", "--unset-property", "hw:cpu_policy")
    assert run_json(token_env, "flavor", "show", created["id"])["extra_specs"] == {"hw:a": "1"}
    private = run_json(token_env, "flavor", "create", "cli.private", "--vcpus", "1", "--ram", "64", "--private")
    assert private["is_public"] is False
    run(token_env, "flavor", "set", "cli.private", "--project", "demo")
    run(token_env, "flavor", "delete", "cli.small", "cli.private")
    message = api_error(run(token_env, "flavor", "show", "cli.small", ok=False), 404)
    assert message == "Flavor cli.small could not be found"


def test_duplicate_and_invalid_input_are_one_line_errors(token_env: dict[str, str]) -> None:
    run(token_env, "flavor", "create", "cli.dup", "--vcpus", "1", "--ram", "64")
    assert "already exists" in api_error(
        run(token_env, "flavor", "create", "cli.dup", "--vcpus", "1", "--ram", "64", ok=False), 409)
    assert "field 'vcpus'" in api_error(
        run(token_env, "flavor", "create", "cli.bad", "--vcpus", "0", "--ram", "64", ok=False), 400)
    out = run(token_env, "flavor", "create", "cli.bad", "--ram", "64", ok=False)
    assert out.returncode == 2 and "--vcpus" in out.stderr  # argparse usage error
    out = run(token_env, "flavor", "list", "-c", "nope", ok=False)
    assert out.returncode == 1 and "unknown column 'nope'" in out.stderr


def test_keypair_commands(token_env: dict[str, str], tmp_path: Path) -> None:
    key_file = tmp_path / "id.pub"
    key_file.write_text(PUBLIC_KEY + "\n")
    imported = run_json(token_env, "keypair", "create", "cli-imported", "--public-key", str(key_file))
    assert imported["fingerprint"] == PUBLIC_KEY_FINGERPRINT
    generated = run_json(token_env, "keypair", "create", "cli-generated")
    assert generated["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    names = run(token_env, "keypair", "list", "-f", "value", "-c", "name").stdout.split()
    assert {"cli-imported", "cli-generated"} <= set(names)
    assert run(token_env, "keypair", "show", "cli-imported", "-f", "value", "-c", "type").stdout == "ssh-ed25519\n"
    run(token_env, "keypair", "delete", "cli-imported", "cli-generated")
    assert run(token_env, "keypair", "list", "-f", "value", "-c", "name").stdout == ""
    out = run(token_env, "keypair", "create", "k", "--public-key", str(tmp_path / "missing.pub"), ok=False)
    assert out.returncode == 1 and "cannot read" in out.stderr


def test_server_group_commands(token_env: dict[str, str]) -> None:
    group = run_json(token_env, "server-group", "create", "cli-group", "--policy", "anti-affinity")
    assert group["policy"] == "anti-affinity" and group["members"] == []
    rows = run_json(token_env, "server-group", "list")
    assert [r["name"] for r in rows] == ["cli-group"]
    assert set(rows[0]) == {"id", "name", "policy", "members"}
    assert run(token_env, "server-group", "show", group["id"], "-f", "value", "-c", "name").stdout == "cli-group\n"
    run(token_env, "server-group", "delete", group["id"])
    api_error(run(token_env, "server-group", "show", group["id"], ok=False), 404)


def test_project_user_and_role_commands(token_env: dict[str, str]) -> None:
    project = run_json(token_env, "project", "create", "cli-project", "--description", "from the CLI")
    assert project["description"] == "from the CLI" and project["enabled"] is True
    user = run_json(token_env, "user", "create", "cli-user", "--password", "cli-password", "--project",
                    "cli-project", "--role", "reader")
    run(token_env, "user", "set", "cli-user", "--email", "cli@example.org")
    assert run(token_env, "user", "show", user["id"], "-f", "value", "-c", "email").stdout == "cli@example.org\n"
    run(token_env, "role", "add", "member", "--user", "cli-user", "--project", "cli-project")
    roles = run(token_env, "role", "list", "--user", "cli-user", "--project", "cli-project", "-f", "value",
                "-c", "role").stdout.split()
    assert roles == ["member", "reader"]
    run(token_env, "role", "remove", "reader", "--user", "cli-user", "--project", "cli-project")
    assert "reader" in run(token_env, "role", "list", "-f", "value", "-c", "name").stdout.split()
    # the new user logs in with its own credentials
    user_env = {"HVD_URL": token_env["HVD_URL"], "HVD_USERNAME": "cli-user", "HVD_PASSWORD": "cli-password",
                "HVD_PROJECT": "cli-project"}
    assert run(user_env, "token", "issue", "-f", "value", "-c", "roles").stdout == "member\n"
    assert "Policy doesn't allow" in api_error(run(user_env, "user", "list", ok=False), 403)
    run(token_env, "project", "set", "cli-project", "--description", "changed", "--disable")
    assert run_json(token_env, "project", "show", "cli-project")["enabled"] is False
    names = run(token_env, "project", "list", "-f", "value", "-c", "name").stdout.split()
    assert {"admin", "demo", "cli-project"} <= set(names)
    run(token_env, "user", "delete", "cli-user")
    run(token_env, "project", "delete", "cli-project")
    assert "cli-user" not in run(token_env, "user", "list", "-f", "value", "-c", "name").stdout.split()


def test_quota_commands(token_env: dict[str, str]) -> None:
    run(token_env, "quota", "set", "demo", "--cores", "8", "--key-pairs", "3")
    rows = {r["resource"]: r for r in run_json(token_env, "quota", "show", "demo")}
    assert rows["cores"]["limit"] == 8 and rows["key_pairs"]["limit"] == 3 and rows["cores"]["in_use"] == 0
    mine = {r["resource"]: r["limit"] for r in run_json(token_env, "quota", "show")}
    assert mine["cores"] == 20
    out = run(token_env, "quota", "set", "demo", ok=False)
    assert out.returncode == 1 and "nothing to change" in out.stderr


def test_host_commands(token_env: dict[str, str]) -> None:
    assert run(token_env, "host", "list", "-f", "value", "-c", "name").stdout == "hvd-test\n"
    shown = run_json(token_env, "host", "disable", "hvd-test", "--reason", "maintenance")
    assert shown["enabled"] is False and shown["disabled_reason"] == "maintenance"
    assert run(token_env, "host", "show", "hvd-test", "-f", "value", "-c", "enabled").stdout == "False\n"
    run(token_env, "host", "enable", "hvd-test")
    assert run_json(token_env, "host", "show", "hvd-test")["enabled"] is True


def test_catalog_list(token_env: dict[str, str]) -> None:
    rows = run_json(token_env, "catalog", "list")
    assert {"compute", "identity"} <= {r["type"] for r in rows}
    assert all(token_env["HVD_URL"] in r["endpoints"] for r in rows)


def test_token_issue_and_revoke(creds: dict[str, str]) -> None:
    issued = run_json(creds, "token", "issue")
    assert issued["user"] == "admin" and issued["project"] == "admin" and issued["roles"] == ["admin"]
    env = {"HVD_URL": creds["HVD_URL"], "HVD_TOKEN": issued["token"]}
    run(env, "flavor", "list")
    run(env, "token", "revoke")
    message = api_error(run(env, "flavor", "list", ok=False), 401)
    assert "requires authentication" in message
    bad = {**creds, "HVD_PASSWORD": "wrong"}
    api_error(run(bad, "flavor", "list", ok=False), 401)


def test_connection_refused_and_missing_credentials_are_clear() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = run({"HVD_URL": url, "HVD_TOKEN": "x"}, "flavor", "list", ok=False)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"hvd: error: cannot connect to {url}: Connection refused"
                                  " (is hvd running? check HVD_URL)")
    out = run({"HVD_URL": url}, "flavor", "list", ok=False)
    assert out.returncode == 1
    assert "HVD_USERNAME" in out.stderr and "HVD_TOKEN" in out.stderr
