"""The volume scheduler (cinder-scheduler), pure: filters and the capacity weigher over backends.

Filters: AvailabilityZone, Capabilities (the type's ``volume_backend_name`` extra spec names the
backend), Capacity (free GiB at least the size: for a thin backend what its over-subscription ratio
leaves, hvd/storage/volumes/claims.py). Weigher: most free space wins. The trace says
why each backend was rejected, so "no valid backend" names the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvd.errors import NoValidHost
from hvd.storage.volumes.backend import BackendInfo


@dataclass(frozen=True)
class VolumeRequest:
    size_gb: int
    availability_zone: str | None
    extra_specs: dict[str, str]


def rejection(backend: BackendInfo, req: VolumeRequest) -> str | None:
    """Why ``backend`` cannot hold the volume, or None when it can."""
    if req.availability_zone and backend.availability_zone != req.availability_zone:
        return f"availability zone {backend.availability_zone} is not {req.availability_zone}"
    wanted = req.extra_specs.get("volume_backend_name")
    if wanted and wanted != backend.name:
        return f"volume_backend_name {wanted} does not match backend {backend.name}"
    if backend.capacity.free_gb < req.size_gb:
        if backend.headroom is not None:  # names the provisioned GiB and the ratio of a thin backend
            return backend.headroom.shortfall(req.size_gb)
        return f"{backend.capacity.free_gb} GiB free, {req.size_gb} GiB requested"
    return None


def select(backends: list[BackendInfo], req: VolumeRequest) -> tuple[list[BackendInfo], list[str]]:
    """Backends that pass every filter, most free first (ties: host then name), and the trace."""
    passed: list[BackendInfo] = []
    trace: list[str] = []
    for b in backends:
        reason = rejection(b, req)
        if reason is None:
            passed.append(b)
        else:
            trace.append(f"{b.host}@{b.name}: {reason}")
    passed.sort(key=lambda b: (-b.capacity.free_gb, b.host, b.name))
    return passed, trace


def choose(backends: list[BackendInfo], req: VolumeRequest) -> BackendInfo:
    """The best backend, or NoValidHost naming every rejection."""
    ranked, trace = select(backends, req)
    if not ranked:
        reasons = "; ".join(trace) or "no volume backend is configured"
        raise NoValidHost(f"No valid backend for a {req.size_gb} GiB volume: {reasons}")
    return ranked[0]
