"""LVM: pure argv builders and output parsers (no policy, no I/O).

Every command carries ``--config`` that turns udev synchronisation off: hvd hosts may run without
udevd (containers, this project's test machines), where LVM would otherwise wait for udev events
that never come; LVM then makes the /dev/<vg>/<lv> nodes itself.
"""

from __future__ import annotations

LVM_CONFIG = "activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }"


def _lvm(tool: str, *args: str) -> list[str]:
    return [tool, "--config", LVM_CONFIG, *args]


def device_path(vg: str, lv: str) -> str:
    return f"/dev/{vg}/{lv}"


def lvcreate_argv(vg: str, lv: str, size_bytes: int, thin_pool: str = "") -> list[str]:
    """A new LV of ``size_bytes`` (thin in ``thin_pool`` when given; thick otherwise)."""
    if thin_pool:
        return _lvm("lvcreate", "-y", "-n", lv, "-V", f"{size_bytes}b", "-T", f"{vg}/{thin_pool}")
    return _lvm("lvcreate", "-y", "-n", lv, "-L", f"{size_bytes}b", vg)


def lvremove_argv(vg: str, lv: str) -> list[str]:
    return _lvm("lvremove", "-f", f"{vg}/{lv}")


def lvextend_argv(vg: str, lv: str, size_bytes: int) -> list[str]:
    return _lvm("lvextend", "-L", f"{size_bytes}b", f"{vg}/{lv}")


def snapshot_argv(vg: str, lv: str, origin: str, size_bytes: int, thin: bool) -> list[str]:
    """A snapshot LV of ``origin``: thin snapshots share the pool (and are made activatable:
    -kn), thick ones get a copy-on-write area as big as the origin, so it can never overflow."""
    if thin:
        return _lvm("lvcreate", "-y", "-s", "-kn", "-n", lv, f"{vg}/{origin}")
    return _lvm("lvcreate", "-y", "-s", "-n", lv, "-L", f"{size_bytes}b", f"{vg}/{origin}")


def vg_capacity_argv(vg: str) -> list[str]:
    return _lvm("vgs", "--noheadings", "--nosuffix", "--units", "b", "-o", "vg_size,vg_free", vg)


def pool_capacity_argv(vg: str, pool: str) -> list[str]:
    return _lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size,data_percent", f"{vg}/{pool}")


def lv_names_argv(vg: str) -> list[str]:
    return _lvm("lvs", "--noheadings", "-o", "lv_name", vg)


def lv_size_argv(vg: str, lv: str) -> list[str]:
    return _lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", f"{vg}/{lv}")


def zero_argv(device: str, discard: bool) -> list[str]:
    """Overwrite a block device with zeros (BLKZEROOUT), or discard its blocks."""
    return ["blkdiscard", device] if discard else ["blkdiscard", "-z", device]


def parse_vg_capacity(out: str) -> tuple[int, int]:
    """(size, free) in bytes from ``vgs -o vg_size,vg_free``."""
    fields = out.split()
    if len(fields) != 2:
        raise ValueError(f"unexpected vgs output: {out!r}")
    return int(fields[0]), int(fields[1])


def parse_pool_capacity(out: str) -> tuple[int, int]:
    """(size, free) in bytes from ``lvs -o lv_size,data_percent`` of a thin pool."""
    fields = out.split()
    if len(fields) != 2:
        raise ValueError(f"unexpected lvs output: {out!r}")
    size, used_percent = int(fields[0]), float(fields[1].replace(",", "."))
    return size, max(0, int(size * (1 - used_percent / 100)))


def parse_names(out: str) -> set[str]:
    return {line.strip() for line in out.splitlines() if line.strip()}
