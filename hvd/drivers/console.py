"""Reading an instance's serial console log: only its tail, never the whole file.

The log survives QEMU restarts (the domain appends to it) and is capped by virtlogd's rotation
(``max_size``/``max_backups`` in virtlogd.conf: ``console.log``, then ``console.log.0`` the newest
backup, ``.1``, ...), so a guest cannot fill the host's disk through its console. A reader gets at
most ``max_bytes`` from the end, spanning the newest backup when the live file was just rotated.
"""

from __future__ import annotations

import os
from pathlib import Path

# What one console-log request returns at most (Nova caps its console output at 100 KiB; a
# user reading boot messages wants a little more).
CONSOLE_TAIL_BYTES = 1 << 20


def _tail(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of ``path``, and whether they start inside a line (cut off)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size <= max_bytes:
                f.seek(0)
                return f.read(), False
            f.seek(size - max_bytes - 1)  # one byte more: is the window's start a line's start?
            before = f.read(1)
            return f.read(max_bytes), before != b"\n"
    except FileNotFoundError:
        return b"", False


def _newest_backup(path: Path) -> Path:
    # virtlogd renames console.log to console.log.0 (older ones move up); .1 if .0 is not there
    zero = path.with_name(path.name + ".0")
    return zero if zero.exists() else path.with_name(path.name + ".1")


def read_console_tail(path: Path, lines: int | None = None, max_bytes: int = CONSOLE_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of the console log at ``path`` (and of its newest backup before it when
    the live file is shorter), decoded with replacement; then the last ``lines`` lines if given.

    A window that starts inside a line drops that partial line, so every line shown is whole.
    """
    data, cut = _tail(path, max_bytes)
    if len(data) < max_bytes:
        older, cut = _tail(_newest_backup(path), max_bytes - len(data))
        data = older + data
    if cut and b"\n" in data:
        data = data[data.index(b"\n") + 1:]
    text = data.decode(errors="replace")
    return text if lines is None else "".join(text.splitlines(keepends=True)[-lines:])
