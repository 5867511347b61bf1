"""The catalog, the Raft log and the image store are private whatever the umask, and files an older
hvd left world-readable are tightened at start-up."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hvd.catalog.db import connect
from hvd.cluster.raft.storage import SqliteStorage
from hvd.storage.image_store import ImageStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # how hvd runs outside the systemd unit (no UMask=0077)
    try:
        yield
    finally:
        os.umask(old)


async def _chunks() -> AsyncIterator[bytes]:
    yield b"image data"


@pytest.mark.usefixtures("open_umask")
async def test_new_files_are_private(tmp_path: Path) -> None:
    conn = connect(tmp_path / "catalog.db")
    conn.execute("CREATE TABLE t (x)")
    storage = SqliteStorage(tmp_path / "raft.db")
    store = ImageStore(tmp_path / "images")
    await store.write("img", _chunks(), 1 << 20)
    try:
        assert mode(tmp_path / "catalog.db") == 0o600
        assert mode(tmp_path / "catalog.db-wal") == 0o600
        assert mode(tmp_path / "raft.db") == 0o600
        assert mode(tmp_path / "images") == 0o700
        assert mode(store.path("img")) == 0o600
    finally:
        conn.close()
        storage.close()


@pytest.mark.usefixtures("open_umask")
def test_files_an_older_hvd_left_readable_are_tightened(tmp_path: Path) -> None:
    for name in ("catalog.db", "catalog.db-wal", "raft.db"):
        (tmp_path / name).touch(mode=0o644)
        os.chmod(tmp_path / name, 0o644)
    (tmp_path / "images").mkdir(mode=0o755)
    connect(tmp_path / "catalog.db").close()
    SqliteStorage(tmp_path / "raft.db").close()
    ImageStore(tmp_path / "images")
    assert [mode(tmp_path / n) for n in ("catalog.db", "catalog.db-wal", "raft.db", "images")] == \
        [0o600, 0o600, 0o600, 0o700]


async def test_a_stored_image_survives_a_power_loss_its_rename_too(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr("hvd.storage.image_store.fsync_dir", lambda path: synced.append(Path(path)))
    store = ImageStore(tmp_path / "images")
    await store.write("img", _chunks(), 1 << 20)
    assert store.path("img").read_bytes() == b"image data" and synced == [tmp_path / "images"]
