"""Image cache on real images made with qemu-img: naming, one fetch for concurrent callers,
raw conversion, atomicity, safety checks, ageing."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from hvd.errors import BadRequest, DriverError
from hvd.storage import image_cache as ic
from hvd.storage import qemu_img

IMAGE_ID = "917d60ef-f663-4e2d-b85b-e4511bb56bc2"


def test_cache_name_test_vector(tmp_path: Path) -> None:
    assert ic.cache_name(IMAGE_ID) == "60bba5916c6c90ed2ef7d3263de8f653111dd35f"
    assert ic.ImageCache(tmp_path).path_for(IMAGE_ID) == tmp_path / "_base" / "60bba5916c6c90ed2ef7d3263de8f653111dd35f"


@pytest.fixture(scope="module")
def qcow2_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 MiB qcow2 with recognisable data at offset 1 MiB."""
    d = tmp_path_factory.mktemp("src")
    raw = d / "src.raw"
    with raw.open("wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(b"HVD-CACHE-TEST")
    out = d / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


class Fetcher:
    """A fetch callable that copies a file slowly enough for callers to overlap, and counts calls."""

    def __init__(self, source: Path, delay: float = 0.05, error: Exception | None = None) -> None:
        self.source, self.delay, self.error, self.calls = source, delay, error, 0
        self.running = self.peak = 0  # fetches in progress now / at most at once

    async def __call__(self, dest: Path) -> None:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.error is not None:
                dest.write_bytes(b"partial")
                raise self.error
            dest.write_bytes(self.source.read_bytes())
        finally:
            self.running -= 1


def leftovers(cache: ic.ImageCache) -> list[str]:
    return sorted(p.name for p in cache.base_dir.iterdir() if p.name.startswith("."))


async def test_first_caller_fetches_and_converts_to_raw(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path, force_raw=True)
    fetch = Fetcher(qcow2_image)
    path = await cache.ensure_cached(IMAGE_ID, fetch, "qcow2")
    assert path == cache.path_for(IMAGE_ID) and fetch.calls == 1
    info = await qemu_img.info(path)
    assert info.format == "raw" and info.virtual_size == 4 << 20
    with path.open("rb") as f:
        f.seek(1 << 20)
        assert f.read(14) == b"HVD-CACHE-TEST"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(cache.base_dir.stat().st_mode) & 0o005 == 0o005  # others may traverse
    assert leftovers(cache) == []
    assert cache.format_of("qcow2") == "raw"

    again = await cache.ensure_cached(IMAGE_ID, fetch, "qcow2")
    assert again == path and fetch.calls == 1  # only the first instance pays


async def test_without_force_raw_keeps_qcow2(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path, force_raw=False)
    path = await cache.ensure_cached(IMAGE_ID, Fetcher(qcow2_image, 0), "qcow2")
    assert (await qemu_img.info(path)).format == "qcow2"
    assert cache.format_of("qcow2") == "qcow2" and cache.format_of("raw") == "raw"


async def test_ten_concurrent_callers_share_one_fetch_and_one_convert(
    tmp_path: Path, qcow2_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ic.ImageCache(tmp_path, force_raw=True)
    fetch = Fetcher(qcow2_image, delay=0.2)
    converts: list[list[str]] = []
    real_run = qemu_img.run

    async def counting_run(argv: list[str], timeout: float | None = 3600.0, env: None = None) -> bytes:
        if "convert" in argv:
            converts.append(list(argv))
        return await real_run(argv, timeout, env)

    monkeypatch.setattr(qemu_img, "run", counting_run)
    paths = await asyncio.gather(*(cache.ensure_cached(IMAGE_ID, fetch, "qcow2") for _ in range(10)))
    assert set(paths) == {cache.path_for(IMAGE_ID)}
    assert fetch.calls == 1 and cache.fetches == 1
    assert len(converts) == 1
    assert leftovers(cache) == []


async def test_different_images_fetch_in_parallel(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path)
    fetch = Fetcher(qcow2_image, delay=0.3)
    await asyncio.gather(*(cache.ensure_cached(f"image-{i}", fetch, "qcow2") for i in range(4)))
    assert fetch.calls == 4
    assert fetch.peak == 4  # all four were in flight at once: not serialised behind one another


async def test_failed_fetch_reaches_every_waiter_and_leaves_nothing(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path)
    failing = Fetcher(qcow2_image, delay=0.1, error=DriverError("image store unreachable"))
    results = await asyncio.gather(
        *(cache.ensure_cached(IMAGE_ID, failing, "qcow2") for _ in range(5)), return_exceptions=True
    )
    assert failing.calls == 1
    assert all(isinstance(r, DriverError) for r in results)
    assert not cache.is_cached(IMAGE_ID) and leftovers(cache) == []
    ok = Fetcher(qcow2_image, 0)
    await cache.ensure_cached(IMAGE_ID, ok, "qcow2")  # the next caller tries again
    assert ok.calls == 1 and cache.is_cached(IMAGE_ID)


async def test_cancelled_first_caller_does_not_cancel_the_fetch(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path)
    fetch = Fetcher(qcow2_image, delay=0.3)
    first = asyncio.create_task(cache.ensure_cached(IMAGE_ID, fetch, "qcow2"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(cache.ensure_cached(IMAGE_ID, fetch, "qcow2"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == cache.path_for(IMAGE_ID)
    assert fetch.calls == 1


@pytest.mark.parametrize("declared", ["raw", "vmdk"])
async def test_content_not_matching_declared_format_is_refused(
    tmp_path: Path, qcow2_image: Path, declared: str
) -> None:
    cache = ic.ImageCache(tmp_path)
    with pytest.raises(BadRequest, match="content is qcow2"):
        await cache.ensure_cached(IMAGE_ID, Fetcher(qcow2_image, 0), declared)
    assert not cache.is_cached(IMAGE_ID) and leftovers(cache) == []


async def test_image_with_backing_file_is_refused(tmp_path: Path, qcow2_image: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(qcow2_image), str(evil)],
        check=True,
        capture_output=True,
    )
    cache = ic.ImageCache(tmp_path / "inst")
    with pytest.raises(BadRequest, match="backing file"):
        await cache.ensure_cached(IMAGE_ID, Fetcher(evil, 0), "qcow2")
    assert not cache.is_cached(IMAGE_ID)


async def test_raw_image_is_cached_as_is(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(b"\0" * 65536)
    cache = ic.ImageCache(tmp_path / "inst")
    path = await cache.ensure_cached("raw-image", Fetcher(src, 0), "raw")
    assert path.read_bytes() == src.read_bytes()


async def test_cache_dir_is_traversable_under_the_units_umask(tmp_path: Path) -> None:
    # the systemd unit runs hvd with UMask=0077; libvirt-qemu still has to reach the cached bases
    src = tmp_path / "src.raw"
    src.write_bytes(b"\0" * 4096)
    cache = ic.ImageCache(tmp_path / "inst")
    old = os.umask(0o077)
    try:
        path = await cache.ensure_cached("raw-image", Fetcher(src, 0), "raw")
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.base_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


async def test_remove_unused(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path)
    for image in ("used", "old-unused", "young-unused"):
        await cache.ensure_cached(image, Fetcher(qcow2_image, 0), "qcow2")
    stale_part = cache.base_dir / ".part-deadbeef-1234"
    stale_part.write_bytes(b"x")
    for image in ("used", "old-unused"):
        _age(cache.path_for(image), 7200)
    _age(stale_part, 7200)

    assert cache.remove_unused({"used"}, max_age_s=0) == []  # 0 = never
    removed = cache.remove_unused({"used"}, max_age_s=3600)
    assert sorted(p.name for p in removed) == sorted([ic.cache_name("old-unused"), stale_part.name])
    assert cache.is_cached("used") and cache.is_cached("young-unused")
    assert not cache.is_cached("old-unused")


async def test_use_refreshes_age(tmp_path: Path, qcow2_image: Path) -> None:
    cache = ic.ImageCache(tmp_path)
    path = await cache.ensure_cached("img", Fetcher(qcow2_image, 0), "qcow2")
    _age(path, 7200)
    await cache.ensure_cached("img", Fetcher(qcow2_image, 0), "qcow2")
    assert cache.remove_unused(set(), max_age_s=3600) == []
