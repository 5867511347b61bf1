"""Copy a raw file's data extents into a new file, in the kernel (``copy_file_range``).

A raw volume made from a cached raw base needs no format work: the kernel copies the base's data
extents (found with SEEK_DATA/SEEK_HOLE) and leaves its holes holes, without a qemu-img process
(its start alone is ~6 ms here) and without the data crossing into user space; on a filesystem
that shares extents (XFS, btrfs) the copy is a reflink. The result is as sparse as the source:
cached raw bases are written sparse (hvd.compute.manager, hvd.storage.transfer), so it is as sparse as a
``qemu-img convert`` of them. Where the kernel or filesystem cannot do it, ``CopyUnsupported``
is raised before a byte is written and the caller runs qemu-img instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hvd.errors import Timeout

STEP = 64 << 20  # bytes per copy_file_range call: the stop flag is looked at this often
BLOCK = 64 << 10  # SparseWriter: an all-zero block of this size, at a multiple of it, is left a hole
# copies get their own threads: long ones must not take the loop's default pool (Raft snapshot
# frames, network applies and file work run there)
_COPIER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sparse-copy")
_UNSUPPORTED = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
_ZEROS = bytes(1 << 20)


def is_zero(data: bytes | memoryview) -> bool:
    """Whether ``data`` is all zero bytes (compared in C, a MiB at a time)."""
    view = memoryview(data)
    for at in range(0, len(view), len(_ZEROS)):
        piece = view[at : at + len(_ZEROS)]
        if piece != _ZEROS[: len(piece)]:
            return False
    return True


class SparseWriter:
    """Writes a stream into a new, empty file from offset 0, leaving every all-zero BLOCK (at a
    multiple of BLOCK, whatever sizes the stream comes in) a hole. Blocking: run it in a thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = bytearray()  # the stream past the last whole block
        self._offset = 0  # where _pending starts in the file

    def write(self, data: bytes) -> None:
        self._pending += data
        whole = len(self._pending) - len(self._pending) % BLOCK
        if whole:
            blocks = bytes(self._pending[:whole])
            del self._pending[:whole]
            self._emit(blocks)

    def close(self) -> None:
        """Write the last, partial block and set the length (a trailing hole still counts)."""
        self._emit(bytes(self._pending))
        self._pending.clear()
        os.ftruncate(self._fd, self._offset)

    def _emit(self, data: bytes) -> None:
        view = memoryview(data)
        start = 0  # first byte of the run of data blocks not written yet
        for at in range(0, len(view), BLOCK):
            if is_zero(view[at : at + BLOCK]):
                self._pwrite(view[start:at], self._offset + start)
                start = at + BLOCK
        self._pwrite(view[start:], self._offset + start)
        self._offset += len(view)

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while data:
            done = os.pwrite(self._fd, data, offset)
            data, offset = data[done:], offset + done


def has_holes(path: Path) -> bool:
    """Whether ``path`` stores less than its length (a base cached by an earlier build was written
    whole, zero runs as data: qemu-img, which finds zeros, keeps volumes made from it sparse)."""
    st = path.stat()
    return st.st_blocks * 512 < st.st_size


class CopyUnsupported(OSError):
    """The kernel cannot copy between these files (another filesystem, an old kernel, ...)."""


class CopyStopped(Exception):
    """The copy was asked to stop; its file is removed."""


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data extent of ``fd`` below ``size``; the whole file as one extent
    where the filesystem does not report holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data past offset: the rest is a hole
                return
            if exc.errno == errno.EINVAL and offset == 0:  # no SEEK_DATA here
                yield 0, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            yield start, end - start
        offset = end


def copy_sparse(src: Path, dest: Path, size: int, stop: threading.Event | None = None) -> None:
    """Make ``dest`` (new, mode 0600) hold ``src``'s data with its holes, ``size`` bytes long
    (>= src's length; the tail reads zeros). Blocking: run it in a thread. On any failure, and on
    ``stop`` being set (CopyStopped), ``dest`` is removed. CopyUnsupported when the kernel cannot
    copy these files (nothing is left behind)."""
    with open(src, "rb") as fin:
        length = os.fstat(fin.fileno()).st_size
        if size < length:
            raise ValueError(f"{dest.name}: {size} bytes cannot hold {src.name}'s {length}")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=True) as fout:
                _copy_extents(fin.fileno(), fout.fileno(), length, stop)
                os.ftruncate(fout.fileno(), size)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise


async def copy_sparse_async(src: Path, dest: Path, size: int, timeout: float | None = 3600.0) -> None:
    """:func:`copy_sparse` in a worker thread. A cancelled caller, or ``timeout`` passing (then
    Timeout is raised), stops the copy and waits until its file is gone: nothing is left behind."""
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(_COPIER, functools.partial(copy_sparse, src, dest, size, stop))
    try:
        await asyncio.wait_for(asyncio.shield(job), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        stop.set()
        try:
            await job  # the thread removes the file once it sees the flag
        except (CopyStopped, OSError, ValueError):  # stopped or failed: it removed its file itself
            pass
        else:  # it ended just as we stopped it: the caller gets no file
            dest.unlink(missing_ok=True)
        if isinstance(exc, TimeoutError):
            raise Timeout(f"copying {src.name} took longer than {timeout} s") from exc
        raise


def _copy_extents(fin: int, fout: int, length: int, stop: threading.Event | None) -> None:
    first = True
    for start, count in data_extents(fin, length):
        offset = start
        while offset < start + count:
            if stop is not None and stop.is_set():
                raise CopyStopped(f"copy stopped at byte {offset}")
            try:
                done = os.copy_file_range(fin, fout, min(STEP, start + count - offset), offset, offset)
            except OSError as exc:
                if first and exc.errno in _UNSUPPORTED:
                    raise CopyUnsupported(exc.errno, f"copy_file_range: {exc.strerror}") from exc
                raise
            if done == 0:  # the source shrank under us: a copy would be short
                raise OSError(errno.EIO, f"source ended at byte {offset}, expected {length}")
            first = False
            offset += done
