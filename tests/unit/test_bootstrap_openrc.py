"""The generated admin password reaches the disk (fsynced, 0600) before the admin user is committed,
so a crash in between cannot leave an admin nobody knows the password of."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hvd.catalog.cmd_identity import UserCreate
from hvd.catalog.commands import Command
from hvd.catalog.service import Catalog
from hvd.errors import Conflict
from hvd.identity.passwords import verify_password
from hvd.identity.service import IdentityService


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityService]:
    catalog = Catalog.open_local(tmp_path / "catalog.db", "n1")
    try:
        yield IdentityService(catalog, 3600)
    finally:
        catalog.close()


def _crash_after_the_admin(identity: IdentityService, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    real = identity.catalog.propose

    async def propose(cmd: Command) -> dict[str, Any]:
        result = await real(cmd)
        if isinstance(cmd, UserCreate) and cmd.name == "admin":
            raise error  # the process dies here, after the admin's commit
        return result

    monkeypatch.setattr(identity.catalog, "propose", propose)


async def test_a_crash_after_the_admin_commit_leaves_its_password_on_disk(
        identity: IdentityService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openrc = tmp_path / "openrc"
    _crash_after_the_admin(identity, monkeypatch, RuntimeError("power cut"))
    with pytest.raises(RuntimeError):
        await identity.bootstrap("", openrc, "http://127.0.0.1:8774")
    pending = tmp_path / "openrc.new"
    assert "HVD_PASSWORD=" in pending.read_text()
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    password = pending.read_text().split("HVD_PASSWORD=")[1].split()[0]
    row = identity.catalog.state.conn.execute("SELECT password_hash FROM users WHERE name='admin'").fetchone()
    assert verify_password(password, row[0])


async def test_a_finished_bootstrap_leaves_only_openrc(identity: IdentityService, tmp_path: Path) -> None:
    openrc = tmp_path / "openrc"
    assert await identity.bootstrap("", openrc, "http://127.0.0.1:8774")
    assert stat.S_IMODE(openrc.stat().st_mode) == 0o600 and "HVD_PASSWORD=" in openrc.read_text()
    assert not (tmp_path / "openrc.new").exists()


async def test_losing_the_bootstrap_race_leaves_no_password_file(
        identity: IdentityService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_after_the_admin(identity, monkeypatch, Conflict("another member bootstrapped"))
    with pytest.raises(Conflict):
        await identity.bootstrap("", tmp_path / "openrc", "http://127.0.0.1:8774")
    assert not (tmp_path / "openrc.new").exists() and not (tmp_path / "openrc").exists()
