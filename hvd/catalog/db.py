"""The catalog's SQLite connection, owned by one worker thread.

apply() and queries are plain synchronous functions over `sqlite3.Connection` (pure over the
database, easy to test); this adapter runs them in a dedicated thread so the event loop never
blocks on SQLite. One thread = one connection = serialised access without locks. (aiosqlite
does the same per statement; running a whole apply or query per hop costs one thread switch
instead of one per statement.)
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from hvd.private_files import private_file

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger(__name__)


def rollback_keeping_error(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, without raising.

    Called while another error is being handled: after SQLITE_FULL or SQLITE_IOERR, SQLite may have
    rolled the transaction back by itself, and a ROLLBACK that raised ("no transaction is active",
    or the disk error again) would replace the error the caller needs to see.
    """
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("ROLLBACK failed too (%s); reporting the original error", exc)


def connect(path: Path | str, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open a catalog database with the pragmas hvd relies on (WAL, foreign keys); a file on disk
    is private (0600: it holds password hashes and user data)."""
    if str(path) != ":memory:" and not str(path).startswith("file:"):
        private_file(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Database:
    """A sqlite3 connection plus the single thread allowed to use it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-db", initializer=self._mark)
        self._thread: int | None = None

    def _mark(self) -> None:
        self._thread = threading.get_ident()

    async def run(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """Run `fn(conn, *args)` in the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self.conn, *args, **kw))

    @property
    def executor(self) -> Executor:
        """The database thread, for callers that run whole functions there (the Raft apply)."""
        return self._pool

    def call(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """Run `fn(conn, *args)` in the database thread and block until it returns.

        For other worker threads (the Raft driver's I/O thread), never for the event loop. Called
        from the database thread itself it runs inline, since waiting on its own queue would deadlock.
        """
        if threading.get_ident() == self._thread:
            return fn(self.conn, *args, **kw)
        return self._pool.submit(fn, self.conn, *args, **kw).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.conn.close()
