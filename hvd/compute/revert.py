"""Undo registered side effects when a later step fails (Incus's revert pattern)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[object]]


class Reverter:
    """`async with Reverter() as r: ...; r.add(undo)`; on an exception every undo runs, newest first.

    Call `r.success()` at the end of the happy path to keep the effects.
    """

    def __init__(self) -> None:
        self._undos: list[tuple[str, Undo]] = []

    def add(self, what: str, undo: Undo) -> None:
        self._undos.append((what, undo))

    def success(self) -> None:
        self._undos.clear()

    async def run(self) -> None:
        while self._undos:
            what, undo = self._undos.pop()
            try:
                await undo()
            except Exception:  # an undo that fails must not hide the original error or stop the rest
                log.exception("undo of %s failed; reconcile will clean up", what)

    async def __aenter__(self) -> Reverter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            await self.run()
