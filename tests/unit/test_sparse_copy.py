"""The in-kernel sparse copy on real files: same bytes, same holes, nothing left behind."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hvd.errors import Timeout
from hvd.storage import sparse_copy

MIB = 1 << 20


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def holey(tmp_path: Path) -> Path:
    """8 MiB: data at 0-1 MiB and 4-5 MiB, holes elsewhere (a trailing hole too)."""
    path = tmp_path / "base"
    with open(path, "wb") as fh:
        fh.write(os.urandom(MIB))
        fh.seek(4 * MIB)
        fh.write(b"marker" * (MIB // 6) + bytes(MIB - 6 * (MIB // 6)))
        fh.truncate(8 * MIB)
    return path


def test_copy_keeps_bytes_and_holes(holey: Path, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    sparse_copy.copy_sparse(holey, dest, 8 * MIB)
    assert _digest(dest) == _digest(holey)
    assert dest.stat().st_blocks * 512 <= 2 * MIB + 64 * 1024  # the 6 MiB of holes stay holes
    assert dest.stat().st_mode & 0o777 == 0o600
    with open(dest, "rb") as fh:
        assert list(sparse_copy.data_extents(fh.fileno(), 8 * MIB)) == [(0, MIB), (4 * MIB, MIB)]


def test_copy_grows_to_the_volume_size(holey: Path, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    sparse_copy.copy_sparse(holey, dest, 20 * MIB)
    assert dest.stat().st_size == 20 * MIB
    with open(dest, "rb") as fh:
        assert fh.read(8 * MIB) == holey.read_bytes()
        assert sparse_copy.is_zero(fh.read())


def test_copy_refuses_a_size_below_the_source(holey: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        sparse_copy.copy_sparse(holey, tmp_path / "vol", 4 * MIB)
    assert not (tmp_path / "vol").exists()


def test_copy_never_overwrites_an_existing_file(holey: Path, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    dest.write_bytes(b"someone's data")
    with pytest.raises(FileExistsError):
        sparse_copy.copy_sparse(holey, dest, 8 * MIB)
    assert dest.read_bytes() == b"someone's data"


def test_stop_flag_removes_the_partial_file(holey: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(sparse_copy.CopyStopped):
        sparse_copy.copy_sparse(holey, tmp_path / "vol", 8 * MIB, stop)
    assert not (tmp_path / "vol").exists()


def test_unsupported_kernel_is_reported_before_anything_is_left(
        holey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    with pytest.raises(sparse_copy.CopyUnsupported):
        sparse_copy.copy_sparse(holey, tmp_path / "vol", 8 * MIB)
    assert not (tmp_path / "vol").exists()


def test_a_failure_mid_copy_removes_the_file(holey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.copy_file_range
    calls: list[int] = []

    def second_fails(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 2:  # after data was written: an I/O error, not "unsupported"
            raise OSError(errno.EIO, "Input/output error")
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", second_fails)
    with pytest.raises(OSError) as info:
        sparse_copy.copy_sparse(holey, tmp_path / "vol", 8 * MIB)
    assert not isinstance(info.value, sparse_copy.CopyUnsupported)
    assert not (tmp_path / "vol").exists()


def test_a_source_that_shrinks_under_the_copy_fails(
        holey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "copy_file_range", lambda *_: 0)
    with pytest.raises(OSError, match="source ended"):
        sparse_copy.copy_sparse(holey, tmp_path / "vol", 8 * MIB)
    assert not (tmp_path / "vol").exists()


def test_is_zero() -> None:
    assert sparse_copy.is_zero(b"")
    assert sparse_copy.is_zero(bytes(3 * MIB + 5))
    assert not sparse_copy.is_zero(bytes(3 * MIB) + b"\x01")
    assert not sparse_copy.is_zero(b"\x01" + bytes(10))


def test_async_copy_timeout_stops_and_cleans(holey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.copy_file_range
    gate = threading.Event()

    def slow(*args: Any) -> int:
        gate.wait(5)  # held until the timeout has fired
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", slow)
    monkeypatch.setattr(sparse_copy, "STEP", 64 * 1024)  # many steps: the stop flag is seen

    async def go() -> None:
        task = asyncio.ensure_future(sparse_copy.copy_sparse_async(holey, tmp_path / "vol", 8 * MIB, timeout=0.05))
        await asyncio.sleep(0.2)
        gate.set()
        await task

    with pytest.raises(Timeout, match="longer than"):
        asyncio.run(go())
    assert not (tmp_path / "vol").exists()


def test_async_copy(holey: Path, tmp_path: Path) -> None:
    asyncio.run(sparse_copy.copy_sparse_async(holey, tmp_path / "vol", 8 * MIB))
    assert _digest(tmp_path / "vol") == _digest(holey)


def test_streamed_image_data_is_written_sparse(tmp_path: Path) -> None:
    """A base streamed from a peer keeps its zero runs as holes (and its length and sha256)."""
    from hvd.storage import transfer

    parts = [os.urandom(MIB), bytes(MIB), bytes(MIB), os.urandom(MIB), bytes(MIB)]
    parts = [b"".join(parts)[i : i + 100_000] for i in range(0, 5 * MIB, 100_000)]  # unaligned pieces

    async def chunks() -> Any:
        for part in parts:
            yield part

    dest = tmp_path / "base"
    whole = b"".join(parts)
    asyncio.run(transfer._write_checked(chunks(), dest, hashlib.sha256(whole).hexdigest()))
    assert dest.read_bytes() == whole
    assert dest.stat().st_blocks * 512 <= 2 * MIB + 64 * 1024


def test_has_holes(holey: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    whole.write_bytes(bytes(MIB))  # zeros written as data, as earlier builds cached raw bases
    assert sparse_copy.has_holes(holey) and not sparse_copy.has_holes(whole)


@pytest.mark.parametrize("seed", range(4))
def test_sparse_writer_makes_holes_of_zero_blocks_whatever_the_chunking(tmp_path: Path, seed: int) -> None:
    """Chunks arrive in any size (as a network stream gives them): every all-zero aligned block
    becomes a hole, every byte reads back, and the length is the stream's."""
    import random

    rng = random.Random(seed)
    block = sparse_copy.BLOCK
    layout = [rng.choice((True, False)) for _ in range(48)]  # data or zeros, block by block
    layout[-1] = False  # a trailing zero block: the length must still count it
    whole = b"".join(os.urandom(block) if data else bytes(block) for data in layout) + os.urandom(rng.randrange(1, 999))
    dest = tmp_path / "out"
    with open(dest, "wb") as fh:
        writer = sparse_copy.SparseWriter(fh.fileno())
        at = 0
        while at < len(whole):
            step = rng.randrange(1, 3 * block)
            writer.write(whole[at : at + step])
            at += step
        writer.close()
    assert dest.read_bytes() == whole
    data_blocks = sum(layout) + 1  # the partial last block holds data
    assert dest.stat().st_blocks * 512 <= data_blocks * block + 64 * 1024


def test_copy_left_by_a_cancellation_that_came_as_it_ended_is_removed(
        holey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finished = threading.Event()
    real = sparse_copy.copy_sparse

    def copy_then_signal(*args: Any) -> None:
        real(*args)
        finished.set()

    monkeypatch.setattr(sparse_copy, "copy_sparse", copy_then_signal)

    async def go() -> None:
        task = asyncio.ensure_future(sparse_copy.copy_sparse_async(holey, tmp_path / "vol", 8 * MIB))
        await asyncio.sleep(0)  # it started and waits on its thread
        assert finished.wait(10)  # blocks the loop: the copy's end cannot reach the task before the cancel
        assert (tmp_path / "vol").exists()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert not (tmp_path / "vol").exists()
