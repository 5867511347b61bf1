"""The Coordinator: the only way to change the catalog.

`propose(cmd)` returns the command's result once it is applied (or raises its typed error).
Nothing above this interface may assume a single node: the Raft coordinator (hvd.cluster)
implements the same interface, forwarding proposals to the leader.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any

from hvd.catalog.commands import Command, encode
from hvd.catalog.db import Database
from hvd.catalog.state import CatalogState, decode_result
from hvd.health import OK, Status


class Coordinator(abc.ABC):
    """Commits commands to the replicated catalog."""

    @abc.abstractmethod
    async def propose(self, cmd: Command) -> dict[str, Any]:
        """Commit `cmd` and return its apply result; raises the apply's typed HvdError, or
        NotLeader/ServiceUnavailable (retryable) when no leader can commit now."""

    @property
    @abc.abstractmethod
    def is_leader(self) -> bool:
        """True while this node may make leader-only decisions (placement)."""

    @property
    @abc.abstractmethod
    def leader_id(self) -> str | None:
        """The node id of the current leader, if known."""

    @property
    @abc.abstractmethod
    def term(self) -> int:
        """The fencing epoch: grows with every new leadership."""

    @abc.abstractmethod
    async def wait_applied(self, index: int) -> None:
        """Return once the local catalog has applied `index`."""

    def health(self) -> Status:
        """Whether the loop that commits changes runs (for /healthz and the watchdog)."""
        return OK

    async def read_barrier(self) -> None:  # noqa: B027 - optional hook; local reads are current
        """Return once local reads reflect every command committed before the call."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin serving (elect, catch up)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop serving; pending proposals fail with ServiceUnavailable."""


class LocalCoordinator(Coordinator):
    """A one-voter cluster without a log: commands are applied directly, in batches.

    Proposals that arrive while a batch is being written go into the next batch, so a burst of
    writes costs one fsync per batch instead of one per command.
    """

    def __init__(self, db: Database, state: CatalogState, node_id: str) -> None:
        self._db = db
        self._state = state
        self._node_id = node_id
        self._queue: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._applied = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader_id(self) -> str | None:
        return self._node_id

    @property
    def term(self) -> int:
        return 1

    async def propose(self, cmd: Command) -> dict[str, Any]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append((encode(cmd), fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        return decode_result(await fut)

    def _apply_entries(self, _conn: object, entries: list[tuple[int, bytes]]) -> list[bytes]:
        return self._state.apply_batch(entries)

    async def _write_batches(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                first = await self._db.run(lambda _c: self._state.applied_index()) + 1
                entries = [(first + i, data) for i, (data, _) in enumerate(batch)]
                results = await self._db.run(self._apply_entries, entries)
            except Exception as exc:  # a failed write fails every proposal of the batch
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def wait_applied(self, index: int) -> None:
        return None
