"""The compute host's image cache: ``<instances_path>/_base/<sha1(image id)>``.

Only the first instance of an image pays for the download (seed-requirements B): concurrent
callers of one image share a single fetch, and later callers find the file. Each fetched image is
checked (real format = declared format, no backing or data file) before it is used, converted to
raw when ``force_raw`` (the cache then holds raw bases), and appears atomically: it is written
under a temporary name, flushed and renamed. A base's mtime is refreshed on every use, so
``remove_unused`` can age out bases no instance has used for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hvd.errors import HvdError
from hvd.storage import qemu_img

log = logging.getLogger(__name__)

BASE_DIR_NAME = "_base"
# Temporary names start with a dot so no sha1 name can collide with them.
_PART = ".part-"
_FILE_MODE = 0o644  # libvirt-qemu reads bases through instance overlays
_DIR_MODE = 0o755

Fetch = Callable[[Path], Awaitable[None]]


def cache_name(image_id: str) -> str:
    """The cached file's name: SHA1 hex of the image id string (Nova's naming)."""
    return hashlib.sha1(image_id.encode(), usedforsecurity=False).hexdigest()


def fsync_path(path: Path | str) -> None:
    """The file's data and size are on stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageCache:
    """The ``_base`` directory of one host.

    ``force_raw`` converts every non-raw image to raw once, at cache time (Nova's
    force_raw_images): overlays on a raw base are faster and the cache format is uniform.
    """

    def __init__(self, instances_path: Path, force_raw: bool = True) -> None:
        self.base_dir = Path(instances_path) / BASE_DIR_NAME
        self.force_raw = force_raw
        self._pending: dict[str, asyncio.Task[Path]] = {}
        self.fetches = 0  # how many fetches ran (tests and metrics)

    def path_for(self, image_id: str) -> Path:
        return self.base_dir / cache_name(image_id)

    def format_of(self, disk_format: str) -> str:
        """The format of the cached base of an image uploaded as ``disk_format``."""
        return "raw" if self.force_raw or disk_format in ("raw", "iso") else disk_format

    def is_cached(self, image_id: str) -> bool:
        return self.path_for(image_id).is_file()

    async def ensure_cached(self, image_id: str, fetch: Fetch, disk_format: str) -> Path:
        """The cached base of ``image_id``, fetching it first if needed.

        ``fetch(dest)`` writes the image's bytes to ``dest`` (a temporary path in ``_base``).
        Concurrent callers for one image await the same fetch; if it fails, they all get its error
        and nothing is left in the cache (the next call fetches again). A caller that is cancelled
        does not cancel the fetch the others wait on.
        Raises BadRequest when the fetched content is unsafe or not the declared format.
        """
        path = self.path_for(image_id)
        task = self._pending.get(image_id)
        if task is None:
            if path.is_file():
                self._touch(path)
                return path
            task = asyncio.get_running_loop().create_task(self._fetch(image_id, fetch, disk_format))
            self._pending[image_id] = task
            task.add_done_callback(lambda t: self._done(image_id, t))
        return await asyncio.shield(task)

    def _done(self, image_id: str, task: asyncio.Task[Path]) -> None:
        self._pending.pop(image_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not logged as lost

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)

    async def _fetch(self, image_id: str, fetch: Fetch, disk_format: str) -> Path:
        self.base_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self.base_dir.chmod(_DIR_MODE)  # mkdir's mode is masked by the umask (the unit's UMask=0077)
        final = self.path_for(image_id)
        tag = secrets.token_hex(4)
        download = self.base_dir / f"{_PART}{final.name}-{tag}"
        converted = self.base_dir / f"{_PART}{final.name}-{tag}.raw"
        started = time.monotonic()
        self.fetches += 1
        try:
            await fetch(download)
            info = await qemu_img.info(download)
            qemu_img.check_safe_upload(info, disk_format)
            result = download
            if self.format_of(disk_format) == "raw" and info.format != "raw":
                await qemu_img.run(qemu_img.to_raw_argv(download, converted, disk_format))
                download.unlink()
                result = converted
            result.chmod(_FILE_MODE)
            # A crash after the rename must not leave a truncated base that looks complete.
            await asyncio.to_thread(fsync_path, result)
            result.rename(final)
        except (HvdError, OSError, asyncio.CancelledError):
            for leftover in (download, converted):
                leftover.unlink(missing_ok=True)
            raise
        log.info("cached image %s as %s in %.2f s", image_id, final.name, time.monotonic() - started)
        return final

    def remove_unused(self, in_use: set[str], max_age_s: float, now: float | None = None) -> list[Path]:
        """Delete cached bases of images not in ``in_use`` (image ids) unused for ``max_age_s``.

        Also deletes temporary files of interrupted fetches older than ``max_age_s``. Bases being
        fetched right now are kept. ``max_age_s`` <= 0 removes nothing (ageing disabled).
        Returns the removed paths. Callers pass every image id an instance on this host uses,
        including rescue images and instances still building.
        """
        if max_age_s <= 0 or not self.base_dir.is_dir():
            return []
        now = time.time() if now is None else now
        pending = list(self._pending)  # one C-level copy: the loop may add fetches while this runs in a thread
        keep = {cache_name(i) for i in in_use} | {cache_name(i) for i in pending}
        removed: list[Path] = []
        for entry in self.base_dir.iterdir():
            if entry.name in keep or not entry.is_file():
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < max_age_s:
                continue
            if entry.name.startswith(_PART) and any(entry.name[len(_PART) :].startswith(k) for k in keep):
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
            log.info("removed unused cached image %s (unused for %.0f s)", entry.name, age)
        return removed
