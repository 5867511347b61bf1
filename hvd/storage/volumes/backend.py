"""The volume backend interface (Cinder's volume driver), one instance per configured backend.

A backend holds the data of volumes and snapshots on this host, named ``volume-<uuid>`` and
``snapshot-<uuid>`` (as Cinder names them), so anything with such a name that the catalog does
not know is an orphan a restart may remove.

Contract of every method:
- Postcondition on success as stated; on failure (DriverError / Timeout) nothing half-made stays
  behind for create-type methods (the partial volume is removed), and the catalog is not touched:
  the caller (VolumeService) records the outcome.
- ``delete_volume`` / ``delete_snapshot`` succeed when the object is already gone (idempotent).
- Methods block only in subprocesses or executors, never on the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvd.errors import BadRequest, HvdError, NotImplementedYet
from hvd.storage import qemu_img
from hvd.storage.image_cache import fsync_path
from hvd.storage.volumes.claims import Headroom

# long reads and writes of volume data (backups, restores, verifies, an upload's hash) run on their own
# threads: on the loop's default pool they held up Raft snapshot frames and network applies
DATA_IO = ThreadPoolExecutor(max_workers=2, thread_name_prefix="volume-data")


def message_of(exc: BaseException) -> str:
    """What a failed step records: an hvd error's message, else the exception's type and text."""
    return exc.message if isinstance(exc, HvdError) else f"{type(exc).__name__}: {exc}"

GIB = 1 << 30
VOLUME_PREFIX = "volume-"
SNAPSHOT_PREFIX = "snapshot-"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_OWN_NAME = re.compile(rf"^(volume|snapshot)-({_UUID})$")
_PARTIAL_NAME = re.compile(rf"^\.volume-({_UUID})\.partial$")


def volume_name(volume_id: str) -> str:
    return f"{VOLUME_PREFIX}{volume_id}"


def snapshot_name(snapshot_id: str) -> str:
    return f"{SNAPSHOT_PREFIX}{snapshot_id}"


def parse_name(name: str) -> tuple[str, str] | None:
    """("volume" | "snapshot", uuid) of an object name a backend made, or None for anything else."""
    m = _OWN_NAME.match(name)
    return None if m is None else (m.group(1), m.group(2))


def partial_name(volume_id: str) -> str:
    """The scratch file a volume's new data is written to before it is renamed over the volume."""
    return f".{VOLUME_PREFIX}{volume_id}.partial"


def parse_partial(name: str) -> str | None:
    """The volume id of a scratch name ``partial_name`` made, or None for anything else."""
    m = _PARTIAL_NAME.match(name)
    return None if m is None else m.group(1)


async def check_fits(image: Path, image_format: str, size_bytes: int) -> None:
    """BadRequest when the image's virtual size is more than the volume's (a cached raw image's
    virtual size is its length: no qemu-img run for it)."""
    raw = image_format == "raw"
    virtual = image.stat().st_size if raw else (await qemu_img.info(image, image_format)).virtual_size
    if virtual > size_bytes:
        raise BadRequest(f"the image's virtual size ({virtual} bytes) does not fit in a volume of {size_bytes} bytes")


@dataclass(frozen=True)
class Capacity:
    """What a backend can still hold (GiB, rounded down) and what it holds in all."""

    total_gb: int
    free_gb: int
    thin: bool = False


@dataclass(frozen=True)
class BackendInfo:
    """What the volume scheduler knows of a backend: where, which, how much (pure data)."""

    host: str
    name: str
    driver: str
    availability_zone: str
    capacity: Capacity  # free_gb: what the scheduler may still place (claims.Headroom.unclaimed_gb)
    capabilities: dict[str, str] = field(default_factory=dict)
    headroom: Headroom | None = None  # how free_gb was reached (provisioned GiB, ratio), for the reasons


class VolumeBackend(abc.ABC):
    """One storage backend of this host (``[volumes] backends`` entry)."""

    name: str
    driver: str
    volume_format: str  # "raw" or "qcow2": the format of the data connection_info points at

    @abc.abstractmethod
    def connection_info(self, volume_id: str) -> dict[str, Any]:
        """How a hypervisor on this host reaches the volume (pure; the volume exists):
        ``{"type": "file", "path": ..., "format": "raw" | "qcow2"}`` or
        ``{"type": "block", "path": "/dev/<vg>/volume-<id>", "format": "raw"}``."""

    @abc.abstractmethod
    async def create_blank(self, volume_id: str, size_bytes: int) -> None:
        """A volume of ``size_bytes`` reading as zeros (sparse or thin where possible)."""

    @abc.abstractmethod
    async def create_from_image(self, volume_id: str, image: Path, image_format: str, size_bytes: int) -> None:
        """A volume of ``size_bytes`` holding the image's data, as sparse as the image."""

    @abc.abstractmethod
    async def create_from_snapshot(self, volume_id: str, snapshot_id: str, size_bytes: int) -> None:
        """A new, independent volume holding the snapshot's data, grown to ``size_bytes``."""

    @abc.abstractmethod
    async def clone(self, volume_id: str, source_volume_id: str, size_bytes: int) -> None:
        """A new, independent copy of another volume of this backend, grown to ``size_bytes``."""

    @abc.abstractmethod
    async def delete_volume(self, volume_id: str, wipe: str = "none") -> None:
        """The volume's data is gone (``wipe`` "zero": overwritten first; "discard": discarded)."""

    @abc.abstractmethod
    async def extend(self, volume_id: str, size_bytes: int) -> None:
        """The volume is ``size_bytes`` long (grow only)."""

    @abc.abstractmethod
    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        """A point-in-time copy of the volume, independent of later writes to it."""

    @abc.abstractmethod
    async def delete_snapshot(self, snapshot_id: str) -> None:
        """The snapshot is gone."""

    @abc.abstractmethod
    async def capacity(self) -> Capacity:
        """Total and free space now (for the volume scheduler and the host's report)."""

    @abc.abstractmethod
    async def list_objects(self) -> set[str]:
        """Names (``volume-<uuid>``, ``snapshot-<uuid>``) of the objects this backend holds."""

    @abc.abstractmethod
    async def size_bytes(self, volume_id: str) -> int | None:
        """The volume's virtual size now, None when it does not exist."""

    @abc.abstractmethod
    def raw_path(self, volume_id: str) -> Path | None:
        """A path whose bytes are the volume's raw data (for backups), None when the format is not raw."""

    async def flush(self, volume_id: str) -> None:
        """The volume's data is on stable storage (an fsync of its file or device)."""
        path = str(self.connection_info(volume_id)["path"])
        await asyncio.get_running_loop().run_in_executor(None, fsync_path, path)

    async def list_partials(self) -> dict[str, str]:
        """Scratch objects a cut write left behind (name -> the volume id it was for); none unless
        the backend writes beside its volumes (the file backend's ``import_raw``)."""
        return {}

    async def remove_partial(self, name: str) -> None:
        """Remove one scratch object ``list_partials`` named (already gone is fine)."""
        raise NotImplementedYet(f"backend {self.name} makes no scratch objects")

    async def import_raw(self, volume_id: str, raw: Path) -> None:
        """Replace the (detached) volume's data with the raw image ``raw`` of the same size; only
        backends whose ``raw_path`` is None need it (a restore writes into raw paths directly)."""
        raise NotImplementedYet(f"backend {self.name} cannot import raw data")

