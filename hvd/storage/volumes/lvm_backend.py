"""The LVM backend: one logical volume per volume, ``/dev/<vg>/volume-<uuid>`` (Cinder's LVM driver).

Thick LVs by default; with ``thin_pool`` thin LVs and thin snapshots. Copies (from an image, a
snapshot or a volume) are written with qemu-img convert into the new LV; a thin LV reads zeros,
so zero areas are skipped there (--target-is-zero).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hvd.errors import DriverError
from hvd.storage import qemu_img
from hvd.storage.volumes import lvm_argv as lvm
from hvd.storage.volumes.backend import (
    GIB,
    Capacity,
    VolumeBackend,
    check_fits,
    parse_name,
    snapshot_name,
    volume_name,
)


def copy_argv(src: str, src_fmt: str, dest: str, target_is_zero: bool) -> list[str]:
    """qemu-img convert into an existing block device (-n: do not create the target)."""
    argv = [qemu_img.QEMU_IMG, "convert", "-n", "-f", qemu_img.qemu_format(src_fmt), "-O", "raw"]
    if target_is_zero:
        argv.append("--target-is-zero")
    return [*argv, src, dest]


class LvmBackend(VolumeBackend):
    driver = "lvm"
    volume_format = "raw"

    def __init__(self, name: str, volume_group: str, thin_pool: str = "", timeout: float = 3600.0) -> None:
        self.name = name
        self.vg = volume_group
        self.thin_pool = thin_pool
        self.timeout = timeout

    def device(self, lv: str) -> str:
        return lvm.device_path(self.vg, lv)

    def connection_info(self, volume_id: str) -> dict[str, Any]:
        return {"type": "block", "path": self.device(volume_name(volume_id)), "format": "raw"}

    def raw_path(self, volume_id: str) -> Path | None:
        return Path(self.device(volume_name(volume_id)))

    async def _run(self, argv: list[str]) -> str:
        return (await qemu_img.run(argv, timeout=self.timeout)).decode(errors="replace")

    async def _lvcreate(self, lv: str, size_bytes: int) -> None:
        await self._run(lvm.lvcreate_argv(self.vg, lv, size_bytes, self.thin_pool))

    async def _remove_quietly(self, lv: str) -> None:
        with contextlib.suppress(DriverError):
            await self._run(lvm.lvremove_argv(self.vg, lv))

    async def _create_and_copy(self, volume_id: str, size_bytes: int, src: str, src_fmt: str) -> None:
        lv = volume_name(volume_id)
        await self._lvcreate(lv, size_bytes)
        try:
            await self._run(copy_argv(src, src_fmt, self.device(lv), target_is_zero=bool(self.thin_pool)))
        except BaseException:
            await self._remove_quietly(lv)
            raise

    async def create_blank(self, volume_id: str, size_bytes: int) -> None:
        await self._lvcreate(volume_name(volume_id), size_bytes)

    async def create_from_image(self, volume_id: str, image: Path, image_format: str, size_bytes: int) -> None:
        await check_fits(image, image_format, size_bytes)
        await self._create_and_copy(volume_id, size_bytes, str(image), image_format)

    async def create_from_snapshot(self, volume_id: str, snapshot_id: str, size_bytes: int) -> None:
        await self._create_and_copy(volume_id, size_bytes, self.device(snapshot_name(snapshot_id)), "raw")

    async def clone(self, volume_id: str, source_volume_id: str, size_bytes: int) -> None:
        await self._create_and_copy(volume_id, size_bytes, self.device(volume_name(source_volume_id)), "raw")

    async def _exists(self, lv: str) -> bool:
        return lv in await self.list_objects()

    async def delete_volume(self, volume_id: str, wipe: str = "none") -> None:
        lv = volume_name(volume_id)
        if not await self._exists(lv):
            return
        if wipe != "none" and not self.thin_pool:  # thin LVs are zeroed by the pool when reused
            await self._run(lvm.zero_argv(self.device(lv), discard=wipe == "discard"))
        await self._run(lvm.lvremove_argv(self.vg, lv))

    async def extend(self, volume_id: str, size_bytes: int) -> None:
        await self._run(lvm.lvextend_argv(self.vg, volume_name(volume_id), size_bytes))

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        size = await self.size_bytes(volume_id) or GIB
        await self._run(lvm.snapshot_argv(self.vg, snapshot_name(snapshot_id), volume_name(volume_id), size,
                                          thin=bool(self.thin_pool)))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        lv = snapshot_name(snapshot_id)
        if await self._exists(lv):
            await self._run(lvm.lvremove_argv(self.vg, lv))

    async def capacity(self) -> Capacity:
        if self.thin_pool:
            size, free = lvm.parse_pool_capacity(await self._run(lvm.pool_capacity_argv(self.vg, self.thin_pool)))
        else:
            size, free = lvm.parse_vg_capacity(await self._run(lvm.vg_capacity_argv(self.vg)))
        return Capacity(total_gb=size >> 30, free_gb=free >> 30, thin=bool(self.thin_pool))

    async def list_objects(self) -> set[str]:
        return {n for n in lvm.parse_names(await self._run(lvm.lv_names_argv(self.vg))) if parse_name(n) is not None}

    async def size_bytes(self, volume_id: str) -> int | None:
        lv = volume_name(volume_id)
        if not await self._exists(lv):
            return None
        return int((await self._run(lvm.lv_size_argv(self.vg, lv))).split()[0])
