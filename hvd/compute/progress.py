"""Progress of a long operation, shown as its running instance action's message (at most every
``PERIOD_S``; the action's final message replaces it)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hvd.catalog.cmd_compute import ActionProgress
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_one
from hvd.errors import HvdError

log = logging.getLogger(__name__)

PERIOD_S = 2.0


def _open_action(conn: Any, instance_id: str) -> str | None:
    row = fetch_one(conn, "SELECT id FROM instance_actions WHERE instance_id=? AND finish_time IS NULL"
                          " ORDER BY start_time DESC LIMIT 1", (instance_id,))
    return None if row is None else str(row["id"])


class ActionReporter:
    """Writes "copied X of Y MiB" style lines into the instance's running action, rate-limited."""

    def __init__(self, catalog: Catalog, instance_id: str) -> None:
        self.catalog = catalog
        self.instance_id = instance_id
        self._action: str | None = None
        self._last = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PERIOD_S:
            return
        self._last = now
        task = asyncio.ensure_future(self._write(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait for the lines already reported (before the action's end is written)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write(self, message: str) -> None:
        try:
            if self._action is None:
                self._action = await self.catalog.read(_open_action, self.instance_id)
            if self._action is not None:
                await self.catalog.propose(ActionProgress(id=self._action, message=message))
        except HvdError as exc:  # progress is a courtesy: the operation goes on
            log.debug("progress of %s not recorded: %s", self.instance_id, exc.message)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
