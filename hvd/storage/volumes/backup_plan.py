"""Backups, pure: chunk layout, the manifest, which objects a backup writes and which a delete frees.

A backup is a JSON manifest listing the volume's chunks in order (index, length, sha256 of the
raw data, or ``zero`` for a chunk of zeros, stored nowhere). Chunk data is stored once per volume,
compressed, under its sha256 (``objects/<aa>/<sha256>``), so an incremental backup writes only the
chunks whose content no earlier backup of the volume holds, and every manifest still stands alone
(deleting any backup, parent or not, frees just the objects no other manifest names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Chunk:
    index: int
    length: int
    sha256: str | None  # None: a chunk of zeros (no object)

    @property
    def zero(self) -> bool:
        return self.sha256 is None


@dataclass(frozen=True)
class Manifest:
    backup_id: str
    volume_id: str
    size_bytes: int
    chunk_size: int
    # "zstd" (an object shorter than its chunk is a zstd frame, else the raw data), "none"; read
    # only: "auto" (a tag byte, then zlib or raw data) and "zlib", of backups made before zstd
    compression: str
    parent_id: str | None
    created_at: str
    chunks: tuple[Chunk, ...] = field(default_factory=tuple)
    source_stamp: tuple[int, ...] | None = None  # (dev, inode, size, mtime_ns) of a source file (backup_io)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["chunks"] = [[c.index, c.length, c.sha256] for c in self.chunks]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str | bytes) -> Manifest:
        """Parse and check a manifest; ValueError naming what is wrong."""
        try:
            data: dict[str, Any] = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("a manifest is a JSON object")
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unknown manifest version {data.get('version')!r}")
            chunks = tuple(Chunk(int(i), int(n), s) for i, n, s in data["chunks"])
            manifest = Manifest(
                backup_id=str(data["backup_id"]), volume_id=str(data["volume_id"]),
                size_bytes=int(data["size_bytes"]), chunk_size=int(data["chunk_size"]),
                compression=str(data["compression"]), parent_id=data.get("parent_id"),
                created_at=str(data["created_at"]), chunks=chunks,
                source_stamp=tuple(int(v) for v in data["source_stamp"]) if data.get("source_stamp") else None,
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed manifest: {exc}") from exc
        check_layout(manifest)
        return manifest

    def objects(self) -> set[str]:
        return {c.sha256 for c in self.chunks if c.sha256 is not None}


def layout(size_bytes: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """(index, offset, length) of every chunk of a volume of ``size_bytes``."""
    if chunk_size <= 0:
        raise ValueError("chunk size must be positive")
    return [(i, off, min(chunk_size, size_bytes - off)) for i, off in enumerate(range(0, size_bytes, chunk_size))]


def check_layout(m: Manifest) -> None:
    """ValueError unless the chunks tile the volume exactly and every hash is a sha256."""
    expected = layout(m.size_bytes, m.chunk_size)
    if len(expected) != len(m.chunks):
        raise ValueError(f"manifest lists {len(m.chunks)} chunks, a {m.size_bytes}-byte volume has {len(expected)}")
    for (index, _, length), chunk in zip(expected, m.chunks, strict=True):
        if chunk.index != index or chunk.length != length:
            raise ValueError(f"chunk {chunk.index} ({chunk.length} bytes) is out of place")
        if chunk.sha256 is not None and not _SHA256.match(chunk.sha256):
            raise ValueError(f"chunk {index} has no valid sha256")
    if m.compression not in ("zstd", "auto", "zlib", "none"):
        raise ValueError(f"unknown compression {m.compression!r}")


def object_path(sha256: str) -> str:
    """Where a chunk's data lives, relative to the volume's backup directory."""
    return f"objects/{sha256[:2]}/{sha256}"


def to_write(chunks: Iterable[Chunk], stored: set[str]) -> set[str]:
    """Objects a new manifest needs that are not stored yet (what the backup writes)."""
    return {c.sha256 for c in chunks if c.sha256 is not None and c.sha256 not in stored}


def freed_by_delete(deleted: Manifest, remaining: Iterable[Manifest]) -> set[str]:
    """Objects no other manifest of the volume names once ``deleted`` goes."""
    kept: set[str] = set()
    for m in remaining:
        kept |= m.objects()
    return deleted.objects() - kept


@dataclass(frozen=True)
class BackupStats:
    chunks: int
    new_chunks: int
    data_bytes: int  # bytes in non-zero chunks
    stored_bytes: int  # compressed bytes this backup wrote


def summarise(chunks: Iterable[Chunk], written: dict[str, int]) -> BackupStats:
    """Counts for the catalog: ``written`` maps each object this backup wrote to its stored size."""
    listed = list(chunks)
    return BackupStats(chunks=len(listed), new_chunks=len(written),
                       data_bytes=sum(c.length for c in listed if not c.zero), stored_bytes=sum(written.values()))
