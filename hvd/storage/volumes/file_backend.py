"""The file backend: one raw (sparse) or qcow2 file per volume, ``<dir>/volume-<uuid>``.

Snapshots are standalone copies (``snapshot-<uuid>``, made with qemu-img convert -U): a volume's
file stays the one file every attachment points at (an external qcow2 snapshot would swap it under
a running guest), and a snapshot can be deleted without touching its volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from pathlib import Path
from typing import Any

from hvd.storage import qemu_img, sparse_copy
from hvd.storage.volumes.backend import (
    Capacity,
    VolumeBackend,
    check_fits,
    parse_name,
    parse_partial,
    partial_name,
    snapshot_name,
    volume_name,
)

FILE_MODE = 0o600
DIR_MODE = 0o711  # libvirt-qemu must reach the files (libvirt chowns the files it is handed), not list them
ZERO_CHUNK = 4 << 20


def _zero_file(path: Path) -> None:
    """Overwrite a file's allocated length with zeros (wipe_on_delete = zero)."""
    size = path.stat().st_size
    zeros = bytes(ZERO_CHUNK)
    with open(path, "r+b") as fh:
        done = 0
        while done < size:
            done += fh.write(zeros[: min(ZERO_CHUNK, size - done)])
        fh.flush()
        os.fsync(fh.fileno())


class FileBackend(VolumeBackend):
    driver = "file"

    def __init__(self, name: str, root: Path, volume_format: str = "raw", timeout: float = 3600.0) -> None:
        self.name = name
        self.root = root
        self.volume_format = volume_format
        self.timeout = timeout
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, DIR_MODE)

    def path(self, volume_id: str) -> Path:
        return self.root / volume_name(volume_id)

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.root / snapshot_name(snapshot_id)

    def connection_info(self, volume_id: str) -> dict[str, Any]:
        return {"type": "file", "path": str(self.path(volume_id)), "format": self.volume_format}

    def raw_path(self, volume_id: str) -> Path | None:
        return self.path(volume_id) if self.volume_format == "raw" else None

    async def _run(self, argv: list[str]) -> None:
        await qemu_img.run(argv, timeout=self.timeout)

    async def _made(self, path: Path, size_bytes: int | None = None) -> None:
        """Grow a new file to ``size_bytes`` and make it private; on failure remove it."""
        try:
            if size_bytes is not None and self.volume_format == "raw":
                if size_bytes > path.stat().st_size:
                    os.truncate(path, size_bytes)  # a raw file grows sparse: what qemu-img resize does
            elif size_bytes is not None:
                current = (await qemu_img.info(path, self.volume_format)).virtual_size
                if size_bytes > current:
                    await self._run(qemu_img.resize_argv(path, size_bytes, self.volume_format))
            os.chmod(path, FILE_MODE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise

    async def _convert(self, src: Path, src_fmt: str, dest: Path, size_bytes: int | None) -> None:
        """``src``'s data into a new volume or snapshot file ``dest`` of ``size_bytes`` (None: the
        source's size); the caller checked that ``size_bytes`` holds the source."""
        sized_first = size_bytes if self.volume_format == "qcow2" else None
        try:
            if sized_first is not None:
                # made at its size, then filled: growing it after (qemu-img resize) flushed every byte
                # just written to disk on close, doubling a create's time
                await self._run(qemu_img.create_argv(dest, "qcow2", sized_first))
                await self._run(qemu_img.convert_argv(src, dest, src_fmt, "qcow2", force_share=True, into_new=True))
            else:
                await self._run(qemu_img.convert_argv(src, dest, src_fmt, self.volume_format, force_share=True))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise
        await self._made(dest, None if sized_first is not None else size_bytes)

    async def create_blank(self, volume_id: str, size_bytes: int) -> None:
        path = self.path(volume_id)
        await self._run(qemu_img.create_argv(path, self.volume_format, size_bytes))
        await self._made(path)

    async def create_from_image(self, volume_id: str, image: Path, image_format: str, size_bytes: int) -> None:
        await check_fits(image, image_format, size_bytes)
        if image_format == "raw" and self.volume_format == "raw" and sparse_copy.has_holes(image):
            # a cached raw base into a raw file: the kernel copies its data extents (no qemu-img)
            dest = self.path(volume_id)
            try:
                await sparse_copy.copy_sparse_async(image, dest, size_bytes, self.timeout)
                return
            except sparse_copy.CopyUnsupported:
                pass  # another filesystem, an old kernel: qemu-img reads and writes it
            except BaseException:  # also a cancellation that came as the copy ended
                with contextlib.suppress(FileNotFoundError):
                    dest.unlink()
                raise
        await self._convert(image, image_format, self.path(volume_id), size_bytes)

    async def create_from_snapshot(self, volume_id: str, snapshot_id: str, size_bytes: int) -> None:
        await self._convert(self.snapshot_path(snapshot_id), self.volume_format, self.path(volume_id), size_bytes)

    async def clone(self, volume_id: str, source_volume_id: str, size_bytes: int) -> None:
        await self._convert(self.path(source_volume_id), self.volume_format, self.path(volume_id), size_bytes)

    async def import_raw(self, volume_id: str, raw: Path) -> None:
        """Convert ``raw`` into a new file beside the volume's, then rename it over the volume (a
        crash leaves the old data or the new, never half)."""
        path = self.path(volume_id)
        partial = self.root / partial_name(volume_id)
        try:
            await self._run(qemu_img.convert_argv(raw, partial, "raw", self.volume_format))
            os.chmod(partial, FILE_MODE)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    async def delete_volume(self, volume_id: str, wipe: str = "none") -> None:
        path = self.path(volume_id)
        if wipe == "zero" and path.exists():
            await asyncio.get_running_loop().run_in_executor(None, _zero_file, path)
        await _unlink(path)

    async def extend(self, volume_id: str, size_bytes: int) -> None:
        await self._run(qemu_img.resize_argv(self.path(volume_id), size_bytes, self.volume_format))

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        await self._convert(self.path(volume_id), self.volume_format, self.snapshot_path(snapshot_id), None)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await _unlink(self.snapshot_path(snapshot_id))

    async def capacity(self) -> Capacity:
        st = await asyncio.get_running_loop().run_in_executor(None, os.statvfs, self.root)
        return Capacity(total_gb=st.f_blocks * st.f_frsize >> 30, free_gb=st.f_bavail * st.f_frsize >> 30, thin=True)

    async def list_objects(self) -> set[str]:
        names = await asyncio.get_running_loop().run_in_executor(None, os.listdir, self.root)
        return {n for n in names if parse_name(n) is not None}

    async def list_partials(self) -> dict[str, str]:
        names = await asyncio.get_running_loop().run_in_executor(None, os.listdir, self.root)
        return {n: vid for n in names if (vid := parse_partial(n)) is not None}

    async def remove_partial(self, name: str) -> None:
        if parse_partial(name) is not None:  # never anything but a scratch name hvd makes
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()

    async def size_bytes(self, volume_id: str) -> int | None:
        path = self.path(volume_id)
        if not path.exists():
            return None
        if self.volume_format == "raw":
            return path.stat().st_size
        return (await qemu_img.info(path, self.volume_format, force_share=True)).virtual_size


async def _unlink(path: Path) -> None:
    """Remove ``path`` if it is there, off the event loop: freeing a big file's extents took 40 ms."""
    await asyncio.get_running_loop().run_in_executor(None, functools.partial(path.unlink, missing_ok=True))
