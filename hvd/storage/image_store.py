"""The local image store (Glance's default 'file' backend): one file per image id."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from hvd.errors import InsufficientStorage
from hvd.private_files import FILE_MODE, fsync_dir, private_dir

CHUNK = 1 << 20


class ImageStore:
    """Files `<root>/<image id>`; writes land under a temporary name and are renamed when whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        private_dir(root)  # images may hold tenants' data; hvd (root) copies them into the cache

    def check_room(self, incoming: int, reserve: int) -> None:
        """InsufficientStorage when ``incoming`` more bytes would leave the store's filesystem less
        than ``reserve`` free (the catalog may share it: a full disk stops the catalog)."""
        free = shutil.disk_usage(self.root).free
        if free - incoming < reserve:
            raise InsufficientStorage(f"the image store has {free >> 20} MiB free; this upload would leave less than"
                                      f" the {reserve >> 20} MiB reserve ([images] free_space_reserve_mb)")

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def partial_path(self, image_id: str) -> Path:
        return self.root / f".{image_id}.partial"

    async def write(self, image_id: str, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
        """Store the stream as the image's data; returns (size, sha256 hex).

        On any failure (including the stream passing `max_bytes`) nothing is left behind.
        """
        loop = asyncio.get_running_loop()
        tmp = self.partial_path(image_id)
        digest = hashlib.sha256()
        size = 0
        fh = await loop.run_in_executor(None, open, tmp, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"image data is larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                await loop.run_in_executor(None, fh.write, chunk)
            await loop.run_in_executor(None, os.fsync, fh.fileno())
            fh.close()
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.path(image_id))
            # the rename itself must survive a power loss, or an "active" image could lose its file
            await loop.run_in_executor(None, fsync_dir, self.root)
        except BaseException:
            fh.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return size, digest.hexdigest()

    def adopt_partial(self, image_id: str) -> tuple[int, str]:
        """Make the partial file a tool wrote (qemu-img convert) the image's data: flushed, private,
        renamed into place; returns (size, sha256 hex). Blocking: call it in a worker thread."""
        tmp = self.partial_path(image_id)
        digest = hashlib.sha256()
        size = 0
        with open(tmp, "rb+") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                size += len(chunk)
                digest.update(chunk)
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, self.path(image_id))
        fsync_dir(self.root)  # an "active" image must not lose its file to a power cut
        return size, digest.hexdigest()

    async def read(self, image_id: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        fh = await loop.run_in_executor(None, open, self.path(image_id), "rb")
        try:
            while True:
                chunk = await loop.run_in_executor(None, fh.read, CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            fh.close()

    def delete(self, image_id: str) -> None:
        """Remove the image's data (and a partial upload); no error when already gone."""
        for path in (self.path(image_id), self.partial_path(image_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def ids(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if not p.name.startswith(".")}
