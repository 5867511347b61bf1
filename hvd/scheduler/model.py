"""Plain data the scheduler decides over (built from the catalog's host records and claims)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class HostState:
    """One candidate host: capacity = (total - reserved) × ratio; usage = the claim ledger."""

    name: str
    availability_zone: str
    enabled: bool
    up: bool
    vcpus_capacity: int
    vcpus_claimed: int
    memory_capacity_mb: int
    memory_claimed_mb: int
    disk_capacity_gb: int
    disk_claimed_gb: int
    instance_count: int
    hypervisor_type: str
    arch: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    aggregate_metadata: dict[str, frozenset[str]] = field(default_factory=dict)  # key -> values of its aggregates

    def with_claim(self, vcpus: int, memory_mb: int, disk_gb: int, count: int = 1) -> HostState:
        """This host after ``count`` more claims of these totals (decisions later in a batch see it)."""
        return replace(self, vcpus_claimed=self.vcpus_claimed + vcpus,
                       memory_claimed_mb=self.memory_claimed_mb + memory_mb,
                       disk_claimed_gb=self.disk_claimed_gb + disk_gb, instance_count=self.instance_count + count)

    @property
    def free_vcpus(self) -> int:
        return self.vcpus_capacity - self.vcpus_claimed

    @property
    def free_memory_mb(self) -> int:
        return self.memory_capacity_mb - self.memory_claimed_mb

    @property
    def free_disk_gb(self) -> int:
        return self.disk_capacity_gb - self.disk_claimed_gb


BOOT_VOLUME_KEY = "boot_volume_id"  # instance extra naming its boot volume (hvd.api.v1.server_bdm.BOOT_ID)


def claim_disk_gb(flavor: Mapping[str, Any], boots_from_volume: bool) -> int:
    """Local disk an instance of `flavor` uses on its host: the root disk, unless the instance
    boots from a volume (its root lives in the volume's pool, claimed there), plus the ephemeral disk."""
    root = 0 if boots_from_volume else int(flavor["disk_gb"])
    return root + int(flavor.get("ephemeral_gb", 0))


def boots_from_volume(inst: Mapping[str, Any]) -> bool:
    """The instance's root disk is a volume (block_device_mapping boot_index 0)."""
    return bool((inst.get("extra") or {}).get(BOOT_VOLUME_KEY))


@dataclass(frozen=True)
class RequestSpec:
    """What one instance needs, and the placement constraints on it."""

    instance_id: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    availability_zone: str | None = None
    extra_specs: dict[str, str] = field(default_factory=dict)
    image_properties: dict[str, str] = field(default_factory=dict)
    group_id: str | None = None
    group_policy: str | None = None  # "affinity" | "anti-affinity" | "soft-affinity" | "soft-anti-affinity"
    group_hosts: frozenset[str] = frozenset()  # hosts of the group's other members
    tried_hosts: frozenset[str] = frozenset()
    force_host: str | None = None
    ignore_hosts: frozenset[str] = frozenset()  # e.g. the source of a migration
