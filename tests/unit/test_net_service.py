"""NetworkService against an in-memory catalog and the fake host: start-up crash repair removes
each orphan on its own, so one that cannot be removed neither stops start-up nor the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.state import CatalogState, decode_result
from hvd.config import load_config
from hvd.net import steps as s
from hvd.net.proc import NetError
from hvd.net.service import FakeHostNetwork, NetworkService
from hvd.net.state import ObservedLink
from tests.conftest import free_port, write_config


class MemoryCatalog:
    """The two calls NetworkService makes, over a CatalogState in memory."""

    def __init__(self) -> None:
        self.state = CatalogState(connect(":memory:"))
        self.index = 0

    async def read(self, fn: Any, *args: Any) -> Any:
        return fn(self.state.conn, *args)

    async def propose(self, cmd: Command) -> dict[str, Any]:
        self.index += 1
        return decode_result(self.state.apply(self.index, encode(cmd)))


async def test_an_orphan_that_cannot_be_removed_does_not_stop_start_up(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_config(tmp_path / "hvd", free_port()))
    adapter = FakeHostNetwork()
    host = adapter.host
    for name in ("brqstuck-0000", "brqloose-0000"):  # bridges a crashed run left behind
        host.links[name] = ObservedLink(name, kind="bridge", up=True)
    real = host._DeleteLink

    def busy(step: s.DeleteLink) -> None:
        if step.name == "brqstuck-0000":
            raise NetError("Device or resource busy")
        real(step)

    monkeypatch.setattr(host, "_DeleteLink", busy)
    service = NetworkService(config, MemoryCatalog(), adapter, None)  # type: ignore[arg-type]
    await service.start()
    try:
        assert "brqloose-0000" not in host.links, "the other orphan was removed"
        assert "brqstuck-0000" in host.links
    finally:
        await service.stop()
