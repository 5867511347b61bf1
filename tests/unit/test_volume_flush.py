"""A created volume's data is flushed to stable storage once it is recorded available (a real
file backend and qemu-img; the catalog is a stand-in that records what is proposed)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from hvd.catalog.commands import Command
from hvd.config import Config
from hvd.events import EventBus
from hvd.storage.volumes import service
from hvd.storage.volumes.file_backend import FileBackend
from hvd.storage.volumes.service import VolumeService


class RecordingBackend(FileBackend):
    def __init__(self, root: Path) -> None:
        super().__init__("file", root)
        self.flushed: list[str] = []

    async def flush(self, volume_id: str) -> None:
        await super().flush(volume_id)  # the real fdatasync: fails if the file is not there
        self.flushed.append(volume_id)


class StandInCatalog:
    def __init__(self) -> None:
        self.proposed: list[Command] = []

    async def read(self, fn: Any, *args: Any) -> Any:
        return {"project_id": "p1"}  # the one read a create makes here: the owner, for the event

    async def propose(self, cmd: Command) -> dict[str, Any]:
        self.proposed.append(cmd)
        return {"status": "available" if getattr(cmd, "ok", False) else "error"}


@pytest.fixture(autouse=True)
def no_flush_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "FLUSH_DELAY_S", 0.0)


def run_create(tmp_path: Path, size_gb: int) -> tuple[RecordingBackend, StandInCatalog, str]:
    backend = RecordingBackend(tmp_path / "volumes")
    catalog = StandInCatalog()
    config = Config.model_validate({"host": {"name": "h0"}, "volumes": {"backends": []}})
    vs = VolumeService(config, catalog, EventBus(), {"file": backend}, tmp_path / "backups")  # type: ignore[arg-type]
    vid = str(uuid.uuid4())
    row = {"id": vid, "status": "creating", "host": "h0", "backend": "file", "size_gb": size_gb,
           "source_image_id": None, "source_snapshot_id": None, "source_volume_id": None}

    async def go() -> None:
        await vs._volume_work(row)
        await asyncio.gather(*vs._running.values())  # the flush started after the create was recorded

    asyncio.run(go())
    return backend, catalog, vid


def test_a_created_volume_is_flushed_after_it_is_recorded_available(tmp_path: Path) -> None:
    backend, catalog, vid = run_create(tmp_path, 1)
    assert [(c.type, getattr(c, "ok", None)) for c in catalog.proposed] == [("volume.create_finish", True)]
    assert backend.flushed == [vid] and backend.path(vid).stat().st_size == 1 << 30


def test_a_failed_create_flushes_nothing(tmp_path: Path) -> None:
    backend, catalog, _ = run_create(tmp_path, 1 << 40)  # 1 ZiB: no filesystem holds it
    assert [getattr(c, "ok", None) for c in catalog.proposed] == [False]
    assert backend.flushed == []
