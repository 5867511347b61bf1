"""Can QEMU reach the instance disks? libvirt (dynamic_ownership) chowns the disk files it is
handed to the QEMU user, not the directories above them: every directory from / to instances_path
must be searchable by that user, or every create fails with "Permission denied" (which used to
surface as "No valid host")."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
DEFAULT_QEMU_USER = "libvirt-qemu"  # Debian's build default (upstream's is "qemu")


@dataclass(frozen=True)
class Identity:
    """Who QEMU runs as."""

    name: str
    uid: int
    gids: frozenset[int]


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    mode: int


def first_unsearchable(path: Path, who: Identity, owner_of: Callable[[Path], Owner]) -> Path | None:
    """The first directory from / down to ``path`` that ``who`` may not search, or None (pure over
    ``owner_of``). Root searches everything."""
    if who.uid == 0:
        return None
    for directory in [*reversed(path.parents), path]:
        o = owner_of(directory)
        if o.uid == who.uid:
            bit = stat.S_IXUSR
        elif o.gid in who.gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not o.mode & bit:
            return directory
    return None


def qemu_user_name(conf: Path = QEMU_CONF) -> str:
    """The ``user`` libvirt runs QEMU as, from qemu.conf (the build default when unset)."""
    try:
        text = conf.read_text()
    except OSError:
        return DEFAULT_QEMU_USER
    found = re.findall(r'^\s*user\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found[-1] if found else DEFAULT_QEMU_USER


def qemu_identity(name: str | None = None) -> Identity | None:
    """The QEMU user's uid and groups; None when no such user exists here."""
    name = name or qemu_user_name()
    try:  # "+N" names a uid
        entry = pwd.getpwuid(int(name[1:])) if name.startswith("+") else pwd.getpwnam(name)
    except (KeyError, ValueError):
        return None
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    return Identity(entry.pw_name, entry.pw_uid, frozenset(gids))


def _owner(path: Path) -> Owner:
    st = os.stat(path)
    return Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def instances_path_problem(instances_path: Path, who: Identity | None = None) -> str | None:
    """A clear message when QEMU cannot reach disks under ``instances_path``, else None."""
    who = who or qemu_identity()
    if who is None:
        return None  # no QEMU user on this host: nothing to check (libvirt reports its own absence)
    blocker = first_unsearchable(instances_path, who, _owner)
    if blocker is None:
        return None
    mode = _owner(blocker).mode
    return (f"{blocker} (mode {mode:04o}) is not searchable by {who.name}, the user QEMU runs as: QEMU could not open"
            f" instance disks under {instances_path}. Fix: chmod o+x {blocker} (or choose another instances_path)")
