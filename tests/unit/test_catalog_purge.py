"""Expired tokens and old instance actions are purged by a command carrying its cutoff, so every
replica deletes the same rows; before, both tables grew forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hvd.catalog.cmd_compute import ActionFinish, ActionStart
from hvd.catalog.cmd_identity import ProjectCreate, RoleGrant, TokenIssue, UserCreate
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.purge import ACTION_RETENTION, TIME_FORMAT, purge_commands, purge_once
from hvd.catalog.service import Catalog
from hvd.catalog.state import CatalogState

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
    for name, started, finished in (("old", old, True), ("recent", recent, True), ("running", old, False)):
        cmds.append(ActionStart(id=name, instance_id="i", action="reboot", request_id="r", user_id="u",
                                project_id="p", start_time=at(started)))
        if finished:
            cmds.append(ActionFinish(id=name, finish_time=at(started), result="success"))
    return cmds


def rows(state: CatalogState) -> tuple[list[str], list[str]]:
    tokens = [r[0] for r in state.conn.execute("SELECT token_hash FROM tokens ORDER BY token_hash")]
    actions = [r[0] for r in state.conn.execute("SELECT id FROM instance_actions ORDER BY id")]
    return tokens, actions


def test_a_purge_removes_the_same_rows_on_every_replica() -> None:
    replicas = [CatalogState(connect(":memory:")) for _ in range(2)]
    entries = [encode(c) for c in [*history(), *purge_commands(NOW)]]
    for state in replicas:
        for index, data in enumerate(entries, start=1):
            state.apply(index, data)
    assert rows(replicas[0]) == rows(replicas[1]) == (["valid"], ["recent", "running"])


async def test_purge_once_proposes_the_round(tmp_path: Path) -> None:
    catalog = Catalog.open_local(tmp_path / "catalog.db", "n1")
    try:
        for cmd in history():
            await catalog.propose(cmd)
        assert await purge_once(catalog, NOW) == {"token.purge": 1, "instance_action.purge": 1}
        assert rows(catalog.state) == (["valid"], ["recent", "running"])
    finally:
        catalog.close()
