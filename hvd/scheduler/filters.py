"""Host filters (Nova's FilterScheduler set): each is pure and says why it rejects a host.

A filter returns None when the host passes, else the reason (shown in "No valid host" errors).
Capacity filters read the claim ledger, never host-reported usage, so concurrent placements
cannot overbook (the claim command re-checks atomically anyway).
"""

from __future__ import annotations

from collections.abc import Callable

from hvd.scheduler.model import HostState, RequestSpec

Filter = Callable[[HostState, RequestSpec], str | None]


def retry_filter(host: HostState, req: RequestSpec) -> str | None:
    return "already tried for this request" if host.name in req.tried_hosts else None


def availability_zone_filter(host: HostState, req: RequestSpec) -> str | None:
    if req.availability_zone and host.availability_zone != req.availability_zone:
        return f"in zone {host.availability_zone}, not {req.availability_zone}"
    return None


def ram_filter(host: HostState, req: RequestSpec) -> str | None:
    if req.memory_mb > host.free_memory_mb:
        return f"RAM: needs {req.memory_mb} MB, {host.free_memory_mb} MB free"
    return None


def disk_filter(host: HostState, req: RequestSpec) -> str | None:
    if req.disk_gb > host.free_disk_gb:
        return f"disk: needs {req.disk_gb} GB, {host.free_disk_gb} GB free"
    return None


def core_filter(host: HostState, req: RequestSpec) -> str | None:
    if req.vcpus > host.free_vcpus:
        return f"vCPUs: needs {req.vcpus}, {host.free_vcpus} free"
    return None


def compute_filter(host: HostState, req: RequestSpec) -> str | None:
    if not host.enabled:
        return "compute service disabled"
    if not host.up:
        return "compute service down"
    return None


def _host_value(host: HostState, key: str) -> str | None:
    if key in ("architecture", "arch", "cpu_arch"):
        return host.arch
    if key in ("hypervisor_type",):
        return host.hypervisor_type
    value = host.capabilities.get(key)
    return None if value is None else str(value)


def compute_capabilities_filter(host: HostState, req: RequestSpec) -> str | None:
    for key, want in req.extra_specs.items():
        scope, _, name = key.partition(":")
        if not name or scope != "capabilities":
            continue  # only scoped keys (capabilities:arch) are host capabilities, as in Nova
        have = _host_value(host, name)
        if have is None or have.lower() != want.lower():
            return f"capability {name}={have} does not match {want}"
    return None


def image_properties_filter(host: HostState, req: RequestSpec) -> str | None:
    for key in ("hypervisor_type", "architecture"):
        want = req.image_properties.get(key)
        if want is None:
            continue
        have = _host_value(host, key) or ""
        # images say "kvm"/"qemu" where libvirt reports "QEMU": both run on a QEMU host
        if key == "hypervisor_type" and have.lower() == "qemu" and want.lower() in ("kvm", "qemu"):
            continue
        if have.lower() != want.lower():
            return f"image needs {key}={want}, host has {have}"
    return None


def aggregate_instance_extra_specs_filter(host: HostState, req: RequestSpec) -> str | None:
    """Flavor extra specs (unscoped or ``aggregate_instance_extra_specs:``) must match the metadata
    of one of the host's aggregates (a value may list alternatives: "ssd,nvme")."""
    for key, want in req.extra_specs.items():
        scope, _, name = key.rpartition(":")
        if scope not in ("", "aggregate_instance_extra_specs"):
            continue
        have = host.aggregate_metadata.get(name)
        if have is None:
            return f"no aggregate of the host sets {name} (flavor wants {want})"
        wanted = {v.strip() for v in want.split(",") if v.strip()}
        offered = {v.strip() for value in have for v in value.split(",")}
        if not wanted & offered:
            return f"aggregate metadata {name}={','.join(sorted(offered))} does not match {want}"
    return None


def anti_affinity_filter(host: HostState, req: RequestSpec) -> str | None:
    if req.group_policy == "anti-affinity" and host.name in req.group_hosts:
        return "anti-affinity: a member of the server group is already here"
    return None


def affinity_filter(host: HostState, req: RequestSpec) -> str | None:
    if req.group_policy == "affinity" and req.group_hosts and host.name not in req.group_hosts:
        return "affinity: the server group's members are elsewhere"
    return None


FILTERS: dict[str, Filter] = {
    "AggregateInstanceExtraSpecsFilter": aggregate_instance_extra_specs_filter,
    "RetryFilter": retry_filter,
    "AvailabilityZoneFilter": availability_zone_filter,
    "RamFilter": ram_filter,
    "DiskFilter": disk_filter,
    "CoreFilter": core_filter,
    "ComputeFilter": compute_filter,
    "ComputeCapabilitiesFilter": compute_capabilities_filter,
    "ImagePropertiesFilter": image_properties_filter,
    "ServerGroupAntiAffinityFilter": anti_affinity_filter,
    "ServerGroupAffinityFilter": affinity_filter,
}
