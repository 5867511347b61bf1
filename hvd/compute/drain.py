"""Host maintenance: drain empties a host (it runs on that host, the owner of what it moves).

The host is disabled first (placement stops choosing it), then its servers leave one at a time:
running and paused ones by live migration, stopped ones (and running ones when the driver cannot
move them live) by cold migration, confirmed on their new host at once. The host stays disabled;
its disabled reason says whether the drain finished or what was left.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hvd.api.context import RequestContext
from hvd.catalog.cmd_hosts import HostSetEnabled
from hvd.catalog.sql import fetch_all
from hvd.compute.coldmove import CONFIRM_HERE_PATH, MoveCall
from hvd.compute.coldmove import Done as MoveDone
from hvd.compute.lifecycle import Op, VmState
from hvd.errors import HvdError

if TYPE_CHECKING:
    from hvd.compute.service import ComputeService

log = logging.getLogger(__name__)


class DrainReport(BaseModel):
    host: str
    moved: dict[str, str]  # server -> the host it went to
    left: dict[str, str]  # server -> why it is still here


def _servers_of(conn: Any, host: str) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT * FROM instances WHERE host=? AND deleted_at IS NULL ORDER BY created_at, id",
                     (host,))


class Drains:
    def __init__(self, service: ComputeService) -> None:
        self.svc = service

    async def drain(self, ctx: RequestContext) -> DrainReport:
        svc = self.svc
        host = svc.host
        await svc.catalog.propose(HostSetEnabled(name=host, enabled=False, reason="draining"))
        moved: dict[str, str] = {}
        left: dict[str, str] = {}
        timeout = svc.config.api.wait_timeout_s
        for inst in await svc.catalog.read(_servers_of, host):
            sid = inst["id"]
            try:
                if inst["task_state"] is not None:
                    raise _Left(f"busy ({inst['task_state']})")
                vm_state = VmState(inst["vm_state"])
                live = svc.manager.driver.capabilities.supports_live_migration
                if vm_state in (VmState.ACTIVE, VmState.PAUSED) and live:
                    svc.migrations.check(inst, "auto")
                    await svc.begin(ctx, inst, Op.LIVE_MIGRATE, svc.migrations.run(None, "auto"))
                elif vm_state in (VmState.ACTIVE, VmState.STOPPED):
                    await svc.begin(ctx, inst, Op.MIGRATE, svc.resize(dict(inst["flavor"]), migrate=True))
                else:
                    raise _Left(f"a {vm_state.value} server is not moved by a drain")
                row = await svc.wait_stable(sid, timeout)
                if row["host"] == host:
                    raise _Left((row["fault"] or {}).get("message") or "it did not move")
                if row["vm_state"] == VmState.RESIZED:
                    await self._confirm_at(row["host"], sid)
                moved[sid] = str(row["host"])
                log.info("drain of %s: %s moved to %s", host, sid, row["host"])
            except _Left as why:
                left[sid] = str(why)
            except HvdError as exc:
                left[sid] = exc.message
        reason = "drained" if not left else f"drain left {len(left)} server(s): see the drain report"
        await svc.catalog.propose(HostSetEnabled(name=host, enabled=False, reason=reason))
        svc.events.publish("host.drained", host=host, moved=len(moved), left=len(left))
        return DrainReport(host=host, moved=moved, left=left)

    async def _confirm_at(self, owner: str, sid: str) -> None:
        peers = self.svc.moves.peers
        assert peers is not None
        await peers.call(owner, CONFIRM_HERE_PATH, MoveCall(instance_id=sid, source=self.svc.host), MoveDone,
                         timeout=self.svc.config.api.wait_timeout_s)


class _Left(Exception):
    """Why a server stays on the drained host."""
