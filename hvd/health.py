"""Health of the daemon's long-running loops (Raft, power sync), for /healthz and the watchdog.

Each loop is a named probe returning a ``Status``; ``verdict`` (pure) turns the statuses into the
answer of /healthz. A loop that is DEAD stopped for good: the watchdog stops pinging and the daemon
exits non-zero so that systemd restarts it. DEGRADED means it is alive but cannot do its work now
(a full disk, a failing power sync) and retries by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DEAD = "dead"


@dataclass(frozen=True)
class Status:
    state: State = State.OK
    reason: str = ""


OK = Status()


def task_status(task: asyncio.Task[None] | None, status: Status = OK) -> Status:
    """``status``, unless the loop's task has ended (a loop that should run forever died)."""
    if task is None or not task.done():
        return status
    if task.cancelled():
        return Status(State.DEAD, "stopped")
    exc = task.exception()
    return Status(State.DEAD, f"{type(exc).__name__}: {exc}" if exc is not None else "ended")


def verdict(statuses: Mapping[str, Status]) -> tuple[int, str]:
    """(HTTP status, overall state) of /healthz: 200 only when every loop is OK."""
    states = {s.state for s in statuses.values()}
    if State.DEAD in states:
        return 503, State.DEAD.value
    if State.DEGRADED in states:
        return 503, State.DEGRADED.value
    return 200, State.OK.value


def dead(statuses: Mapping[str, Status]) -> dict[str, str]:
    """The loops that stopped for good, with their reasons."""
    return {name: s.reason for name, s in statuses.items() if s.state is State.DEAD}


class Health:
    """Named probes of the loops a daemon runs; a probe must be cheap and never raise."""

    def __init__(self) -> None:
        self._probes: dict[str, Callable[[], Status]] = {}

    def add(self, name: str, probe: Callable[[], Status]) -> None:
        self._probes[name] = probe

    def remove(self, name: str) -> None:
        self._probes.pop(name, None)

    def check(self) -> dict[str, Status]:
        return {name: probe() for name, probe in self._probes.items()}

    async def wait_dead(self, poll_s: float = 1.0) -> dict[str, str]:
        """Return once some loop is DEAD (its name and reason)."""
        while True:
            gone = dead(self.check())
            if gone:
                return gone
            await asyncio.sleep(poll_s)
