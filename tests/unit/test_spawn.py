"""Children started without forking the daemon (hvd/spawn.py), and the runners built on it: what
a child prints and its status come back; a hung child is killed at its timeout or when its caller
is cancelled; a started child is reaped when it ends; a failing fence agent counts as not fenced."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from hvd import spawn
from hvd.cluster import fencing
from hvd.config import load_config


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_output_status_and_input_come_back() -> None:
    done = await spawn.run(["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=b"in put")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"in put", b"oops\n")
    merged = await spawn.run(["sh", "-c", "echo a; echo b >&2"], merge_stderr=True)
    assert (merged.stdout, merged.stderr) == (b"a\nb\n", b"")
    assert (await spawn.run(["sh", "-c", "echo $ONLY"], env={"ONLY": "this"})).stdout == b"this\n"


async def test_a_missing_program_is_an_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        await spawn.run(["/nonexistent/tool"])


async def test_a_hung_child_is_killed_at_its_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        await spawn.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=0.5)
    assert not alive(int(pidfile.read_text()))


async def test_a_cancelled_caller_kills_its_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(spawn.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"]))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(int(pidfile.read_text()))


async def test_a_started_child_runs_until_it_exits_or_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "err"
    with log.open("ab") as err:
        child = await spawn.start(["sh", "-c", "echo started >&2; exec sleep 30"], stderr=err, new_session=True)
    assert child.returncode is None and alive(child.pid)
    assert os.getsid(child.pid) == child.pid  # its own session: it outlives the daemon
    while log.read_text() != "started\n":  # its stderr goes to the file given
        await asyncio.sleep(0.01)
    child.kill()
    assert await child.wait() == -9 and child.returncode == -9 and not alive(child.pid)  # reaped: no zombie
    quick = await spawn.start(["sh", "-c", "exit 4"])
    assert await quick.wait() == 4


def fencer(agent: list[str]) -> Any:
    config = load_config(None, {"HVD_FENCING__FENCE_AGENT": str(agent).replace("'", '"')})
    return fencing.Fencer(config, None, None, None)  # type: ignore[arg-type]


async def test_a_fence_agent_counts_only_when_it_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await fencer(["sh", "-c", "test {host} = h2"])._run_agent("h2") is True
    assert await fencer(["sh", "-c", "test {host} = h2"])._run_agent("h3") is False
    assert await fencer(["/nonexistent/agent"])._run_agent("h2") is False
    monkeypatch.setattr(fencing, "AGENT_TIMEOUT_S", 0.3)
    assert await fencer(["sleep", "30"])._run_agent("h2") is False  # hung: killed, not fenced
