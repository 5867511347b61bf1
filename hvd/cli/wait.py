"""`--wait` for long server operations: poll the server until it has no task_state, with one progress
line on stderr (status, task_state and the running action's progress, e.g. what a migration copied).

The CLI polls instead of using the API's `?wait=true` so it can show progress as it happens; the
decisions (what the line says, whether the operation failed) are pure functions over the API's answers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO
from urllib.parse import quote

from hvd.cli.http import CliError, Session

POLL_S = 0.5  # two small GETs per poll: cheap for the API, quick enough for a person
SETTLE_S = 5.0  # how long a finished server may wait for its action's record (a separate catalog write)


def running_action(actions: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest action still running (its `message` is the operation's progress), if any."""
    running = [a for a in actions if a.get("finish_time") is None]
    return running[-1] if running else None


def progress_line(server: dict[str, Any], action: dict[str, Any] | None) -> str:
    """`vm-1 RESIZE (resize_migrating): copied disk from h1: 10.0 of 20.0 MiB`."""
    line = f"{server.get('name') or server['id']} {server['status']}"
    if server.get("task_state"):
        line += f" ({server['task_state']})"
    if action is not None and action.get("message"):
        line += f": {action['message']}"
    return line


def failure(server: dict[str, Any], actions: Sequence[dict[str, Any]], known: Iterable[str]) -> str | None:
    """Why the awaited operation failed, or None: an action started since (not in `known`) ended
    in error, or the server is in ERROR."""
    old = set(known)
    for action in reversed(actions):
        if action["id"] not in old and action.get("result") == "error":
            return f"{action['action']} of server {server.get('name') or server['id']} failed: {action.get('message')}"
    if server["status"] == "ERROR":
        fault = (server.get("fault") or {}).get("message") or "no fault recorded"
        return f"server {server.get('name') or server['id']} is in ERROR: {fault}"
    return None


class ProgressLine:
    """One line that rewrites itself on a terminal; elsewhere (a log, a test) one line per change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        self.out.write(f"\r\x1b[K{text}" if self.tty else text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")


def action_ids(session: Session, server: str) -> set[str]:
    """Ids of the server's actions so far (recorded before an operation, to find the one it starts)."""
    return {a["id"] for a in session.call("GET", f"/v1/servers/{quote(server, safe='')}/actions")["actions"]}


def wait_server(session: Session, server: str, known: Iterable[str] = (), gone_ok: bool = False,
                out: TextIO | None = None) -> dict[str, Any] | None:
    """Poll until the server has no task_state and return it (None when `gone_ok` and it is deleted);
    CliError when the operation failed (see `failure`). Ctrl-C stops waiting, not the operation."""
    url = f"/v1/servers/{quote(server, safe='')}"
    line = ProgressLine(out or sys.stderr)
    old = set(known)
    settle_until: float | None = None
    try:
        while True:
            try:
                got = session.call("GET", url)
                actions = session.call("GET", url + "/actions")["actions"]
            except CliError as exc:
                if gone_ok and exc.details.get("http_status") == 404:
                    line.show(f"{server} deleted")
                    return None
                raise
            line.show(progress_line(got, running_action(actions)))
            if got["task_state"] is None:
                # the server's final state and its action's result are two writes: wait for the second
                if any(a["id"] not in old and a.get("finish_time") is None for a in actions):
                    settle_until = settle_until or time.monotonic() + SETTLE_S
                    if time.monotonic() < settle_until:
                        time.sleep(POLL_S / 5)
                        continue
                reason = failure(got, actions, old)
                if reason is not None:
                    raise CliError(reason)
                return dict(got)
            time.sleep(POLL_S)
    finally:
        line.close()
