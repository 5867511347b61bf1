"""qemu-img: pure argv builders, a JSON `info` parser, upload safety checks, async runners.

Builders only turn arguments into argv lists (no policy); runners exec them without a shell.
Every builder passes the source format explicitly (``-f``/``-F``): letting qemu-img probe the
format of a guest-writable raw image is how a guest makes the host read its files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvd import spawn
from hvd.errors import BadRequest, DriverError, Timeout

QEMU_IMG = "qemu-img"

# qemu-img info on an untrusted image gets bounded memory and CPU, as Nova does (OSSA-2015-014).
INFO_ADDRESS_SPACE_BYTES = 1 << 30
INFO_CPU_SECONDS = 30

# Formats hvd accepts as image disk formats and can hand to qemu-img.
KNOWN_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso"})
# qemu-img names some formats differently from Glance.
_QEMU_NAME = {"vhd": "vpc", "iso": "raw"}
# vmdk sub-formats that keep all data in the one file (others reference extent files on the host).
_SAFE_VMDK_TYPES = frozenset({"monolithicSparse", "streamOptimized"})


def qemu_format(disk_format: str) -> str:
    """qemu-img's name of a Glance disk_format (vhd → vpc, iso → raw)."""
    return _QEMU_NAME.get(disk_format, disk_format)


def _p(path: Path | str) -> str:
    return str(path)


def create_argv(path: Path | str, fmt: str, size_bytes: int) -> list[str]:
    """A blank image (ephemeral or swap disk)."""
    return [QEMU_IMG, "create", "-f", fmt, _p(path), str(size_bytes)]


def create_overlay_argv(base: Path | str, path: Path | str, size_bytes: int | None, backing_fmt: str) -> list[str]:
    """A qcow2 overlay on ``base``; ``size_bytes`` None keeps the base's virtual size."""
    argv = [QEMU_IMG, "create", "-f", "qcow2", "-F", qemu_format(backing_fmt), "-b", _p(base), _p(path)]
    if size_bytes is not None:
        argv.append(str(size_bytes))
    return argv


def convert_argv(
    src: Path | str,
    dest: Path | str,
    src_fmt: str,
    out_fmt: str,
    *,
    compress: bool = False,
    force_share: bool = False,
    into_new: bool = False,
) -> list[str]:
    """Copy ``src`` into a standalone ``dest`` (the backing chain is flattened).

    ``force_share`` (-U) reads an image a running QEMU holds open; only consistent while the
    guest is paused or its disk is otherwise quiesced. ``into_new``: ``dest`` exists, was just
    made (reads zeros) and is at least as large as ``src`` (-n --target-is-zero).
    """
    argv = [QEMU_IMG, "convert"]
    if force_share:
        argv.append("-U")
    if into_new:
        argv += ["-n", "--target-is-zero"]
    argv += ["-f", qemu_format(src_fmt), "-O", qemu_format(out_fmt)]
    if compress:
        argv.append("-c")
    return [*argv, _p(src), _p(dest)]


def snapshot_argv(disk: Path | str, dest: Path | str, disk_fmt: str = "qcow2") -> list[str]:
    """A standalone qcow2 image from an instance disk (overlay + base), readable while paused."""
    return convert_argv(disk, dest, disk_fmt, "qcow2", force_share=True)


def volume_to_image_argv(src: Path | str, dest: Path | str, src_fmt: str, out_fmt: str) -> list[str]:
    """A standalone image of a volume's data (upload-to-image); -U: an attached (in-use) volume is
    held open by its guest's QEMU, which only a forced upload reads."""
    return convert_argv(src, dest, src_fmt, out_fmt, force_share=True)


def to_raw_argv(src: Path | str, dest: Path | str, src_fmt: str) -> list[str]:
    """Convert a cached image to raw (force_raw_images)."""
    return convert_argv(src, dest, src_fmt, "raw")


def info_argv(path: Path | str, fmt: str | None = None, *, force_share: bool = False) -> list[str]:
    """``qemu-img info --output=json``; ``fmt`` None lets qemu-img detect the real format."""
    argv = [QEMU_IMG, "info", "--output=json"]
    if force_share:
        argv.append("-U")
    if fmt is not None:
        argv += ["-f", qemu_format(fmt)]
    return [*argv, _p(path)]


def resize_argv(path: Path | str, size_bytes: int, fmt: str = "qcow2") -> list[str]:
    """Grow an image to ``size_bytes`` (shrinking is refused by qemu-img without --shrink)."""
    return [QEMU_IMG, "resize", "-f", qemu_format(fmt), _p(path), str(size_bytes)]


def limited_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` under prlimit (address space, CPU time) when prlimit exists."""
    if shutil.which("prlimit") is None:
        return list(argv)
    return ["prlimit", f"--as={INFO_ADDRESS_SPACE_BYTES}", f"--cpu={INFO_CPU_SECONDS}", "--", *argv]


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about an image."""

    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    encrypted: bool
    format_specific: Mapping[str, Any]


def parse_info(data: str | bytes | Mapping[str, Any]) -> ImageInfo:
    """Parse ``qemu-img info --output=json`` (text or decoded) into an ImageInfo."""
    try:
        raw: Any = json.loads(data) if isinstance(data, str | bytes) else data
        specific = raw.get("format-specific") or {}
        specific_data = specific.get("data") or {}
        return ImageInfo(
            format=str(raw["format"]),
            virtual_size=int(raw["virtual-size"]),
            actual_size=int(raw["actual-size"]) if raw.get("actual-size") is not None else None,
            backing_file=raw.get("full-backing-filename") or raw.get("backing-filename"),
            backing_format=raw.get("backing-filename-format"),
            data_file=specific_data.get("data-file"),
            encrypted=bool(raw.get("encrypted", False)),
            format_specific=specific,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DriverError(f"cannot parse qemu-img info output: {exc}") from exc


def check_safe_upload(info: ImageInfo, declared_format: str) -> None:
    """Refuse an image whose content could make the host read other files.

    Raises BadRequest when the detected format differs from the declared one (a raw image that
    is really a qcow2 would be opened with its header's backing file), when a qcow2 names a
    backing file or an external data file, when a vmdk references extent files, or when the
    image is encrypted (hvd cannot boot it).
    """
    declared = qemu_format(declared_format)
    if declared_format not in KNOWN_FORMATS:
        raise BadRequest(f"unsupported disk_format '{declared_format}'")
    if info.format != declared:
        raise BadRequest(
            f"image content is {info.format}, but disk_format {declared_format} was declared",
            detected=info.format,
            declared=declared_format,
        )
    if info.backing_file:
        raise BadRequest(f"image has a backing file ({info.backing_file}); upload a standalone image")
    if info.data_file:
        raise BadRequest(f"image references an external data file ({info.data_file}); not allowed")
    if info.format == "vmdk":
        create_type = (info.format_specific.get("data") or {}).get("create-type")
        if create_type not in _SAFE_VMDK_TYPES:
            raise BadRequest(f"vmdk subformat {create_type!r} references extent files; not allowed")
    if info.encrypted:
        raise BadRequest("encrypted images are not supported")


# --- runners ------------------------------------------------------------------------------------


def _describe(argv: Sequence[str]) -> str:
    """The tool and subcommand of ``argv`` for messages, past a prlimit wrapper."""
    tool = list(argv[argv.index("--") + 1 :]) if argv[0] == "prlimit" and "--" in argv else list(argv)
    return " ".join(tool[:2])


async def run(argv: Sequence[str], timeout: float | None = 3600.0, env: Mapping[str, str] | None = None) -> bytes:
    """Exec ``argv`` (never through a shell, without forking the daemon: hvd/spawn.py); return
    stdout, raise DriverError on failure. On timeout the process is killed and Timeout is raised
    (and on cancellation, which propagates)."""
    try:
        done = await spawn.run(argv, timeout=timeout, env=env)
    except TimeoutError as exc:  # first: TimeoutError is an OSError too
        raise Timeout(f"{_describe(argv)} took longer than {timeout} s") from exc
    except OSError as exc:
        raise DriverError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise DriverError(f"{_describe(argv)} failed: {message}", argv=list(argv))
    return done.stdout


async def info(path: Path | str, fmt: str | None = None, *, force_share: bool = False) -> ImageInfo:
    """``qemu-img info`` of ``path`` under resource limits."""
    return parse_info(await run(limited_argv(info_argv(path, fmt, force_share=force_share)), timeout=60))


async def create(path: Path | str, fmt: str, size_bytes: int) -> None:
    await run(create_argv(path, fmt, size_bytes), timeout=120)


async def create_overlay(base: Path | str, path: Path | str, size_bytes: int | None, backing_fmt: str) -> None:
    await run(create_overlay_argv(base, path, size_bytes, backing_fmt), timeout=120)


async def convert(src: Path | str, dest: Path | str, src_fmt: str, out_fmt: str, **kwargs: bool) -> None:
    await run(convert_argv(src, dest, src_fmt, out_fmt, **kwargs))


async def resize(path: Path | str, size_bytes: int, fmt: str = "qcow2") -> None:
    await run(resize_argv(path, size_bytes, fmt), timeout=120)
