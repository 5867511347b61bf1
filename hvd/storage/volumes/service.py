"""The volume service of one host: proposes volume state changes and does the work on this host's
backends in steps, each recorded through the catalog.

The catalog is the source of truth and a request only a wake-up: whichever host takes an API
request commits the transition (volume → creating, deleting, extending, backing-up, ...), and the
volume's host does the work. ``pickup`` (every PICKUP_INTERVAL_S and right after a local request)
starts every transitional volume, snapshot and backup of this host that is not already running,
so a request taken by another host, or one cut by a crash, is (re)done here from its first step:
each step is idempotent (a create removes what a cut attempt left before starting again).
Online extends (extending, previous_status in-use) belong to the compute side and are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from hvd.catalog import cmd_volume_backups as cvb
from hvd.catalog import cmd_volumes as cv
from hvd.catalog.commands import Command
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.cluster.peers import PeerCaller
from hvd.config import Config
from hvd.errors import (
    CapacityExceeded,
    Conflict,
    HvdError,
    NotFound,
    NotImplementedYet,
    NoValidHost,
    Timeout,
    UpgradeInProgress,
)
from hvd.events import EventBus
from hvd.faults import checkpoint
from hvd.identity.service import now_iso
from hvd.private_files import fsync_dir, private_dir
from hvd.storage import qemu_img
from hvd.storage.image_store import ImageStore
from hvd.storage.volumes import backup_io, claims, upload
from hvd.storage.volumes import states as st
from hvd.storage.volumes.backend import DATA_IO, GIB, BackendInfo, Capacity, VolumeBackend, message_of, parse_name
from hvd.storage.volumes.scheduler import VolumeRequest, select

log = logging.getLogger(__name__)

PICKUP_INTERVAL_S = 2.0
FLUSH_DELAY_S = 1.0  # a new volume's data is flushed this long after it is recorded (see _flush)
REPORT_INTERVAL_S = 60.0
ImageSource = Callable[[str], Awaitable[tuple[Path, str]]]  # image id -> (local path, qemu format)


def _write_marker(path: Path) -> None:
    """A durable empty file ``path`` (its directory made if missing)."""
    private_dir(path.parent)
    with open(path, "wb") as fh:
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


class VolumeService:
    """Volumes of this host's backends; see hvd/storage/volumes/__init__.py for the contract."""

    def __init__(self, config: Config, catalog: Catalog, events: EventBus, backends: dict[str, VolumeBackend],
                 backup_root: Path, image_source: ImageSource | None = None,
                 image_store: ImageStore | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.events = events
        self.backends = backends
        self.backup_root = backup_root
        self.image_source = image_source
        self.image_store = image_store  # where an upload-to-image writes (this host's Glance store)
        self.peers: PeerCaller | None = None  # set in a cluster: uploaded images are copied to peers
        self.host = config.host_name
        self.az = config.host.availability_zone
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._reported: dict[str, int] = {}
        self._report_sent = False  # the start-up report went through (a rolling upgrade may hold it back)
        self._wake = asyncio.Event()
        self._settled = asyncio.Condition()  # notified when a step of this host is recorded
        self._generation = 0  # steps recorded so far: a waiter that saw N misses no notification

    # --- start-up and the pickup loop ------------------------------------------------------------

    async def start(self) -> None:
        """Default type, capacity report, crash repair (orphans), then the pickup loop."""
        try:
            await self.ensure_default_type()
            await self.report_capacity(force=True)
        except HvdError as exc:  # e.g. a rolling upgrade holds volume commands back: the loop retries
            log.warning("volume service start: %s", exc.message)
        await self.remove_orphans()
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop and the running operations (each is redone from its start by the next run)."""
        tasks = [t for t in (self._loop, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        last_report = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before the round: a wake-up during it starts the next one at once
            try:
                await self.pickup()
                if loop.time() - last_report >= REPORT_INTERVAL_S or not self._report_sent:
                    last_report = loop.time()
                    if not self._report_sent:  # start-up's proposals were held back: try them again
                        await self.ensure_default_type()
                    await self.report_capacity(force=not self._report_sent)
            except Exception:  # the next round retries; the loop must not end
                log.exception("volume pickup round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PICKUP_INTERVAL_S)

    def wake(self) -> None:
        """Start pending work now (after a local request) instead of at the next round."""
        self._wake.set()

    async def ensure_default_type(self) -> None:
        name = self.config.volumes.default_type
        found = await self.catalog.read(fetch_one, "SELECT id FROM volume_types WHERE name=?", (name,))
        if found is None:
            with contextlib.suppress(Conflict):  # another member made it first
                await self.catalog.propose(cv.VolumeTypeCreate(
                    id=str(uuid.uuid4()), name=name, description="Default volume type", created_at=now_iso()))

    async def report_capacity(self, force: bool = False) -> None:
        """Tell the cluster this host's backends and free space when it changed by 1 GiB or more."""
        rows: list[dict[str, str | int | bool]] = []
        for b in self.backends.values():
            try:
                cap = await b.capacity()
            except HvdError as exc:
                log.warning("volume backend %s cannot report its capacity: %s", b.name, exc.message)
                cap = Capacity(0, 0)
            rows.append(self._report_row(b, cap))
        now = {str(r["name"]): int(r["free_gb"]) for r in rows}
        if not force and now.keys() == self._reported.keys() and all(
                abs(now[k] - self._reported[k]) < 1 for k in now):
            return
        try:
            await self.catalog.propose(cv.VolumeBackendsReport(host=self.host, availability_zone=self.az,
                                                               backends=rows, updated_at=now_iso()))
        except UpgradeInProgress as exc:  # a member runs an hvd without volumes: report once it is upgraded
            log.info("volume capacity not reported yet: %s", exc.message)
            return
        self._reported = now
        self._report_sent = True

    def _report_row(self, backend: VolumeBackend, cap: Capacity) -> dict[str, str | int | bool]:
        """One backend's row of the capacity report (the ratio as a decimal string: see claims.py)."""
        conf = next((c for c in self.config.volumes.backends if c.name == backend.name), None)
        return {"name": backend.name, "driver": backend.driver, "total_gb": cap.total_gb, "free_gb": cap.free_gb,
                "thin": cap.thin, "reserved_gb": conf.reserved_gb if conf else 0,
                claims.RATIO_KEY: claims.ratio_text(conf.max_over_subscription_ratio if conf else 1.0)}

    async def backend_infos(self) -> list[BackendInfo]:
        """Every host's backends as last reported (this host's measured now); a backend's free
        space is what both its filesystem/group and its claims in the catalog leave (a thin one's
        claims up to its over-subscription ratio: claims.Headroom)."""
        reports, claimed = await self.catalog.read(_reports_and_claims)
        infos: list[BackendInfo] = []
        for host, report in sorted(reports.items()):
            if host == self.host:
                continue
            for b in report.get("backends", []):
                room = claims.Headroom.of(b, claimed.get((host, str(b["name"])), 0))
                infos.append(BackendInfo(host, str(b["name"]), str(b["driver"]), str(report["availability_zone"]),
                                         Capacity(room.total_gb, room.unclaimed_gb, room.thin), headroom=room))
        for b in self.backends.values():
            cap = await b.capacity()
            room = claims.Headroom.of(self._report_row(b, cap), claimed.get((self.host, b.name), 0))
            infos.append(BackendInfo(self.host, b.name, b.driver, self.az,
                                     Capacity(cap.total_gb, room.unclaimed_gb, cap.thin), headroom=room))
        return infos

    def backend_of(self, row: dict[str, Any]) -> VolumeBackend:
        """This host's backend holding ``row`` (a volume or snapshot), or NotImplementedYet."""
        if row["host"] != self.host:
            raise NotImplementedYet(f"{row['id']} lives on host {row['host']}; this host ({self.host}) reaches"
                                    " another host's volume only through an export")
        backend = self.backends.get(str(row["backend"]))
        if backend is None:
            raise NotFound(f"volume backend {row['backend']} is not configured on host {self.host}")
        return backend

    # --- what the compute side calls -----------------------------------------------------------

    def connection_info(self, volume: dict[str, Any]) -> dict[str, Any]:
        """How this host's hypervisor reaches ``volume`` (it lives on this host)."""
        return self.backend_of(volume).connection_info(str(volume["id"]))

    async def grow_data(self, volume: dict[str, Any], new_size_gb: int) -> None:
        """Grow the volume's data (online extend; the caller resizes the guest's disk after)."""
        backend = self.backend_of(volume)
        current = await backend.size_bytes(str(volume["id"]))
        if current is None or current < new_size_gb * GIB:
            await backend.extend(str(volume["id"]), new_size_gb * GIB)

    async def wait_stable(self, table: str, row_id: str, timeout: float) -> dict[str, Any] | None:
        """The row once it leaves its transitional state (None: it was deleted); Timeout otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        busy = st.TRANSITIONAL | {st.BACKUP_RESTORING}
        while True:
            seen = self._generation
            row = await self.catalog.read(fetch_one, f"SELECT * FROM {table} WHERE id=?", (row_id,))
            if row is None or row["status"] not in busy:
                return row
            if loop.time() >= deadline:
                raise Timeout(f"{row_id} is still {row['status']} after {timeout:.0f} s")
            # woken by a step recorded here; polled too, for work done by another host
            async with self._settled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait_for(self._moved_past(seen)), 0.5)

    def _moved_past(self, seen: int) -> Callable[[], bool]:
        return lambda: self._generation != seen

    # --- placement ---------------------------------------------------------------------------------

    async def create_placed(self, req: VolumeRequest, make: Callable[[BackendInfo], cv.VolumeCreate],
                            on_host: str | None = None) -> cv.VolumeCreate:
        """Place a new volume and propose ``make(backend)``; the catalog admits it only if the
        backend's claims stay within its capacity. Refused (another create took the space since the
        reports), the next best backend is tried, up to ``[scheduler] max_attempts``. Returns the
        command that went through; NoValidHost (409) names every backend's reason otherwise.
        ``on_host``: only that host's backends (a restore stays beside its backup's chunks)."""
        infos = [b for b in await self.backend_infos() if on_host is None or b.host == on_host]
        ranked, trace = select(infos, req)
        attempts = self.config.scheduler.max_attempts
        for i, backend in enumerate(ranked):
            if i >= attempts:
                trace.append(f"{backend.host}@{backend.name}: not tried ({attempts} attempts made)")
                continue
            cmd = make(backend)
            try:
                await self.propose(cmd)
            except CapacityExceeded as exc:  # the claim lost a race: the next backend
                log.info("volume %s not admitted on %s@%s: %s", cmd.id, backend.host, backend.name, exc.message)
                trace.append(f"{backend.host}@{backend.name}: refused at commit: {exc.message}")
                continue
            return cmd
        reasons = "; ".join(trace) or "no volume backend is configured"
        raise NoValidHost(f"No valid backend for a {req.size_gb} GiB volume: {reasons}")

    # --- proposing (any host) ----------------------------------------------------------------------

    async def propose(self, cmd: Command) -> dict[str, Any]:
        result = await self.catalog.propose(cmd)
        self.wake()
        return result

    def publish(self, kind: str, row_id: str, status: str, **fields: Any) -> None:
        self.events.publish(kind, id=row_id, status=status, **fields)

    # --- the work on this host -----------------------------------------------------------------

    async def pickup(self) -> None:
        """Start every transitional object of this host that is not running yet."""
        work = await self.catalog.read(_pending_work, self.host)
        for key, row in work:
            if key not in self._running:
                self._start(key, self._work(key, row))

    def _start(self, key: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._running[key] = task
        task.add_done_callback(lambda t: self._done(key, t))

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("volume work %s failed unexpectedly: %s", key, task.exception())

    async def _work(self, key: str, row: dict[str, Any]) -> None:
        kind, _, _ = key.partition(":")
        if kind == "volume":
            await self._volume_work(row)
        elif kind == "snapshot":
            await self._snapshot_work(row)
        elif kind == "backup":
            await self._backup_work(row)
        elif kind == "restore":
            await self._restore_work(row)
        elif kind == "upload":
            await upload.upload_work(self, row)

    async def _finish(self, cmd: Command, project_id: str | None = None) -> None:
        """Record a step's outcome and tell waiters and /v1/events; ``project_id``: the row's
        owner when the caller has it (else read here)."""
        kind = "snapshot" if cmd.type.startswith("volume_snapshot") else \
            "backup" if cmd.type.startswith("volume_backup") else "volume"
        table = {"snapshot": "volume_snapshots", "backup": "volume_backups", "volume": "volumes"}[kind]
        rid = str(getattr(cmd, "id", ""))
        # read first: a finished delete removes the row; /v1/events shows a project its own events
        owner = {"project_id": project_id} if project_id else await self.catalog.read(
            fetch_one, f"SELECT project_id FROM {table} WHERE id=?", (rid,))
        try:
            result = await self.catalog.propose(cmd)
        except HvdError as exc:  # someone else moved it (admin reset): nothing more to record
            log.warning("volume step %s not recorded: %s", cmd.type, exc.message)
            return
        async with self._settled:
            self._generation += 1
            self._settled.notify_all()
        project = owner["project_id"] if owner else None
        if isinstance(cmd, cvb.BackupRestoreFinish):  # its result is the restored volume's status
            self.publish("backup.status", rid, st.AVAILABLE, project_id=project)
            self.publish("volume.status", cmd.volume_id, str(result.get("status", "")), project_id=project)
        else:
            self.publish(f"{kind}.status", rid, str(result.get("status", "")), project_id=project)

    async def _volume_work(self, vol: dict[str, Any]) -> None:
        vid = str(vol["id"])
        status = vol["status"]
        try:
            backend = self.backend_of(vol)
        except HvdError as exc:
            if status == st.CREATING:
                await self._finish(cv.VolumeCreateFinish(id=vid, ok=False, error=exc.message, updated_at=now_iso()))
            return
        if status == st.CREATING:
            ok, error, bootable = True, None, None
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await backend.delete_volume(vid)  # what a cut attempt left
                bootable = await self._create_data(backend, vol)
                checkpoint("volume.create.data_made")
            except Exception as exc:
                ok, error = False, message_of(exc)
                log.warning("creating volume %s failed: %s", vid, error)
                with contextlib.suppress(Exception):
                    await backend.delete_volume(vid)
            made = loop.time()
            await self._finish(cv.VolumeCreateFinish(id=vid, ok=ok, error=error, bootable=bootable,
                                                     updated_at=now_iso()), vol.get("project_id"))
            log.info("volume %s %s: data %.2f s, recorded %.2f s later", vid, "created" if ok else "failed",
                     made - started, loop.time() - made)
            if ok:  # on disk in a second, not at the kernel's writeback up to 30 s later (a power cut would lose it)
                self._start(f"flush:{vid}", self._flush(backend, vid))
        elif status == st.DELETING:
            try:
                checkpoint("volume.delete.started")
                await backend.delete_volume(vid, self.config.volumes.wipe_on_delete)
                checkpoint("volume.delete.data_removed")
                await self._finish(cv.VolumeFinish(id=vid, op="delete", ok=True, updated_at=now_iso()))
            except Exception as exc:
                await self._finish(cv.VolumeFinish(id=vid, op="delete", ok=False, error=message_of(exc),
                                                   updated_at=now_iso()))
        elif status == st.EXTENDING:
            try:
                await self.grow_data(vol, int(vol["new_size_gb"]))
                checkpoint("volume.extend.data_grown")
                await self._finish(cv.VolumeFinish(id=vid, op="extend", ok=True, updated_at=now_iso()))
            except Exception as exc:
                await self._finish(cv.VolumeFinish(id=vid, op="extend", ok=False, error=message_of(exc),
                                                   updated_at=now_iso()))

    async def _flush(self, backend: VolumeBackend, vid: str) -> None:
        """Write a new volume's data to stable storage, FLUSH_DELAY_S after it is recorded available.
        Not before: a bare ``qemu-img convert`` does not flush either, and a flush doubles a create's
        time (bench/volumes.py). Not at once: on ext4 the flush's journal commit held up the answer
        to the create (measured 7-8 ms p50 from the recorded step to the answer, 1.6 ms without)."""
        await asyncio.sleep(FLUSH_DELAY_S)
        try:
            await backend.flush(vid)
        except (OSError, HvdError) as exc:  # deleted meanwhile: nothing left to flush
            log.info("volume %s not flushed: %s", vid, exc)

    async def _create_data(self, backend: VolumeBackend, vol: dict[str, Any]) -> bool | None:
        """Make the volume's data from its source; returns the bootable flag to record (or None)."""
        vid, size = str(vol["id"]), int(vol["size_gb"]) * GIB
        if vol["source_image_id"]:
            if self.image_source is None:
                raise NotImplementedYet("this host has no image cache to create a volume from an image")
            path, fmt = await self.image_source(str(vol["source_image_id"]))
            await backend.create_from_image(vid, path, fmt, size)
            return True
        if vol["source_snapshot_id"]:
            await backend.create_from_snapshot(vid, str(vol["source_snapshot_id"]), size)
            return None
        if vol["source_volume_id"]:
            await backend.clone(vid, str(vol["source_volume_id"]), size)
            return None
        await backend.create_blank(vid, size)
        return None

    async def _snapshot_work(self, snap: dict[str, Any]) -> None:
        sid = str(snap["id"])
        backend = self.backend_of(snap)
        if snap["status"] == st.CREATING:
            try:
                await backend.delete_snapshot(sid)
                await backend.create_snapshot(sid, str(snap["volume_id"]))
                checkpoint("snapshot.data_made")
                await self._finish(cv.SnapshotFinish(id=sid, op="create", ok=True, updated_at=now_iso()))
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await backend.delete_snapshot(sid)
                await self._finish(cv.SnapshotFinish(id=sid, op="create", ok=False, error=message_of(exc),
                                                     updated_at=now_iso()))
        elif snap["status"] == st.DELETING:
            try:
                await backend.delete_snapshot(sid)
                await self._finish(cv.SnapshotFinish(id=sid, op="delete", ok=True, updated_at=now_iso()))
            except Exception as exc:
                await self._finish(cv.SnapshotFinish(id=sid, op="delete", ok=False, error=message_of(exc),
                                                     updated_at=now_iso()))

    @contextlib.asynccontextmanager
    async def _raw_source(self, backend: VolumeBackend, vol: dict[str, Any]) -> Any:
        """A path whose bytes are the volume's raw data (a temporary raw copy for qcow2 files)."""
        raw = backend.raw_path(str(vol["id"]))
        if raw is not None:
            yield raw
            return
        info = backend.connection_info(str(vol["id"]))
        with tempfile.TemporaryDirectory(dir=self.backup_root, prefix=".raw-") as tmp:
            dest = Path(tmp) / "raw"
            await qemu_img.convert(info["path"], dest, info["format"], "raw", force_share=True)
            yield dest

    async def _backup_work(self, backup: dict[str, Any]) -> None:
        bid, vid = str(backup["id"]), str(backup["volume_id"])
        cfg = self.config.volumes
        loop = asyncio.get_running_loop()
        if backup["status"] == st.DELETING:
            try:
                await loop.run_in_executor(DATA_IO, backup_io.delete_backup, self.backup_root, vid, bid)
                await self._finish(cvb.BackupFinishDelete(id=bid, ok=True, updated_at=now_iso()))
            except Exception as exc:
                await self._finish(cvb.BackupFinishDelete(id=bid, ok=False, error=message_of(exc),
                                                          updated_at=now_iso()))
            return
        try:
            vol = await self.catalog.read(fetch_one, "SELECT * FROM volumes WHERE id=?", (vid,))
            if vol is None:
                raise NotFound(f"volume {vid} is gone")
            backend = self.backend_of(vol)
            self.backup_root.mkdir(parents=True, exist_ok=True)
            async with self._raw_source(backend, vol) as source:
                stats = await loop.run_in_executor(
                    DATA_IO, backup_io.backup_volume, source, self.backup_root, vid, bid, backup["parent_id"],
                    int(backup["size_gb"]) * GIB, cfg.backup_chunk_mib << 20, cfg.backup_compression_level,
                    str(backup["created_at"]))
            checkpoint("backup.data_written")
            await self._finish(cvb.BackupFinish(id=bid, ok=True, chunks=stats.chunks, new_chunks=stats.new_chunks,
                                               data_bytes=stats.data_bytes, stored_bytes=stats.stored_bytes,
                                               updated_at=now_iso()))
        except Exception as exc:
            log.warning("backup %s of volume %s failed: %s", bid, vid, message_of(exc))
            with contextlib.suppress(Exception):
                await loop.run_in_executor(DATA_IO, backup_io.delete_backup, self.backup_root, vid, bid)
            await self._finish(cvb.BackupFinish(id=bid, ok=False, error=message_of(exc), updated_at=now_iso()))

    async def _restore_work(self, vol: dict[str, Any]) -> None:
        """Fill a volume in restoring-backup from its backup (a new volume is made first)."""
        vid, bid = str(vol["id"]), str(vol["restore_backup_id"])
        loop = asyncio.get_running_loop()
        # whether the volume's data may have changed (a failure before leaves it as it was); kept on
        # disk, so that a restore redone after a crash that cut it mid-write knows
        marker = Path(self.config.host.data_dir) / "volume-work" / f"restore-{vid}"
        touched = await loop.run_in_executor(None, marker.exists)

        async def touch() -> None:
            nonlocal touched
            if not touched:
                await loop.run_in_executor(None, _write_marker, marker)
                touched = True

        try:
            backend = self.backend_of(vol)
            backup = await self.catalog.read(fetch_one, "SELECT * FROM volume_backups WHERE id=?", (bid,))
            if backup is None:
                raise NotFound(f"backup {bid} is gone")
            manifest = await loop.run_in_executor(None, backup_io.read_manifest, self.backup_root,
                                                  str(backup["volume_id"]), bid)
            new = vol["previous_status"] is None  # made for this restore (VolumeCreate with a backup)
            if new:
                touched = True  # a volume made for the restore ends in error on any failure anyway
                await backend.delete_volume(vid)
                await backend.create_blank(vid, int(vol["size_gb"]) * GIB)
            raw = backend.raw_path(vid)
            if raw is not None:
                await touch()
                await loop.run_in_executor(DATA_IO, backup_io.restore, self.backup_root, manifest, raw,
                                           new and backend.driver == "file")
            else:  # a qcow2 file: restore into a sparse raw copy, then convert it into place
                with tempfile.TemporaryDirectory(dir=self.backup_root, prefix=".raw-") as tmp:
                    scratch = Path(tmp) / "raw"
                    with open(scratch, "wb") as fh:
                        fh.truncate(int(vol["size_gb"]) * GIB)
                    await loop.run_in_executor(DATA_IO, backup_io.restore, self.backup_root, manifest, scratch, True)
                    await touch()  # a rename over the volume's file: the old data or the new
                    await backend.import_raw(vid, scratch)
            checkpoint("restore.data_written")
            await self._finish(cvb.BackupRestoreFinish(id=bid, volume_id=vid, ok=True, updated_at=now_iso()))
        except Exception as exc:
            log.warning("restore of backup %s into volume %s failed: %s", bid, vid, message_of(exc))
            await self._finish(cvb.BackupRestoreFinish(id=bid, volume_id=vid, ok=False, error=message_of(exc),
                                                      untouched=not touched, updated_at=now_iso()))
        await loop.run_in_executor(None, functools.partial(marker.unlink, missing_ok=True))  # recorded: done

    async def sees_backup(self, backup: dict[str, Any]) -> bool:
        """Whether this host's backup_dir holds ``backup``'s manifest (its own backups, or any host's
        when the directory is shared)."""
        path = backup_io.manifest_path(self.backup_root, str(backup["volume_id"]), str(backup["id"]))
        return await asyncio.get_running_loop().run_in_executor(None, path.is_file)

    async def verify_backup(self, backup: dict[str, Any]) -> list[str]:
        """Read back every chunk of a backup of this host: the problems found (empty = intact)."""
        if backup["host"] != self.host:
            raise NotImplementedYet(f"backup {backup['id']} is on host {backup['host']}")
        loop = asyncio.get_running_loop()
        try:
            manifest = await loop.run_in_executor(None, backup_io.read_manifest, self.backup_root,
                                                  str(backup["volume_id"]), str(backup["id"]))
        except (OSError, ValueError) as exc:
            return [f"manifest: {exc}"]
        return await loop.run_in_executor(DATA_IO, backup_io.verify, self.backup_root, manifest)

    # --- crash repair ------------------------------------------------------------------------------

    async def remove_orphans(self) -> list[str]:
        """Remove backend objects and backups this host holds that the catalog does not know
        (a create cut before its record, a delete cut after its record went); returns their names."""
        known = await self.catalog.read(_known_ids)
        removed: list[str] = []
        for backend in self.backends.values():
            try:
                names = await backend.list_objects()
                partials = await backend.list_partials()
            except (HvdError, OSError) as exc:
                log.warning("volume backend %s cannot list its objects: %s", backend.name, message_of(exc))
                continue
            for name, vid in sorted(partials.items()):
                # a volume of another host sharing this directory may be writing its scratch copy now
                if known["volume_hosts"].get(vid, self.host) != self.host:
                    continue
                log.warning("removing %s from volume backend %s (a restore cut before its rename)", name,
                            backend.name)
                await backend.remove_partial(name)
                removed.append(name)
            for name in sorted(names):
                parsed = parse_name(name)
                if parsed is None or parsed in known["objects"]:
                    continue
                kind, oid = parsed
                log.warning("removing orphan %s from volume backend %s (the catalog does not know it)", name,
                            backend.name)
                if kind == "volume":
                    await backend.delete_volume(oid)
                else:
                    await backend.delete_snapshot(oid)
                removed.append(name)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, backup_io.remove_debris, self.backup_root)
        for bid, vid in (await loop.run_in_executor(None, backup_io.known_backups, self.backup_root)).items():
            if bid not in known["backups"]:
                log.warning("removing orphan backup %s of volume %s", bid, vid)
                await loop.run_in_executor(DATA_IO, backup_io.delete_backup, self.backup_root, vid, bid)
                removed.append(f"backup-{bid}")
        return removed


def _pending_work(conn: Any, host: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, row) of every transitional volume, snapshot and backup of ``host``."""
    work: list[tuple[str, dict[str, Any]]] = []
    for vol in fetch_all(conn, "SELECT * FROM volumes WHERE host=? AND status IN (?,?,?,?,?) ORDER BY created_at",
                         (host, st.CREATING, st.DELETING, st.EXTENDING, st.RESTORING_BACKUP, st.UPLOADING)):
        if vol["status"] == st.EXTENDING and vol["previous_status"] == st.IN_USE:
            continue  # online extend: the compute side's
        key = {st.RESTORING_BACKUP: "restore", st.UPLOADING: "upload"}.get(vol["status"], "volume")
        work.append((f"{key}:{vol['id']}", vol))
    for snap in fetch_all(conn, "SELECT * FROM volume_snapshots WHERE host=? AND status IN (?,?)",
                          (host, st.CREATING, st.DELETING)):
        work.append((f"snapshot:{snap['id']}", snap))
    for backup in fetch_all(conn, "SELECT * FROM volume_backups WHERE host=? AND status IN (?,?)",
                            (host, st.CREATING, st.DELETING)):
        work.append((f"backup:{backup['id']}", backup))
    return work


def _known_ids(conn: Any) -> dict[str, Any]:
    """Every volume, snapshot and backup id of the catalog, of any host: a directory shared between
    hosts (an NFS backup_dir or file backend) holds other hosts' objects, which are not orphans."""
    volumes = fetch_all(conn, "SELECT id, host FROM volumes")
    objects = {("volume", r["id"]) for r in volumes}
    objects |= {("snapshot", r["id"]) for r in fetch_all(conn, "SELECT id FROM volume_snapshots")}
    backups = {r["id"] for r in fetch_all(conn, "SELECT id FROM volume_backups")}
    return {"objects": objects, "backups": backups, "volume_hosts": {r["id"]: r["host"] for r in volumes}}


def _reports_and_claims(conn: Any) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
    """Every host's backend report and the GiB claimed on each backend, in one read."""
    return cv.backend_reports(conn), cv.backend_claims(conn)
