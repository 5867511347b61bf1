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

    async def propose(self, cmd: Command) -> dict[str, Any]:
        return await self.coordinator.propose(cmd)

    async def read(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs) -> T:
        return await self.db.run(fn, *args, **kw)

    def close(self) -> None:
        self.db.close()
