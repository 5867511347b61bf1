"""The catalog as the rest of hvd sees it: propose commands, run local reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.commands import Command
from hvd.catalog.coordinator import Coordinator, LocalCoordinator
from hvd.catalog.db import Database, connect
from hvd.catalog.state import CatalogState

T = TypeVar("T")
P = ParamSpec("P")


class Catalog:
    """Writes go through the coordinator; reads are local queries in the database thread."""

    def __init__(self, db: Database, state: CatalogState, coordinator: Coordinator) -> None:
        self.db = db
        self.state = state
        self.coordinator = coordinator

    @classmethod
    def open_local(cls, path: Path | str, node_id: str) -> Catalog:
        """A one-voter catalog at `path` (created and migrated if new)."""
        db = Database(connect(path))
        state = CatalogState(db.conn)
        return cls(db, state, LocalCoordinator(db, state, node_id))

    @classmethod
    def open_raft(cls, path: Path | str, make_coordinator: Callable[[Database, CatalogState], Coordinator]) -> Catalog:
        """A replicated catalog at `path`, changed only through the coordinator built by
        `make_coordinator(db, state)` (a Raft member that applies committed commands here).

        The catalog commits with synchronous=NORMAL: the Raft log is fsynced (FULL) before anything
        is applied, so a power loss that drops the catalog's last transactions only rolls it back
        to an earlier consistent state (WAL; the applied index is in the same transaction), and
        Raft applies the lost tail again from the log at start-up.
        """
        db = Database(connect(path, synchronous="NORMAL"))
        state = CatalogState(db.conn)
        return cls(db, state, make_coordinator(db, state))

    async def propose(self, cmd: Command) -> dict[str, Any]:
        return await self.coordinator.propose(cmd)

    async def read(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs) -> T:
        return await self.db.run(fn, *args, **kw)

    def close(self) -> None:
        self.db.close()
