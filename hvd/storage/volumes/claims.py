"""Volume capacity claims, pure: may a backend take a new volume (or a volume's growth)?

Like server claims (DESIGN.md "Placement"), the proposer plans from capacity reports that may be
stale, and the catalog's apply admits a create or an extend only if the backend's claimed total
stays within its capacity, so two creates racing for the last GiB cannot both win (the loser is
refused at commit, the same on every replica, and the proposer tries the next backend).

Claimed on a backend: the size of every volume recorded on it (an extending one at its new size)
and of every snapshot on it (file snapshots are full copies; LVM snapshots take space in the group
or pool). Capacity: the backend's last reported ``total_gb`` minus its ``reserved_gb``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def volume_claim_gb(volume: Mapping[str, Any]) -> int:
    """GiB a volume row holds on its backend (an extend in progress holds its new size)."""
    size = int(volume["size_gb"])
    grown = volume.get("new_size_gb")
    return max(size, int(grown)) if grown is not None else size


def claimed_gb(volumes: Iterable[Mapping[str, Any]], snapshots: Iterable[Mapping[str, Any]]) -> int:
    """GiB claimed on one backend by its volume and snapshot rows."""
    total = sum(volume_claim_gb(v) for v in volumes)
    return total + sum(int(s["size_gb"]) for s in snapshots)


def limit_gb(report: Mapping[str, Any]) -> int:
    """The most GiB of volumes a reported backend takes: total minus its reserve (never below 0)."""
    return max(0, int(report.get("total_gb", 0)) - int(report.get("reserved_gb", 0) or 0))


def refusal(host: str, backend: str, report: Mapping[str, Any] | None, claimed: int, request_gb: int) -> str | None:
    """Why ``host``'s ``backend`` cannot take ``request_gb`` more GiB on top of ``claimed``; None
    when it can. A backend its host never reported has no known capacity and takes nothing."""
    if report is None:
        return f"host {host} has not reported a volume backend named {backend}"
    limit = limit_gb(report)
    if claimed + request_gb <= limit:
        return None
    reserve = int(report.get("reserved_gb", 0) or 0)
    of = f"{limit} GiB ({report.get('total_gb', 0)} GiB less a {reserve} GiB reserve)" if reserve else f"{limit} GiB"
    return (f"backend {backend} of host {host} has {claimed} GiB of volumes and snapshots claimed out of {of}:"
            f" {request_gb} GiB more does not fit")


def unclaimed_gb(report_free_gb: int, limit: int, claimed: int) -> int:
    """What the scheduler may still place on a backend: the least of what its filesystem or group
    has free and what its claims leave."""
    return max(0, min(report_free_gb, limit - claimed))
