"""Forgetting what has expired: tokens past their expiry and instance actions older than the
retention. Deterministic on every replica: the leader proposes one purge command that carries its
cutoff, and apply deletes by that cutoff (never by the replica's own clock)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from hvd.bounds import Int64
from hvd.catalog.cmd_identity import TokenPurge
from hvd.catalog.commands import Command, Result, handles
from hvd.errors import HvdError, UpgradeInProgress
from hvd.iofaults import describe

if TYPE_CHECKING:
    from hvd.catalog.service import Catalog

log = logging.getLogger(__name__)

ACTION_RETENTION = timedelta(days=90)  # Nova keeps actions until the instance is archived; we keep 90 days
PURGE_INTERVAL_S = 3600.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # how every timestamp in the catalog is written (sortable text)


class InstanceActionPurge(Command):
    """Forget finished instance actions whose finish_time is before `before`."""

    type: Literal["instance_action.purge"] = "instance_action.purge"
    before: str


@handles(InstanceActionPurge)
def instance_action_purge(conn: sqlite3.Connection, cmd: InstanceActionPurge) -> Result:
    cur = conn.execute("DELETE FROM instance_actions WHERE finish_time IS NOT NULL AND finish_time < ?",
                       (cmd.before,))
    return {"purged": cur.rowcount}


class JoinTokenPurge(Command):
    """Forget the uses of join tokens that expired before ``now`` (unix seconds): an expired token
    is refused before its use is looked up (hvd/api/internal_join.py)."""

    since = 2  # catalog protocol level (hvd/catalog/protocol.py): new in hvd 0.2.0
    type: Literal["cluster.join_token_purge"] = "cluster.join_token_purge"
    now: Int64


@handles(JoinTokenPurge)
def join_token_purge(conn: sqlite3.Connection, cmd: JoinTokenPurge) -> Result:
    cur = conn.execute("DELETE FROM meta WHERE key LIKE 'join-token:%' AND CAST(value AS INTEGER) < ?", (cmd.now,))
    return {"purged": cur.rowcount}


def purge_commands(now: datetime, action_retention: timedelta = ACTION_RETENTION) -> list[Command]:
    """The commands of one purge round at `now` (UTC), cutoffs included."""
    return [
        TokenPurge(now=now.strftime(TIME_FORMAT)),
        InstanceActionPurge(before=(now - action_retention).strftime(TIME_FORMAT)),
        JoinTokenPurge(now=int(now.timestamp())),
    ]


async def purge_once(catalog: Catalog, now: datetime) -> dict[str, int]:
    """Propose one purge round; how many rows each command removed. A command some member's
    older build cannot apply yet (a rolling upgrade) is left for a later round."""
    out = {}
    for cmd in purge_commands(now):
        try:
            out[cmd.type] = int((await catalog.propose(cmd))["purged"])
        except UpgradeInProgress:
            out[cmd.type] = 0
    return out


async def run_purges(catalog: Catalog, interval: float = PURGE_INTERVAL_S) -> None:
    """Every `interval`, on the leader only (one proposal per round for the whole cluster), until
    cancelled. A failed round is logged and tried again at the next one."""
    while True:
        await asyncio.sleep(interval)
        if not catalog.coordinator.is_leader:
            continue
        try:
            purged = await purge_once(catalog, datetime.now(UTC))
        except Exception as exc:  # a purge can wait for the next round; it must not end the loop
            log.warning("purge round failed: %s", exc.message if isinstance(exc, HvdError) else describe(exc),
                        exc_info=not isinstance(exc, HvdError))
            continue
        if any(purged.values()):
            log.info("purged %s", ", ".join(f"{n} by {t}" for t, n in purged.items()))
