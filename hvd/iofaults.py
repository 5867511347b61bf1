"""Which failures belong to this node's own disk and which to the replicated data (pure).

A command that fails because of its data (an integer SQLite cannot store, a constraint, a value a
handler rejects) fails the same way on every replica, so the failure becomes the command's result.
A failure of this node's environment (disk full, I/O error, read-only or corrupt file, out of
memory, a busy lock) happens on this replica only: turning it into a result would make the replicas
diverge, so it is raised to the Raft driver, which waits for space (a full disk), retries a few
times (anything else local) or gives up and ends the process so that systemd restarts it.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import StrEnum

SQLITE_FULL = 13
# primary result codes of a node's environment: abort, busy, locked, nomem, readonly, interrupt,
# ioerr, corrupt, notfound, full, cantopen, protocol, nolfs, notadb (permission = 3, internal = 2)
_LOCAL_SQLITE_CODES = frozenset({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 22, 26})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

MAX_LOCAL_RETRIES = 5  # a transient I/O error (a busy lock, a flaky disk) gets this many more tries
MAX_BACKOFF_S = 5.0


class Recovery(StrEnum):
    """What a node does when a step that must succeed (persist, apply) fails."""

    WAIT_FOR_SPACE = "wait_for_space"  # refuse new writes (507) and retry until space returns
    RETRY = "retry"  # retry with backoff, then give up
    GIVE_UP = "give_up"  # end the process loudly (a bug, or a local failure that persists)


def sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of ``exc`` (None when it carries none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, ENOSPC or EDQUOT: the node's disk (or quota) has no room left."""
    if isinstance(exc, sqlite3.Error):
        return sqlite_code(exc) == SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def is_node_local(exc: BaseException) -> bool:
    """True when ``exc`` comes from this node's environment rather than from the data being applied.

    Data errors (IntegrityError, DataError, a binding OverflowError, ValueError, TypeError, a SQL
    error in a handler) are deterministic: the same code fails the same way on every replica.
    """
    if isinstance(exc, OSError | MemoryError):
        return True
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError | sqlite3.ProgrammingError):
        return False
    if isinstance(exc, sqlite3.Error):
        code = sqlite_code(exc)
        # an OperationalError without a code comes from the sqlite3 module itself (closed database)
        return code is None or code in _LOCAL_SQLITE_CODES
    return False


def recovery_of(exc: BaseException, failures: int) -> Recovery:
    """How to recover after the ``failures``-th consecutive failure (counting from 1) of a step."""
    if is_disk_full(exc):
        return Recovery.WAIT_FOR_SPACE
    if is_node_local(exc) and failures <= MAX_LOCAL_RETRIES:
        return Recovery.RETRY
    return Recovery.GIVE_UP


def backoff_s(failures: int) -> float:
    """Seconds to wait before the next attempt: 0.05 s doubling up to MAX_BACKOFF_S."""
    return min(0.05 * float(2 ** min(failures - 1, 16)), MAX_BACKOFF_S)


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message``, cut to ``limit`` characters (messages may quote user data)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
