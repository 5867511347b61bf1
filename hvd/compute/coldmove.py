"""Cold migration and resize to another host (the seeds' resize flow across hosts).

The source (the owner) stops the guest and keeps its directory as ``<uuid>_resize`` (for a revert),
then asks the destination to receive it: the destination fetches the image base if it lacks it,
pulls the disk files from the source over the signed peer API (qcow2 overlays travel without
their base; each file resumable and sha256-checked), writes a new config drive, plugs the ports
and boots the guest with the new flavor (powered off again if it was stopped). The server is then
VERIFY_RESIZE on the destination: confirm tells the source to drop its copy; revert removes the
destination's copy and has the source boot its kept one with the old flavor. Attached volumes are
reconnected by the host that boots the server (hvd.compute.volumes.connect_here): opened directly
on the volume's own host, else over NBD; an export nobody uses any more then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from hvd.cluster.peers import PeerCaller, PeerErrors, PeerUnreachable
from hvd.compute.lifecycle import PowerState, TaskState
from hvd.compute.manager import RESIZE_SUFFIX, file_sha256
from hvd.compute.progress import ActionReporter, mib
from hvd.compute.revert import Reverter
from hvd.drivers.base import DISK, DISK_EPH0, DISK_SWAP
from hvd.errors import BadRequest, Conflict, DriverError, HvdError, NotFound

if TYPE_CHECKING:
    from hvd.compute.service import ComputeService

log = logging.getLogger(__name__)

RECEIVE_PATH = "/internal/v1/compute/resize/receive"
MANIFEST_PATH = "/internal/v1/compute/resize/manifest"
FILE_PATH = "/internal/v1/compute/resize/file/{id}/{name}"
CONFIRM_PATH = "/internal/v1/compute/resize/confirm"
REVERT_PATH = "/internal/v1/compute/resize/revert"
CONFIRM_HERE_PATH = "/internal/v1/compute/resize/confirm-here"
MOVED_FILES = (DISK, DISK_EPH0, DISK_SWAP)  # the config drive is written anew; logs and XML stay behind
CHUNK = 1 << 20
ATTEMPTS = 5  # a dropped transfer resumes where it stopped, this many times
RECEIVE_TIMEOUT_S = 7200.0


class MoveCall(BaseModel):
    instance_id: str = Field(max_length=64)
    source: str = Field(max_length=255)
    flavor: dict[str, Any] = Field(default_factory=dict)
    was_running: bool = True


class FileInfo(BaseModel):
    name: str
    size: int
    sha256: str


class Manifest(BaseModel):
    files: list[FileInfo]


class Done(BaseModel):
    ok: bool = True


class ColdMoves:
    """Both sides of a cold move between hosts."""

    def __init__(self, service: ComputeService) -> None:
        self.svc = service
        self.peers: PeerCaller | None = None  # set by the daemon in a cluster

    @property
    def host(self) -> str:
        return self.svc.host

    def kept_dir(self, inst_id: str) -> Path:
        return self.svc.manager.instances_path / (inst_id + RESIZE_SUFFIX)

    # --- source -----------------------------------------------------------------------------

    async def send(self, inst: dict[str, Any], dest: str, flavor: dict[str, Any], was_running: bool) -> None:
        """Move ``inst`` to ``dest`` with ``flavor`` (placement's build step on the source). On
        failure the guest is back here as it was and the destination holds nothing."""
        if self.peers is None:
            raise Conflict(f"host {self.host} runs alone (no cluster key): it cannot move servers to {dest}")
        manager = self.svc.manager
        inst_id = inst["id"]
        old_dir = manager.instances_path / inst_id
        keep = self.kept_dir(inst_id)
        async with Reverter() as revert:
            await manager.set_task(inst_id, TaskState.RESIZE_PREP, TaskState.RESIZE_MIGRATING)
            revert.add("task back to resize_prep", lambda: self.svc.update(inst_id, task_state=TaskState.RESIZE_PREP))
            old_power = await manager.driver.get_power_state(inst_id)
            await manager.driver.power_off(inst_id, self.svc.config.compute.shutdown_timeout_s)
            await manager.driver.destroy(inst_id, keep_disks=True)
            revert.add("boot the old copy again", lambda: manager._restore_old(inst, old_power))
            await asyncio.to_thread(old_dir.rename, keep)
            revert.add("restore the old dir", lambda: manager._move_back(old_dir, keep))
            # the destination reconnects the volumes for itself; if the move fails they are this host's again
            revert.add("volumes reached from here again", lambda: self._volumes_back(inst))
            await manager.set_task(inst_id, TaskState.RESIZE_MIGRATING, TaskState.RESIZE_MIGRATED)
            call = MoveCall(instance_id=inst_id, source=self.host, flavor=flavor, was_running=was_running)
            try:
                await self.peers.call(dest, RECEIVE_PATH, call, Done, timeout=RECEIVE_TIMEOUT_S)
            except PeerUnreachable:
                # unknown outcome: make sure the destination holds nothing before the guest returns here
                with contextlib.suppress(HvdError):
                    await self.peers.call(dest, REVERT_PATH, call, Done, timeout=120.0)
                raise
            revert.success()
        if manager.network is not None:  # the destination bound the ports; this host's taps go
            with contextlib.suppress(HvdError):
                await manager.network.changed()

    async def _volumes_back(self, inst: dict[str, Any]) -> None:
        """The move failed: the attachments are reached from this host again (before its old copy
        boots), and exports the destination started for itself stop."""
        await self.svc.volumes.connect_here(inst)

    async def manifest(self, call: MoveCall) -> Manifest:
        keep = self.kept_dir(call.instance_id)
        if not keep.is_dir():
            raise NotFound(f"host {self.host} holds no copy of instance {call.instance_id} to send")
        files = []
        for name in MOVED_FILES:
            path = keep / name
            if path.is_file():
                digest = await asyncio.to_thread(file_sha256, path)
                files.append(FileInfo(name=name, size=path.stat().st_size, sha256=digest))
        return Manifest(files=files)

    async def serve_file(self, request: web.Request, inst_id: str, name: str) -> web.StreamResponse:
        """One kept disk file, from byte ``Range: bytes=N-`` on (a resumed transfer)."""
        if name not in MOVED_FILES or "/" in inst_id:
            raise NotFound(f"no such file {name}")
        path = self.kept_dir(inst_id) / name
        if not path.is_file():
            raise NotFound(f"host {self.host} holds no {name} of instance {inst_id}")
        start = 0
        ranged = request.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-") and ranged[6:-1].isdigit():
            start = int(ranged[6:-1])
        size = path.stat().st_size
        response = web.StreamResponse(status=206 if start else 200,
                                      headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(max(0, size - start))})
        await response.prepare(request)
        with path.open("rb") as fh:
            fh.seek(start)
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def confirm_at_source(self, inst: dict[str, Any]) -> None:
        """Confirm of a cross-host move (run on the destination): the source drops its copy."""
        source = inst["extra"].get("old_host")
        if not source or source == self.host or self.peers is None:
            return
        await self.peers.call(source, CONFIRM_PATH, MoveCall(instance_id=inst["id"], source=source), Done,
                              timeout=120.0)

    async def revert_to_source(self, inst: dict[str, Any], old_flavor: dict[str, Any], was_running: bool) -> str:
        """Revert of a cross-host move (run on the destination): remove the copy here, have the
        source boot its kept one. Returns the source."""
        source = inst["extra"]["old_host"]
        assert self.peers is not None
        await self.svc.manager.cleanup_host(inst)  # the source reconnects the volumes for itself (revert_resize)
        await self.peers.call(source, REVERT_PATH, MoveCall(instance_id=inst["id"], source=source, flavor=old_flavor,
                                                            was_running=was_running), Done, timeout=600.0)
        return str(source)

    async def confirm_here(self, call: MoveCall) -> Done:
        """On the new owner: confirm the move (a drain confirms what it moved at once)."""
        from hvd.compute.lifecycle import Op

        svc = self.svc
        inst = await svc.instance(call.instance_id)
        if inst["host"] != self.host:
            raise Conflict(f"instance {call.instance_id} is on {inst['host']}, not on {self.host}")
        await svc.begin(None, inst, Op.CONFIRM_RESIZE, svc.confirm_resize())
        row = await svc.wait_stable(call.instance_id, svc.config.api.wait_timeout_s)
        if row["vm_state"] == "resized":
            raise DriverError(f"confirming {call.instance_id} failed: {(row['fault'] or {}).get('message')}")
        return Done()

    async def confirmed(self, call: MoveCall) -> Done:
        await asyncio.to_thread(shutil.rmtree, self.kept_dir(call.instance_id), True)
        return Done()

    async def reverted(self, call: MoveCall) -> Done:
        """On the source (revert), or on a destination after a lost receive call (nothing kept)."""
        inst = await self.svc.instance(call.instance_id)
        manager = self.svc.manager
        if not self.kept_dir(call.instance_id).is_dir():
            # a destination asked to forget a half-received copy
            if inst["host"] != self.host:
                await manager.cleanup_host({**inst, "host": self.host})
            return Done()
        if manager.network is not None:
            await manager.network.plug_instance(inst)
        await self.svc.volumes.connect_here(inst)  # before the old copy's definition
        await manager.revert_resize(inst, call.flavor or inst["flavor"], call.was_running)
        return Done()

    # --- destination ------------------------------------------------------------------------

    async def receive(self, call: MoveCall) -> Done:
        inst = await self.svc.instance(call.instance_id)
        if inst["host"] != call.source or inst["task_state"] != TaskState.RESIZE_MIGRATED:
            raise Conflict(f"instance {call.instance_id} is not being moved from {call.source}")
        manager = self.svc.manager
        async with Reverter() as revert:
            # the volumes: opened directly when they live here, else over NBD (before the definition)
            reconnected = await self.svc.volumes.connect_here(inst)
            revert.add("volumes as before", lambda: self.svc.volumes.restore(reconnected))
            spec = await manager.spec_of(inst, flavor=call.flavor or None)  # fetches the image base if missing
            spec.instance_dir.mkdir(mode=0o755, parents=True, exist_ok=False)
            revert.add("remove the received copy", lambda: manager._rmtree(spec.instance_dir))
            await self._pull(call, spec.instance_dir)
            if manager.network is not None:
                await manager.network.plug_instance(inst)
                revert.add("unplug", lambda: manager.network.unplug_instance({**inst, "host": self.host}))
            await manager.write_config_drive(inst, spec)
            await manager.driver.spawn(replace(spec, reuse_disks=True))
            revert.add("destroy the new domain", lambda: manager.driver.destroy(inst["id"], keep_disks=True))
            if not call.was_running:
                await manager.driver.power_off(inst["id"], 0)
            revert.success()
        return Done()

    async def _pull(self, call: MoveCall, into: Path) -> None:
        assert self.peers is not None
        manifest = await self.peers.call(call.source, MANIFEST_PATH, call, Manifest, timeout=600.0)
        reporter = ActionReporter(self.svc.catalog, call.instance_id)
        total = sum(f.size for f in manifest.files)
        done = 0
        for info in manifest.files:
            await self._pull_file(call, info, into / info.name)
            done += info.size
            reporter.report(f"copied {info.name} from {call.source}: {mib(done)} of {mib(total)}", force=True)
            self.svc.events.publish("instance.resize.copied", instance_id=call.instance_id, file=info.name,
                                    bytes=info.size)
        await reporter.flush()

    async def _pull_file(self, call: MoveCall, info: FileInfo, dest: Path) -> None:
        assert self.peers is not None
        partial = dest.with_name(dest.name + ".partial")
        path = FILE_PATH.format(id=call.instance_id, name=info.name)
        base = await self.peers.url_of(call.source)
        for attempt in range(1, ATTEMPTS + 1):
            have = partial.stat().st_size if partial.exists() else 0
            headers = self.peers.signed("GET", path, b"")
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                async with self.peers.session.get(base + path, headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
                    if resp.status not in (200, 206):
                        raise DriverError(f"host {call.source} answered HTTP {resp.status} for {info.name}")
                    with partial.open("ab" if resp.status == 206 else "wb") as fh:
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            await asyncio.to_thread(fh.write, chunk)
                        await asyncio.to_thread(os.fsync, fh.fileno())
                break
            except PeerErrors as exc:
                if attempt == ATTEMPTS:
                    raise PeerUnreachable(f"copying {info.name} from {call.source} failed: {exc}") from exc
                log.warning("copy of %s from %s broke off (%s); resuming", info.name, call.source, exc)
        got = await asyncio.to_thread(file_sha256, partial)
        if got != info.sha256 or partial.stat().st_size != info.size:
            partial.unlink(missing_ok=True)
            raise BadRequest(f"{info.name} from {call.source} arrived with sha256 {got}, expected {info.sha256}")
        partial.rename(dest)


def was_running(inst: dict[str, Any]) -> bool:
    return int(inst["power_state"]) == PowerState.RUNNING
