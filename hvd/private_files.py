"""Files that hold secrets (the catalog's password hashes and user data, the Raft log, images) are
created private, whatever the process umask, and tightened at start-up if an older hvd left them
world-readable."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite gives them the main file's mode when it creates them


def private_file(path: Path | str) -> None:
    """Create ``path`` (empty) with mode 0600 if it is missing; tighten it and its SQLite side files
    to 0600 if they exist with more permissive modes."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)):
        _tighten(candidate, FILE_MODE)


def private_dir(path: Path | str) -> None:
    """Create ``path`` (and parents) if missing; the directory itself ends up 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & ~mode:
        os.chmod(path, current & mode)


def write_private(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) and make it durable: the file and its directory entry
    are fsynced before this returns."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _tighten(path, FILE_MODE)
    fsync_dir(path.parent)


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new file in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
