"""The catalog as a replicated state machine over SQLite.

`apply(index, data)` decodes one command, runs its handler inside a savepoint and records the
applied index in the same transaction: a crash never applies a command twice or half. A handler's
typed error rolls back the command's own writes, and the error becomes the command's result —
the same on every replica. `snapshot()`/`restore()` copy the whole database for Raft.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvd.catalog import commands
from hvd.catalog.db import rollback_keeping_error
from hvd.catalog.schema import migrate
from hvd.errors import BadRequest, Conflict, HvdError
from hvd.iofaults import describe, is_node_local

log = logging.getLogger(__name__)


def encode_result(result: dict[str, Any] | None = None, error: HvdError | None = None) -> bytes:
    # default=str: a value JSON cannot hold (a handler's bug) must not make apply raise on every replica
    if error is not None:
        return json.dumps({"error": error.to_wire()}, default=str).encode()
    return json.dumps({"ok": result}, default=str).encode()


def decode_result(data: bytes) -> dict[str, Any]:
    """Return the command's result, or raise the typed error apply recorded."""
    raw = json.loads(data)
    if "error" in raw:
        raise HvdError.from_wire(raw["error"])
    result: dict[str, Any] = raw["ok"]
    return result


def read_applied_index(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='applied_index'").fetchone()[0])


def refusal_of(exc: Exception, cmd_type: str) -> HvdError:
    """The typed error result of a command whose apply raised ``exc`` because of its data."""
    if isinstance(exc, HvdError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        # a constraint a handler did not pre-check: still a deterministic, typed refusal
        return Conflict(f"conflicts with existing data: {describe(exc)}")
    return BadRequest(f"the catalog cannot apply {cmd_type or 'this command'}: {describe(exc)}")


def _apply_one(conn: sqlite3.Connection, data: bytes) -> tuple[bytes, str]:
    """(encoded result, command type; "" when the command could not be decoded).

    Never raises because of the command's data: any such failure (a handler's typed error, a
    constraint, an integer SQLite cannot store, a bug a value triggers) rolls back the command's
    own writes and becomes its result, the same on every replica. Failures of this node's disk are
    raised (hvd.iofaults): as a result they would differ between replicas.
    """
    try:
        cmd = commands.decode(data)
    except Exception as exc:
        if is_node_local(exc):
            raise
        return encode_result(error=refusal_of(exc, "")), ""
    conn.execute("SAVEPOINT cmd")
    try:
        encoded = encode_result(commands.dispatch(conn, cmd))
    except Exception as exc:
        if is_node_local(exc):
            raise  # apply_batch rolls the whole transaction back; the driver retries or stops
        if not isinstance(exc, HvdError | sqlite3.IntegrityError):
            log.warning("command %s failed on its data: %s", cmd.type, describe(exc))
        conn.execute("ROLLBACK TO cmd")
        conn.execute("RELEASE cmd")
        return encode_result(error=refusal_of(exc, cmd.type)), cmd.type
    conn.execute("RELEASE cmd")
    return encoded, cmd.type


PROPOSAL_MEMORY = 100_000  # entries during which a re-sent proposal is recognised (minutes at full load)
PROPOSAL_PRUNE_EVERY = 1024


def _proposal_result(conn: sqlite3.Connection, proposal_id: bytes | None) -> bytes | None:
    if proposal_id is None:
        return None
    row = conn.execute("SELECT result FROM proposals WHERE id=?", (proposal_id,)).fetchone()
    return None if row is None else bytes(row[0])


# commands after which a host's networking may have to change (every replica converges at once)
NETWORK_COMMAND_PREFIXES = ("network.", "subnet.", "port.", "router.", "floating_ip.", "security_group",
                            "host.set_vtep")

# commands after which a cached token validation (revocation, roles, disabling) or a cached
# peer certificate revocation (hvd/cluster/cert_trust.py) may be wrong
IDENTITY_COMMANDS = frozenset({
    "token.revoke", "token.purge", "user.update", "user.delete", "project.update", "project.delete",
    "role.grant", "role.revoke", "cluster.cert_revoke",
})


class CatalogState:
    """StateMachine over one SQLite connection (used from the catalog's database thread only)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # grows after every committed identity change, on every replica: caches keyed on it
        # (token validation) can never serve a revoked token
        self.identity_generation = 0
        # called (from the database thread) after a batch that holds a networking command commits
        self.on_network_change: Callable[[], None] | None = None
        migrate(conn)

    def applied_index(self) -> int:
        return read_applied_index(self.conn)

    def apply(self, index: int, data: bytes) -> bytes:
        """StateMachine.apply: Raft indices skip the entries that are not commands (leader no-ops,
        membership changes), so any index above the applied one is accepted."""
        return self.apply_batch([(index, data)], contiguous=False)[0]

    def apply_batch(self, entries: list[tuple[int, bytes]], contiguous: bool = True) -> list[bytes]:
        """Apply entries in ONE transaction (group commit: one fsync for the batch); with
        `contiguous`, each index must follow the previous one (a gap is a bug upstream)."""
        conn = self.conn
        rollback_keeping_error(conn)  # a failed attempt's transaction may still be open: start clean
        conn.execute("BEGIN IMMEDIATE")
        try:
            applied = read_applied_index(conn)
            results = []
            identity_changed = False
            network_changed = False
            for index, data in entries:
                if index <= applied:
                    # already applied before a crash/restart: replaying must not apply twice
                    results.append(encode_result(error=HvdError(f"entry {index} already applied")))
                    continue
                if contiguous and index != applied + 1:
                    raise RuntimeError(f"catalog gap: applied {applied}, got entry {index}")
                proposal_id, command = commands.split_identified(data)
                seen = _proposal_result(conn, proposal_id)
                if seen is not None:
                    results.append(seen)  # a re-sent proposal: the first one's result, nothing re-applied
                else:
                    result, cmd_type = _apply_one(conn, command)
                    identity_changed = identity_changed or cmd_type in IDENTITY_COMMANDS
                    network_changed = network_changed or cmd_type.startswith(NETWORK_COMMAND_PREFIXES)
                    results.append(result)
                    if proposal_id is not None:
                        conn.execute("INSERT INTO proposals (id, idx, result) VALUES (?, ?, ?)",
                                     (proposal_id, index, result))
                if index // PROPOSAL_PRUNE_EVERY != applied // PROPOSAL_PRUNE_EVERY:
                    # by index, so every replica forgets the same ids at the same entry
                    conn.execute("DELETE FROM proposals WHERE idx <= ?", (index - PROPOSAL_MEMORY,))
                applied = index
            conn.execute("UPDATE meta SET value=? WHERE key='applied_index'", (str(applied),))
            conn.execute("COMMIT")
        except BaseException:
            rollback_keeping_error(conn)  # after SQLITE_FULL, SQLite may have rolled back already
            raise
        if identity_changed:
            self.identity_generation += 1
        if network_changed and self.on_network_change is not None:
            self.on_network_change()
        return results

    def snapshot(self) -> tuple[int, bytes]:
        """A consistent copy of the whole database and the index it reflects."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "snap.db"
            dest = sqlite3.connect(str(path))
            try:
                self.conn.backup(dest)
                # the copy inherits WAL mode from its header, which an in-memory database cannot open
                dest.execute("PRAGMA journal_mode=DELETE")
            finally:
                dest.close()
            data = path.read_bytes()
        copy = sqlite3.connect(":memory:")
        copy.deserialize(data)
        index = read_applied_index(copy)
        copy.close()
        return index, data

    def restore(self, index: int, data: bytes) -> None:
        """Replace the whole database with a snapshot taken at `index`."""
        src = sqlite3.connect(":memory:")
        try:
            src.deserialize(data)
            if read_applied_index(src) != index:
                raise ValueError("snapshot index does not match its contents")
            src.backup(self.conn)
        finally:
            src.close()
        migrate(self.conn)
        self.identity_generation += 1
        if self.on_network_change is not None:
            self.on_network_change()
