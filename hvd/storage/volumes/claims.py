"""Volume capacity claims, pure: may a backend take a new volume (or a volume's growth)?

Like server claims (DESIGN.md "Placement"), the proposer plans from capacity reports that may be
stale, and the catalog's apply admits a create or an extend only if the backend's claimed total
stays within its capacity, so two creates racing for the last GiB cannot both win (the loser is
refused at commit, the same on every replica, and the proposer tries the next backend).

Claimed (provisioned) on a backend: the size of every volume recorded on it (an extending one at
its new size) and of every snapshot on it (file snapshots are full copies; LVM snapshots take space
in the group or pool). Capacity: the backend's last reported ``total_gb`` minus its ``reserved_gb``;
for a thin backend (sparse files, an LVM thin pool) that figure times its reported
``max_over_subscription_ratio`` (Cinder's option: claims are virtual, a volume takes real space
only as it is written). An over-subscribed backend whose real free space is down to its reserve is
full and takes nothing more, whatever its claims leave (Cinder's rule).

The ratio travels inside the report's backend rows as a decimal string ("20.0"): the rows' values
are ``str | int | bool`` on every member, so a float would not decode everywhere. It is read as an
exact Decimal, so every replica computes the same capacity; a row without it (a host from before
over-subscription) counts as 1, which admits no more than before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

RATIO_KEY = "max_over_subscription_ratio"  # the backend row key of the ratio (a decimal string)
ONE = Decimal(1)
MAX_RATIO = Decimal(1000)  # the config's bound; a reported ratio past it is not trusted (counts as 1)


def volume_claim_gb(volume: Mapping[str, Any]) -> int:
    """GiB a volume row holds on its backend (an extend in progress holds its new size)."""
    size = int(volume["size_gb"])
    grown = volume.get("new_size_gb")
    return max(size, int(grown)) if grown is not None else size


def claimed_gb(volumes: Iterable[Mapping[str, Any]], snapshots: Iterable[Mapping[str, Any]]) -> int:
    """GiB claimed on one backend by its volume and snapshot rows."""
    total = sum(volume_claim_gb(v) for v in volumes)
    return total + sum(int(s["size_gb"]) for s in snapshots)


def ratio_text(ratio: float) -> str:
    """How a host writes its configured ratio into a report row (the shortest exact decimal)."""
    return repr(float(ratio))


def reported_ratio(value: object) -> Decimal:
    """A row's ``max_over_subscription_ratio`` as an exact Decimal; 1 (no over-subscription) when
    absent, malformed, not finite or outside [1, MAX_RATIO]."""
    if value is None or isinstance(value, bool):
        return ONE
    try:
        ratio = Decimal(str(value))
    except InvalidOperation:
        return ONE
    return ratio if ratio.is_finite() and ONE <= ratio <= MAX_RATIO else ONE


def _gb(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class Headroom:
    """One backend as claims see it (pure data): its last report and the GiB claimed on it."""

    total_gb: int
    free_gb: int  # real free space measured on the backend (statvfs, volume group or thin pool)
    reserved_gb: int = 0
    thin: bool = False
    ratio: Decimal = ONE  # the reported max_over_subscription_ratio; counts only when thin
    claimed_gb: int = 0  # provisioned: volumes (an extending one at its new size) and snapshots

    @classmethod
    def of(cls, report: Mapping[str, Any], claimed: int) -> Headroom:
        """From a report row ({name, driver, total_gb, free_gb, thin, reserved_gb?, ratio?})."""
        return cls(total_gb=_gb(report.get("total_gb")), free_gb=_gb(report.get("free_gb")),
                   reserved_gb=_gb(report.get("reserved_gb")), thin=report.get("thin") is True,
                   ratio=reported_ratio(report.get(RATIO_KEY)), claimed_gb=claimed)

    @property
    def oversubscribed(self) -> bool:
        """Thin with a ratio above 1: claims may pass the backend's real size."""
        return self.thin and self.ratio > ONE

    @property
    def effective_ratio(self) -> Decimal:
        return self.ratio if self.oversubscribed else ONE

    @property
    def usable_gb(self) -> int:
        """Total less the reserve (never below 0)."""
        return max(0, self.total_gb - self.reserved_gb)

    @property
    def capacity_gb(self) -> int:
        """The most GiB of volumes and snapshots the backend takes: usable x ratio when thin."""
        return int(self.usable_gb * self.effective_ratio)  # exact Decimal product, rounded down

    @property
    def full(self) -> bool:
        """An over-subscribed backend whose real free space is at or below its reserve: its volumes
        already write into the reserve, so it takes nothing new (a thick one's claims are its space)."""
        return self.oversubscribed and self.free_gb <= self.reserved_gb

    @property
    def unclaimed_gb(self) -> int:
        """What the scheduler may still place here: the least of what the claims leave and what the
        space really free allows (thin: free less reserve, times the ratio, as Cinder's filter)."""
        left = self.capacity_gb - self.claimed_gb
        if self.oversubscribed:
            return max(0, min(int(max(0, self.free_gb - self.reserved_gb) * self.ratio), left))
        return max(0, min(self.free_gb, left))

    def _capacity_text(self) -> str:
        usable = (f"{self.usable_gb} GiB ({self.total_gb} GiB less a {self.reserved_gb} GiB reserve)"
                  if self.reserved_gb else f"{self.usable_gb} GiB")
        if self.oversubscribed:
            return f"{self.capacity_gb} GiB ({usable} x max_over_subscription_ratio {self.ratio})"
        return usable

    def _full_detail(self) -> str:
        return (f"{self.free_gb} GiB really free, at or below its {self.reserved_gb} GiB reserve"
                f" (max_over_subscription_ratio {self.ratio} over-subscribes claims, not space)")

    def refusal(self, host: str, backend: str, request_gb: int) -> str | None:
        """Why the catalog refuses ``request_gb`` more GiB here (create, extend), None when it fits."""
        if request_gb > 0 and self.full:
            return f"thin backend {backend} of host {host} is full: {self._full_detail()}"
        if self.claimed_gb + request_gb <= self.capacity_gb:
            return None
        return (f"backend {backend} of host {host} has {self.claimed_gb} GiB of volumes and snapshots claimed"
                f" out of {self._capacity_text()}: {request_gb} GiB more does not fit")

    def shortfall(self, request_gb: int) -> str:
        """The scheduler's reason when ``unclaimed_gb`` is less than ``request_gb``."""
        if self.full:
            return f"thin backend is full: {self._full_detail()}"
        said = f"{self.unclaimed_gb} GiB free, {request_gb} GiB requested"
        if not self.oversubscribed:
            return said
        return (f"{said} (thin: {self.claimed_gb} GiB provisioned out of {self._capacity_text()};"
                f" {self.free_gb} GiB really free)")

    def view(self) -> dict[str, Any]:
        """The figures an operator sees (GET /v1/hosts)."""
        return {"thin": self.thin, "total_gb": self.total_gb, "free_gb": self.free_gb,
                "reserved_gb": self.reserved_gb, "max_over_subscription_ratio": float(self.effective_ratio),
                "capacity_gb": self.capacity_gb, "provisioned_gb": self.claimed_gb,
                "available_gb": self.unclaimed_gb, "full": self.full}


def refusal(host: str, backend: str, report: Mapping[str, Any] | None, claimed: int, request_gb: int) -> str | None:
    """Why ``host``'s ``backend`` cannot take ``request_gb`` more GiB on top of ``claimed``; None
    when it can. A backend its host never reported has no known capacity and takes nothing."""
    if report is None:
        return f"host {host} has not reported a volume backend named {backend}"
    return Headroom.of(report, claimed).refusal(host, backend, request_gb)
