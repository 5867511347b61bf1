"""The CLI's pure parts: the --wait progress line and failure verdict, the event-stream parser and
line format, option parsers, and shell completion (through a real bash)."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from hvd.cli.completion import command_tree, script
from hvd.cli.events import event_line, matches, parse_sse
from hvd.cli.main import build_parser
from hvd.cli.network import fields
from hvd.cli.secgroup import port_range
from hvd.cli.wait import ProgressLine, failure, progress_line, running_action

SERVER = {"id": "i-1", "name": "vm-1", "status": "MIGRATING", "task_state": "migrating", "fault": None}


def test_progress_line_shows_the_running_actions_progress() -> None:
    actions = [{"id": "a1", "action": "create", "finish_time": "t", "result": "success", "message": ""},
               {"id": "a2", "action": "live-migrate", "finish_time": None, "result": None,
                "message": "live migration to h2: 10.0 MiB of 20.0 MiB"}]
    assert running_action(actions) == actions[1]
    assert progress_line(SERVER, running_action(actions)) == \
        "vm-1 MIGRATING (migrating): live migration to h2: 10.0 MiB of 20.0 MiB"
    assert progress_line({**SERVER, "status": "ACTIVE", "task_state": None}, None) == "vm-1 ACTIVE"


def test_failure_names_a_new_failed_action_or_an_error_state() -> None:
    stable = {**SERVER, "status": "ACTIVE", "task_state": None}
    old_error = {"id": "a1", "action": "stop", "result": "error", "message": "old"}
    new_error = {"id": "a2", "action": "live-migrate", "result": "error", "message": "libvirtd went away"}
    assert failure(stable, [old_error], known={"a1"}) is None  # an earlier failure is not this operation's
    assert failure(stable, [old_error, new_error], known={"a1"}) == \
        "live-migrate of server vm-1 failed: libvirtd went away"
    assert failure({**stable, "status": "ERROR", "fault": {"message": "No valid host"}}, [], ()) == \
        "server vm-1 is in ERROR: No valid host"


def test_progress_line_writes_one_line_per_change_off_a_terminal() -> None:
    out = io.StringIO()
    line = ProgressLine(out)
    for text in ("vm BUILD (spawning)", "vm BUILD (spawning)", "vm ACTIVE"):
        line.show(text)
    line.close()
    assert out.getvalue() == "vm BUILD (spawning)\nvm ACTIVE\n"


def test_parse_sse_joins_data_lines_and_skips_comments() -> None:
    stream = [": keepalive\n", "\n", "event: flavor\n", 'data: {"type": "a.b",\n', 'data: "n": 1}\n', "\n",
              'event: x\r\n', 'data: {"type": "c"}\r\n', "\r\n"]
    assert list(parse_sse(stream)) == [{"type": "a.b", "n": 1}, {"type": "c"}]


def test_event_line_formats_and_type_patterns() -> None:
    event = {"type": "instance.create", "time": 0.5, "host": "h1", "instance_id": "i-1"}
    assert event_line(event, "table", []) == "1970-01-01T00:00:00.500Z instance.create host=h1 instance_id=i-1"
    assert event_line(event, "value", ["type", "instance_id"]) == "instance.create i-1"
    assert event_line(event, "json", ["type"]) == '{"type": "instance.create"}'
    assert matches(event, []) and matches(event, ["host.*", "instance.*"]) and not matches(event, ["host.*"])


def test_option_parsers_name_what_they_expect() -> None:
    assert fields("start", "end")("start=10.0.0.5,end=10.0.0.9") == {"start": "10.0.0.5", "end": "10.0.0.9"}
    assert fields("subnet_id", "ip_address")("ip-address=10.0.0.5") == {"ip_address": "10.0.0.5"}
    with pytest.raises(argparse.ArgumentTypeError, match=r"start=\.\.\.,end=\.\.\."):
        fields("start", "end")("begin=1")
    assert port_range("22") == (22, 22) and port_range("8000:8080") == (8000, 8080)
    with pytest.raises(argparse.ArgumentTypeError, match="PORT or MIN:MAX"):
        port_range("http")


def test_command_tree_has_every_object_and_option() -> None:
    tree = command_tree(build_parser())
    assert {"server", "router", "floating-ip", "events", "completion"} <= set(tree[""].subcommands)
    assert {"add-interface", "set-gateway", "unset-gateway"} <= set(tree["router"].subcommands)
    assert tree["server list"].choices["-f"] == ["table", "json", "value"]
    assert "--wait" in tree["server live-migrate"].options


def _complete(script_path: Path, *words: str) -> list[str]:
    """COMPREPLY of the generated function for the command line `words` (the last one being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    out = subprocess.run(
        ["bash", "--norc", "-c", f'source "{script_path}"; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1};'
                                 ' _hvd; printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, check=True, timeout=30)
    return [w for w in out.stdout.split("\n") if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_of_objects_actions_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "hvd.bash"
    path.write_text(script("bash", build_parser()))
    assert sorted(_complete(path, "hvd", "ser")) == ["server", "server-group"]
    actions = _complete(path, "hvd", "server", "")
    assert {"create", "list", "show", "delete", "live-migrate", "snapshot", "add-interface"} <= set(actions)
    assert not any(a.startswith("-") for a in actions)
    assert _complete(path, "hvd", "server", "list", "-f", "") == ["table", "json", "value"]
    assert _complete(path, "hvd", "server", "create", "--fl") == ["--flavor"]
    assert _complete(path, "hvd", "completion", "") == ["bash", "zsh"]
    assert script("zsh", build_parser()).startswith("#compdef hvd\n")
