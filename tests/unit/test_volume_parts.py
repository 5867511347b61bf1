"""Pure parts of volumes: backup chunk plan and manifest, chunk I/O on real files (incremental,
restore, verify, delete), LVM argv builders and parsers, the volume scheduler."""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from pathlib import Path

import pytest

from hvd.errors import NoValidHost
from hvd.storage.volumes import backup_io
from hvd.storage.volumes import lvm_argv as lvm
from hvd.storage.volumes.backend import BackendInfo, Capacity, parse_name
from hvd.storage.volumes.backup_plan import Chunk, Manifest, freed_by_delete, layout, to_write
from hvd.storage.volumes.lvm_backend import copy_argv
from hvd.storage.volumes.scheduler import VolumeRequest, choose, select

CHUNK = 64 * 1024
SHA_A = "a" * 64
SHA_B = "b" * 64


def manifest(bid: str, shas: list[str | None], size: int | None = None) -> Manifest:
    size = size if size is not None else len(shas) * CHUNK
    chunks = tuple(Chunk(i, length, shas[i]) for i, _, length in layout(size, CHUNK))
    return Manifest(bid, "v", size, CHUNK, "zlib", None, "t", chunks)


def test_layout_tiles_the_volume_with_a_short_last_chunk() -> None:
    assert layout(10, 4) == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert layout(0, 4) == []
    with pytest.raises(ValueError):
        layout(10, 0)


def test_manifest_round_trips_and_refuses_what_does_not_tile() -> None:
    m = manifest("b1", [SHA_A, None, SHA_B])
    assert Manifest.from_json(m.to_json()) == m
    broken = m.to_json().replace('"size_bytes":196608', '"size_bytes":999999')
    with pytest.raises(ValueError, match="chunks"):
        Manifest.from_json(broken)
    with pytest.raises(ValueError, match="sha256"):
        Manifest.from_json(m.to_json().replace(SHA_A, "not-a-hash"))
    with pytest.raises(ValueError, match="version"):
        Manifest.from_json("{}")
    for bad in ('{"version": 1}', "[]", "not json"):
        with pytest.raises(ValueError, match="malformed"):
            Manifest.from_json(bad)


def test_incremental_writes_only_new_content_and_delete_frees_only_unshared() -> None:
    first = manifest("b1", [SHA_A, None, SHA_B])
    second = manifest("b2", [SHA_A, SHA_B, None])
    assert to_write(second.chunks, first.objects()) == set()
    assert to_write(manifest("b3", ["c" * 64, None, None]).chunks, first.objects()) == {"c" * 64}
    assert freed_by_delete(first, [second]) == set()
    assert freed_by_delete(second, []) == {SHA_A, SHA_B}


def test_backup_io_round_trip_incremental_verify_and_delete(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    data = os.urandom(CHUNK) + bytes(CHUNK) + os.urandom(CHUNK // 2)
    src.write_bytes(data)
    with open(src, "r+b") as fh:
        fh.truncate(4 * CHUNK)  # a hole at the end
    root = tmp_path / "backups"
    full = backup_io.backup_volume(src, root, "v", "b1", None, 4 * CHUNK, CHUNK, 1, "t")
    assert (full.chunks, full.new_chunks, full.data_bytes) == (4, 2, 2 * CHUNK)
    again = backup_io.backup_volume(src, root, "v", "b2", "b1", 4 * CHUNK, CHUNK, 1, "t")
    assert (again.new_chunks, again.stored_bytes) == (0, 0)
    dest = tmp_path / "restored"
    dest.write_bytes(b"\xff" * 4 * CHUNK)  # an existing volume: zero chunks must be written
    backup_io.restore(root, backup_io.read_manifest(root, "v", "b2"), dest, dest_reads_zero=False)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert backup_io.verify(root, backup_io.read_manifest(root, "v", "b1")) == []
    assert backup_io.delete_backup(root, "v", "b1") == 0  # b2 still names both objects
    victim = next(p for p in (root / "volume-v" / "objects").rglob("*") if p.is_file())
    victim.unlink()
    assert "missing" in backup_io.verify(root, backup_io.read_manifest(root, "v", "b2"))[0]
    assert backup_io.known_backups(root) == {"b2": "v"}
    backup_io.delete_backup(root, "v", "b2")
    assert not (root / "volume-v").exists()


TEXT = (b"the quick brown fox jumps over the lazy dog 0123456789\n" * 2000)[:CHUNK]


def _objects(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "volume-v" / "objects").rglob("*") if p.is_file()}


def test_compressible_chunks_are_stored_as_zstd_frames_and_random_ones_as_they_are(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    rand = os.urandom(CHUNK)
    src.write_bytes(TEXT + rand)
    root = tmp_path / "backups"
    stats = backup_io.backup_volume(src, root, "v", "b1", None, 2 * CHUNK, CHUNK, 3, "t")
    objects = _objects(root)
    text_obj, rand_obj = objects[hashlib.sha256(TEXT).hexdigest()], objects[hashlib.sha256(rand).hexdigest()]
    assert rand_obj == rand  # incompressible: the raw data, its length equal to the chunk's
    assert len(text_obj) < CHUNK // 10 and text_obj[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert stats.stored_bytes == len(text_obj) + len(rand_obj)
    assert backup_io.read_manifest(root, "v", "b1").compression == "zstd"
    dest = tmp_path / "restored"
    dest.write_bytes(bytes(2 * CHUNK))
    backup_io.restore(root, backup_io.read_manifest(root, "v", "b1"), dest, dest_reads_zero=True)
    assert dest.read_bytes() == TEXT + rand


def test_backups_made_before_zstd_still_restore_and_verify(tmp_path: Path) -> None:
    """Objects of an "auto" backup: a tag byte, then zlib-compressed or raw data."""
    rand = os.urandom(CHUNK)
    root = tmp_path / "backups"
    shas = [hashlib.sha256(TEXT).hexdigest(), hashlib.sha256(rand).hexdigest()]
    for sha, blob in zip(shas, (b"z" + zlib.compress(TEXT, 1), b"r" + rand), strict=True):
        obj = root / "volume-v" / f"objects/{sha[:2]}/{sha}"
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(blob)
    chunks = (Chunk(0, CHUNK, shas[0]), Chunk(1, CHUNK, shas[1]))
    old = Manifest("b0", "v", 2 * CHUNK, CHUNK, "auto", None, "t", chunks)
    backup_io.manifest_path(root, "v", "b0").write_bytes(old.to_json().encode())
    assert backup_io.verify(root, backup_io.read_manifest(root, "v", "b0")) == []
    dest = tmp_path / "restored"
    dest.write_bytes(bytes(2 * CHUNK))
    backup_io.restore(root, backup_io.read_manifest(root, "v", "b0"), dest, dest_reads_zero=True)
    assert dest.read_bytes() == TEXT + rand


def test_a_filesystem_without_o_direct_gets_the_object_through_the_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open
    refused: list[str] = []

    def no_direct(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            refused.append(str(path))
            raise OSError(22, "Invalid argument")  # what tmpfs answers
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_io.os, "open", no_direct)
    src = tmp_path / "vol"
    rand = os.urandom(CHUNK)
    src.write_bytes(rand)
    root = tmp_path / "backups"
    backup_io.backup_volume(src, root, "v", "b1", None, CHUNK, CHUNK, 1, "t")
    assert refused and list(_objects(root).values()) == [rand]
    assert not list(root.rglob(".tmp-*"))
    assert backup_io.verify(root, backup_io.read_manifest(root, "v", "b1")) == []


def test_lvm_argv_builders() -> None:
    cfg = ["--config", lvm.LVM_CONFIG]
    assert lvm.lvcreate_argv("vg", "volume-x", 1 << 30) == ["lvcreate", *cfg, "-y", "-n", "volume-x", "-L",
                                                            "1073741824b", "vg"]
    assert lvm.lvcreate_argv("vg", "volume-x", 10, "pool") == ["lvcreate", *cfg, "-y", "-n", "volume-x", "-V", "10b",
                                                               "-T", "vg/pool"]
    assert lvm.snapshot_argv("vg", "snapshot-s", "volume-x", 10, thin=True) == [
        "lvcreate", *cfg, "-y", "-s", "-kn", "-n", "snapshot-s", "vg/volume-x"]
    assert lvm.snapshot_argv("vg", "snapshot-s", "volume-x", 10, thin=False)[-3:] == ["-L", "10b", "vg/volume-x"]
    assert lvm.lvremove_argv("vg", "volume-x") == ["lvremove", *cfg, "-f", "vg/volume-x"]
    assert lvm.lvextend_argv("vg", "volume-x", 20) == ["lvextend", *cfg, "-L", "20b", "vg/volume-x"]
    assert lvm.zero_argv("/dev/vg/volume-x", discard=False) == ["blkdiscard", "-z", "/dev/vg/volume-x"]
    assert copy_argv("/img", "qcow2", "/dev/vg/volume-x", True) == [
        "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "--target-is-zero", "/img", "/dev/vg/volume-x"]
    assert lvm.parse_vg_capacity("  1069547520 1069547520\n") == (1069547520, 1069547520)
    assert lvm.parse_pool_capacity("  1000 25,00\n") == (1000, 750)
    assert lvm.parse_names("  volume-a\n  pool\n") == {"volume-a", "pool"}
    with pytest.raises(ValueError):
        lvm.parse_vg_capacity("garbage")


def test_object_names_are_only_volume_or_snapshot_uuids() -> None:
    vid = "0b8c2f4e-1d2a-4c3b-9f00-123456789abc"
    assert parse_name(f"volume-{vid}") == ("volume", vid)
    assert parse_name(f"snapshot-{vid}") == ("snapshot", vid)
    for other in ("pool", f"volume-{vid}.partial", "volume-x", f"backup-{vid}"):
        assert parse_name(other) is None


def info(host: str, name: str, free: int, az: str = "nova") -> BackendInfo:
    return BackendInfo(host, name, "file", az, Capacity(100, free))


def test_scheduler_filters_and_weighs_most_free_first() -> None:
    backends = [info("h1", "file", 10), info("h2", "file", 50), info("h3", "lvm", 90, az="az2"),
                info("h4", "file", 2)]
    ranked, trace = select(backends, VolumeRequest(5, "nova", {}))
    assert [b.host for b in ranked] == ["h2", "h1"]
    assert trace == ["h3@lvm: availability zone az2 is not nova", "h4@file: 2 GiB free, 5 GiB requested"]
    assert choose(backends, VolumeRequest(5, None, {"volume_backend_name": "lvm"})).host == "h3"
    with pytest.raises(NoValidHost, match="h1@file: volume_backend_name lvm does not match"):
        choose(backends, VolumeRequest(100, None, {"volume_backend_name": "lvm"}))
    with pytest.raises(NoValidHost, match="no volume backend is configured"):
        choose([], VolumeRequest(1, None, {}))


def test_an_unwritten_source_file_reuses_its_parent_and_a_write_is_never_missed(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    src.write_bytes(os.urandom(2 * CHUNK))
    old = time.time() - 60
    os.utime(src, (old, old))  # settled: not written for a minute
    root = tmp_path / "b"
    backup_io.backup_volume(src, root, "v", "b1", None, 2 * CHUNK, CHUNK, 1, "t")
    first = backup_io.read_manifest(root, "v", "b1")
    assert first.source_stamp is not None
    backup_io.backup_volume(src, root, "v", "b2", "b1", 2 * CHUNK, CHUNK, 1, "t")
    assert backup_io.read_manifest(root, "v", "b2").chunks == first.chunks
    with open(src, "r+b") as fh:  # a write: mtime moves to now, so the stamp no longer matches
        fh.write(b"changed")
    stats = backup_io.backup_volume(src, root, "v", "b3", "b2", 2 * CHUNK, CHUNK, 1, "t")
    assert stats.new_chunks == 1 and backup_io.read_manifest(root, "v", "b3").source_stamp is None  # still racy
    assert backup_io.source_stamp(os.stat(src), time.time_ns()) is None


def test_debris_of_a_crashed_backup_goes_once_old_and_other_writes_stay(tmp_path: Path) -> None:
    old_tmp = tmp_path / "volume-v" / "objects" / "aa" / ".tmp-aa-1"
    old_tmp.parent.mkdir(parents=True)
    old_tmp.write_bytes(b"x")
    fresh = tmp_path / "volume-v" / ".tmp-manifest-b.json-2"
    fresh.write_bytes(b"x")  # maybe another host writing to a shared backup_dir right now
    hour_ago = time.time() - 2 * backup_io.DEBRIS_AGE_S
    os.utime(old_tmp, (hour_ago, hour_ago))
    assert backup_io.remove_debris(tmp_path) == 1
    assert not old_tmp.exists() and fresh.exists()


def test_file_backend_wipe_zero_overwrites_the_data_before_unlinking(tmp_path: Path) -> None:
    import asyncio

    from hvd.storage.volumes.file_backend import FileBackend

    backend = FileBackend("file", tmp_path / "vols")
    vid = "0b8c2f4e-1d2a-4c3b-9f00-123456789abc"
    backend.path(vid).write_bytes(os.urandom(3 * CHUNK))
    witness = tmp_path / "witness"
    os.link(backend.path(vid), witness)  # a second name sees what happens to the blocks
    asyncio.run(backend.delete_volume(vid, wipe="zero"))
    assert not backend.path(vid).exists()
    assert witness.read_bytes() == bytes(3 * CHUNK)
    asyncio.run(backend.delete_volume(vid, wipe="zero"))  # already gone: still succeeds
