"""Expired tokens, old instance actions and the uses of expired join tokens are purged by a command
carrying its cutoff, so every replica deletes the same rows; before, they were kept forever (join
token uses until the next join)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hvd.catalog.cmd_compute import ActionFinish, ActionStart
from hvd.catalog.cmd_hosts import JoinTokenUse
from hvd.catalog.cmd_identity import ProjectCreate, RoleGrant, TokenIssue, UserCreate
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.purge import ACTION_RETENTION, TIME_FORMAT, purge_commands, purge_once
from hvd.catalog.service import Catalog
from hvd.catalog.state import CatalogState
from hvd.errors import UpgradeInProgress

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(delta: timedelta) -> str:
    return (NOW + delta).strftime(TIME_FORMAT)


def history() -> list[Command]:
    old, recent = -ACTION_RETENTION - timedelta(days=1), -timedelta(days=1)
    cmds: list[Command] = [
        ProjectCreate(id="p", name="p", created_at=at(-timedelta(days=400))),
        UserCreate(id="u", name="u", password_hash="h", created_at=at(-timedelta(days=400))),
        RoleGrant(user_id="u", project_id="p", role="member"),
        TokenIssue(token_hash="expired", user_id="u", project_id="p", issued_at=at(-timedelta(days=2)),
                   expires_at=at(-timedelta(days=1))),
        TokenIssue(token_hash="valid", user_id="u", project_id="p", issued_at=at(-timedelta(hours=1)),
                   expires_at=at(timedelta(hours=1))),
    ]
    before = int(NOW.timestamp()) - 2 * 86400
    for token, expires in (("spent", NOW - timedelta(days=1)), ("live", NOW + timedelta(hours=1))):
        cmds.append(JoinTokenUse(token_id=token, expires=int(expires.timestamp()), node_id="n4", now=before))
    for name, started, finished in (("old", old, True), ("recent", recent, True), ("running", old, False)):
        cmds.append(ActionStart(id=name, instance_id="i", action="reboot", request_id="r", user_id="u",
                                project_id="p", start_time=at(started)))
        if finished:
            cmds.append(ActionFinish(id=name, finish_time=at(started), result="success"))
    return cmds


def rows(state: CatalogState) -> tuple[list[str], list[str], list[str]]:
    tokens = [r[0] for r in state.conn.execute("SELECT token_hash FROM tokens ORDER BY token_hash")]
    actions = [r[0] for r in state.conn.execute("SELECT id FROM instance_actions ORDER BY id")]
    joins = [r[0] for r in state.conn.execute("SELECT key FROM meta WHERE key LIKE 'join-token:%' ORDER BY key")]
    return tokens, actions, joins


KEPT = (["valid"], ["recent", "running"], ["join-token:live"])


def test_a_purge_removes_the_same_rows_on_every_replica() -> None:
    replicas = [CatalogState(connect(":memory:")) for _ in range(2)]
    entries = [encode(c) for c in [*history(), *purge_commands(NOW)]]
    for state in replicas:
        for index, data in enumerate(entries, start=1):
            state.apply(index, data)
    assert rows(replicas[0]) == rows(replicas[1]) == KEPT


async def test_purge_once_proposes_the_round(tmp_path: Path) -> None:
    catalog = Catalog.open_local(tmp_path / "catalog.db", "n1")
    try:
        for cmd in history():
            await catalog.propose(cmd)
        assert await purge_once(catalog, NOW) == {"token.purge": 1, "instance_action.purge": 1,
                                                  "cluster.join_token_purge": 1}
        assert rows(catalog.state) == KEPT
    finally:
        catalog.close()


class HeldBack:
    """A catalog in a rolling upgrade: level-2 commands are refused, the others go through."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def propose(self, cmd: Command) -> dict[str, Any]:
        if type(cmd).since > 1:
            raise UpgradeInProgress(f"{cmd.type} needs protocol 2", command=cmd.type, required=2, usable=1,
                                    behind=[])
        return await self.catalog.propose(cmd)


async def test_a_purge_during_a_rolling_upgrade_still_purges_what_every_member_applies(tmp_path: Path) -> None:
    catalog = Catalog.open_local(tmp_path / "catalog.db", "n1")
    try:
        for cmd in history():
            await catalog.propose(cmd)
        purged = await purge_once(HeldBack(catalog), NOW)  # type: ignore[arg-type]
        assert purged == {"token.purge": 1, "instance_action.purge": 1, "cluster.join_token_purge": 0}
        assert rows(catalog.state)[2] == ["join-token:live", "join-token:spent"]  # left for a later round
    finally:
        catalog.close()
