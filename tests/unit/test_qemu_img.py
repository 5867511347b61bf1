"""qemu-img argv builders, info parsing, upload safety checks, and the runners on real images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import uvloop

from hvd.errors import BadRequest, DriverError, Timeout
from hvd.storage import qemu_img as q


def test_create_overlay_argv() -> None:
    assert q.create_overlay_argv(Path("/b/base"), Path("/i/disk"), 1 << 30, "raw") == [
        "qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", "/b/base", "/i/disk", "1073741824",
    ]  # fmt: skip
    assert q.create_overlay_argv("/b", "/d", None, "qcow2")[-1] == "/d"


def test_convert_argv_always_names_the_source_format() -> None:
    assert q.convert_argv("/a", "/b", "qcow2", "raw") == [
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "/a",
        "/b",
    ]
    assert q.convert_argv("/a", "/b", "vhd", "qcow2", compress=True, force_share=True) == [
        "qemu-img", "convert", "-U", "-f", "vpc", "-O", "qcow2", "-c", "/a", "/b",
    ]  # fmt: skip
    assert q.snapshot_argv("/i/disk", "/s.qcow2") == [
        "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", "/i/disk", "/s.qcow2",
    ]  # fmt: skip
    assert q.to_raw_argv("/x", "/y", "qcow2")[2:6] == ["-f", "qcow2", "-O", "raw"]
    assert q.volume_to_image_argv("/dev/vg/volume-1", "/s/.i.partial", "raw", "qcow2") == [
        "qemu-img", "convert", "-U", "-f", "raw", "-O", "qcow2", "/dev/vg/volume-1", "/s/.i.partial",
    ]  # fmt: skip
    assert q.convert_argv("/a", "/b", "raw", "qcow2", force_share=True, into_new=True) == [
        "qemu-img", "convert", "-U", "-n", "--target-is-zero", "-f", "raw", "-O", "qcow2", "/a", "/b",
    ]  # fmt: skip


def test_info_resize_create_argv() -> None:
    assert q.info_argv("/x") == ["qemu-img", "info", "--output=json", "/x"]
    assert q.info_argv("/x", "raw", force_share=True) == [
        "qemu-img",
        "info",
        "--output=json",
        "-U",
        "-f",
        "raw",
        "/x",
    ]
    assert q.resize_argv("/x", 5) == ["qemu-img", "resize", "-f", "qcow2", "/x", "5"]
    assert q.create_argv("/x", "qcow2", 7) == ["qemu-img", "create", "-f", "qcow2", "/x", "7"]


def test_limited_argv_wraps_in_prlimit() -> None:
    argv = q.limited_argv(["qemu-img", "info", "/x"])
    assert argv[-3:] == ["qemu-img", "info", "/x"]
    if argv[0] == "prlimit":
        assert "--" in argv and any(a.startswith("--as=") for a in argv)


def _info(**extra: object) -> dict[str, object]:
    return {"format": "qcow2", "virtual-size": 1048576, "actual-size": 200704, **extra}


def test_parse_info() -> None:
    info = q.parse_info(json.dumps(_info(**{"backing-filename": "b", "full-backing-filename": "/x/b"})))
    assert (info.format, info.virtual_size, info.actual_size) == ("qcow2", 1048576, 200704)
    assert info.backing_file == "/x/b" and info.data_file is None
    data_file = _info(**{"format-specific": {"type": "qcow2", "data": {"data-file": "/etc/shadow"}}})
    assert q.parse_info(data_file).data_file == "/etc/shadow"
    with pytest.raises(DriverError):
        q.parse_info("{}")
    with pytest.raises(DriverError):
        q.parse_info("not json")


def test_safe_upload_accepts_plain_images() -> None:
    q.check_safe_upload(q.parse_info(_info()), "qcow2")
    q.check_safe_upload(q.parse_info(_info(format="raw")), "raw")
    q.check_safe_upload(q.parse_info(_info(format="raw")), "iso")
    q.check_safe_upload(q.parse_info(_info(format="vpc")), "vhd")


@pytest.mark.parametrize(
    ("info", "declared", "words"),
    [
        (_info(), "raw", "content is qcow2"),
        (_info(format="raw"), "qcow2", "content is raw"),
        (_info(**{"backing-filename": "/etc/passwd"}), "qcow2", "backing file"),
        (
            _info(**{"format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}),
            "qcow2",
            "data file",
        ),
        (
            _info(format="vmdk", **{"format-specific": {"data": {"create-type": "monolithicFlat"}}}),
            "vmdk",
            "extent",
        ),
        (_info(encrypted=True), "qcow2", "encrypted"),
        (_info(), "docker", "unsupported"),
    ],
)
def test_safe_upload_rejects(info: dict[str, object], declared: str, words: str) -> None:
    with pytest.raises(BadRequest) as err:
        q.check_safe_upload(q.parse_info(info), declared)
    assert words in err.value.message
    assert err.value.status == 400


async def test_runners_on_real_images(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    await q.create(base, "raw", 1 << 20)
    overlay = tmp_path / "disk"
    await q.create_overlay(base, overlay, 4 << 20, "raw")
    info = await q.info(overlay)
    assert info.format == "qcow2" and info.virtual_size == 4 << 20
    assert info.backing_file is not None and info.backing_file.endswith("base.raw")
    with pytest.raises(BadRequest):
        q.check_safe_upload(info, "qcow2")  # an overlay is not a safe upload
    await q.resize(overlay, 8 << 20)
    assert (await q.info(overlay, "qcow2")).virtual_size == 8 << 20
    flat = tmp_path / "flat.qcow2"
    await q.run(q.snapshot_argv(overlay, flat))
    flat_info = await q.info(flat)
    assert flat_info.backing_file is None and flat_info.virtual_size == 8 << 20
    q.check_safe_upload(flat_info, "qcow2")
    raw = tmp_path / "flat.raw"
    await q.run(q.to_raw_argv(flat, raw, "qcow2"))
    assert raw.stat().st_size == 8 << 20


async def test_real_data_file_image_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 4096)
    evil = tmp_path / "evil.qcow2"
    await q.run(["qemu-img", "create", "-f", "qcow2", "-o", f"data_file={target}", str(evil), "1M"])
    with pytest.raises(BadRequest, match="data file"):
        q.check_safe_upload(await q.info(evil), "qcow2")


async def test_runner_failure_is_a_driver_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="qemu-img info failed"):
        await q.info(tmp_path / "missing")
    with pytest.raises(DriverError, match="cannot run"):
        await q.run(["/nonexistent/tool"])


async def test_runner_reports_a_process_past_its_timeout_as_timeout() -> None:
    """(The kill itself, on a timeout or a cancellation, is hvd/spawn.py's: tests/unit/test_spawn.py.)"""
    with pytest.raises(Timeout, match=r"sleep 30 took longer than 0\.2 s"):
        await q.run(["sleep", "30"], timeout=0.2)


def test_runner_works_under_the_daemons_event_loop() -> None:
    assert uvloop.run(q.run(["sh", "-c", "printf ok; printf warn >&2"])) == b"ok"
