"""Catalog backup and restore, and the checksum that proves a restore gave the same catalog.

`backup` copies a host's catalog with SQLite's online backup API in one step: one read
transaction, so the copy is the catalog exactly as it stood at one applied index, even while the
daemon keeps applying commands (WAL readers never block the writer). `restore` puts a backup in
place on a stopped host and removes the Raft state: the next start adopts the restored catalog as
the first Raft snapshot, with the membership of `[cluster]` (see hvd.cluster.member).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from hvd.catalog.schema import check_not_newer
from hvd.errors import ConfigError, Conflict, NotFound

CATALOG_FILE = "catalog.db"
RAFT_FILE = "raft.db"
_SIDECARS = ("", "-wal", "-shm", "-journal")


@dataclass(frozen=True)
class CatalogInfo:
    """What a catalog file holds: where it stands in the log, its schema, its content checksum."""

    path: Path
    applied_index: int
    schema_version: int
    checksum: str
    size: int


def table_checksums(conn: sqlite3.Connection) -> dict[str, str]:
    """table -> sha256 of its rows in primary-key order (rowid order for rowid tables)."""
    sums = {}
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for table in tables:
        digest = hashlib.sha256()
        pk = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")') if r[5]]
        order = ", ".join(f'"{c}"' for c in pk) if pk else "rowid"
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}'):
            digest.update(repr(tuple(row)).encode())
        sums[table] = digest.hexdigest()
    return sums


def catalog_checksum(conn: sqlite3.Connection) -> str:
    """One sha256 over every table's checksum and the schema version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    text = repr((version, sorted(table_checksums(conn).items())))
    return hashlib.sha256(text.encode()).hexdigest()


def inspect(path: Path) -> CatalogInfo:
    """Open `path` read-only and describe it; ConfigError when it is not a sound hvd catalog."""
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if (check := conn.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
                raise ConfigError(f"{path} is damaged: {check}")
            row = conn.execute("SELECT value FROM meta WHERE key='applied_index'").fetchone()
            if row is None:
                raise ConfigError(f"{path} is not an hvd catalog (no applied index)")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            return CatalogInfo(path, int(row[0]), version, catalog_checksum(conn), path.stat().st_size)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not an hvd catalog: {exc}") from None


def backup(data_dir: Path, dest: Path) -> CatalogInfo:
    """Copy `data_dir`'s catalog to `dest` (replaced atomically); safe while the daemon runs."""
    src_path = data_dir / CATALOG_FILE
    if not src_path.is_file():
        raise NotFound(f"no catalog at {src_path} (is host.data_dir right?)")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(str(tmp))
        try:
            src.backup(out)  # pages=-1: the whole database in one step, i.e. one read transaction
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            out.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    tmp.chmod(0o600)  # it holds password hashes and token hashes
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(dest)
    return inspect(dest)


def open_holders(paths: list[Path], proc: Path = Path("/proc")) -> list[int]:
    """PIDs of processes that have any of `paths` open (a running daemon holds its catalog)."""
    wanted = {str(p.resolve()) for p in paths}
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return pids


def ensure_stopped(data_dir: Path) -> None:
    """Conflict when a process (the daemon) still has the catalog or the Raft log open."""
    files = [data_dir / f"{name}{suffix}" for name in (CATALOG_FILE, RAFT_FILE) for suffix in _SIDECARS]
    pids = open_holders([f for f in files if f.exists()])
    if pids:
        raise Conflict(f"the catalog in {data_dir} is in use by pid {', '.join(map(str, pids))}:"
                       " stop hvd first (systemctl stop hvd)")


def set_aside(data_dir: Path, names: tuple[str, ...], label: str) -> Path | None:
    """Move `names` (and their -wal/-shm files) into data_dir/<label>-<time>/; None if none existed."""
    present = [data_dir / f"{n}{s}" for n in names for s in _SIDECARS if (data_dir / f"{n}{s}").exists()]
    if not present:
        return None
    keep = data_dir / f"{label}-{time.strftime('%Y%m%dT%H%M%S')}"
    keep.mkdir(mode=0o700)
    for path in present:
        path.rename(keep / path.name)
    return keep


def restore(source: Path, data_dir: Path) -> tuple[CatalogInfo, Path | None]:
    """Install the backup `source` as data_dir's catalog on a stopped host.

    The current catalog and Raft log are moved aside (returned: nothing is deleted), so the next
    start founds the cluster again from the restored catalog. Refuses a backup written by a newer
    schema, and a data_dir whose daemon is running.
    """
    info = inspect(source)
    check_not_newer(info.schema_version, str(source))
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_stopped(data_dir)
    kept = set_aside(data_dir, (CATALOG_FILE, RAFT_FILE), "pre-restore")
    tmp = data_dir / f".{CATALOG_FILE}.restore"
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(str(tmp))
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    tmp.chmod(0o600)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(data_dir / CATALOG_FILE)
    return inspect(data_dir / CATALOG_FILE), kept
