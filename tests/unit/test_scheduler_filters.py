"""Every scheduler filter on pure data: the host it accepts, the host it rejects and the reason it
gives (the reason is what a user reads in "No valid host"), and the allocation ratios of capacity()."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from hvd.catalog.cmd_hosts import capacity
from hvd.scheduler.filters import (
    FILTERS,
    affinity_filter,
    anti_affinity_filter,
    availability_zone_filter,
    compute_capabilities_filter,
    compute_filter,
    core_filter,
    disk_filter,
    image_properties_filter,
    ram_filter,
    retry_filter,
)
from hvd.scheduler.model import HostState, RequestSpec

HOST = HostState(
    name="h1", availability_zone="nova", enabled=True, up=True,
    vcpus_capacity=8, vcpus_claimed=6, memory_capacity_mb=4096, memory_claimed_mb=3072,
    disk_capacity_gb=40, disk_claimed_gb=30, instance_count=3, hypervisor_type="QEMU", arch="x86_64",
    capabilities={"cpu_model": "Haswell", "numa_nodes": 2},
)
REQ = RequestSpec(instance_id="i1", vcpus=2, memory_mb=1024, disk_gb=10)


def test_registry_names_every_filter_once() -> None:
    assert set(FILTERS) == {
        "RetryFilter", "AvailabilityZoneFilter", "RamFilter", "DiskFilter", "CoreFilter", "ComputeFilter",
        "ComputeCapabilitiesFilter", "ImagePropertiesFilter", "ServerGroupAntiAffinityFilter",
        "ServerGroupAffinityFilter", "AggregateInstanceExtraSpecsFilter",
    }
    assert len(set(FILTERS.values())) == len(FILTERS)


def test_retry_rejects_a_host_already_tried() -> None:
    assert retry_filter(HOST, REQ) is None
    assert retry_filter(HOST, replace(REQ, tried_hosts=frozenset({"h2"}))) is None
    assert retry_filter(HOST, replace(REQ, tried_hosts=frozenset({"h1"}))) == "already tried for this request"


def test_availability_zone() -> None:
    assert availability_zone_filter(HOST, REQ) is None  # no zone asked: any zone
    assert availability_zone_filter(HOST, replace(REQ, availability_zone="nova")) is None
    assert availability_zone_filter(HOST, replace(REQ, availability_zone="az2")) == "in zone nova, not az2"


@pytest.mark.parametrize(
    ("fn", "field", "fits", "reason"),
    [
        (ram_filter, "memory_mb", 1024, "RAM: needs 1025 MB, 1024 MB free"),
        (disk_filter, "disk_gb", 10, "disk: needs 11 GB, 10 GB free"),
        (core_filter, "vcpus", 2, "vCPUs: needs 3, 2 free"),
    ],
)
def test_capacity_filters_accept_exactly_the_free_amount(fn: Any, field: str, fits: int, reason: str) -> None:
    """Free = capacity - claimed: exactly the free amount fits, one more is rejected with both numbers."""
    assert fn(HOST, replace(REQ, **{field: fits})) is None
    assert fn(HOST, replace(REQ, **{field: fits + 1})) == reason


def test_capacity_filters_read_claims_not_totals() -> None:
    full = replace(HOST, memory_claimed_mb=4096, disk_claimed_gb=40, vcpus_claimed=8)
    assert ram_filter(full, replace(REQ, memory_mb=1)) == "RAM: needs 1 MB, 0 MB free"
    assert disk_filter(full, replace(REQ, disk_gb=1)) == "disk: needs 1 GB, 0 GB free"
    assert core_filter(full, replace(REQ, vcpus=1)) == "vCPUs: needs 1, 0 free"
    # a zero-sized request (disk-less flavor) still fits a full host
    assert disk_filter(full, replace(REQ, disk_gb=0)) is None


def test_compute_filter_disabled_or_down() -> None:
    assert compute_filter(HOST, REQ) is None
    assert compute_filter(replace(HOST, enabled=False), REQ) == "compute service disabled"
    assert compute_filter(replace(HOST, up=False), REQ) == "compute service down"
    assert compute_filter(replace(HOST, enabled=False, up=False), REQ) == "compute service disabled"


def test_compute_capabilities_scoped_keys_only() -> None:
    def specs(**kv: str) -> RequestSpec:
        return replace(REQ, extra_specs=kv)

    assert compute_capabilities_filter(HOST, specs(**{"capabilities:arch": "X86_64"})) is None  # case-blind
    assert compute_capabilities_filter(HOST, specs(**{"capabilities:cpu_arch": "x86_64"})) is None
    assert compute_capabilities_filter(HOST, specs(**{"capabilities:hypervisor_type": "qemu"})) is None
    assert compute_capabilities_filter(HOST, specs(**{"capabilities:cpu_model": "haswell"})) is None
    assert compute_capabilities_filter(HOST, specs(**{"capabilities:numa_nodes": "2"})) is None  # str(2)
    assert (compute_capabilities_filter(HOST, specs(**{"capabilities:arch": "aarch64"}))
            == "capability arch=x86_64 does not match aarch64")
    assert (compute_capabilities_filter(HOST, specs(**{"capabilities:gpu": "yes"}))
            == "capability gpu=None does not match yes")
    # unscoped and other-scoped keys are not host capabilities (hw:cpu_policy, quota:..., arch)
    assert compute_capabilities_filter(HOST, specs(arch="aarch64", **{"hw:cpu_policy": "dedicated"})) is None


def test_image_properties() -> None:
    def props(**kv: str) -> RequestSpec:
        return replace(REQ, image_properties=kv)

    assert image_properties_filter(HOST, REQ) is None
    assert image_properties_filter(HOST, props(architecture="x86_64")) is None
    assert image_properties_filter(HOST, props(hypervisor_type="kvm")) is None  # kvm images run on QEMU
    assert image_properties_filter(HOST, props(hypervisor_type="qemu")) is None
    assert image_properties_filter(HOST, props(os_distro="debian")) is None  # not a placement property
    assert (image_properties_filter(HOST, props(architecture="aarch64"))
            == "image needs architecture=aarch64, host has x86_64")
    assert (image_properties_filter(HOST, props(hypervisor_type="xen"))
            == "image needs hypervisor_type=xen, host has QEMU")
    kvm_host = replace(HOST, hypervisor_type="kvm")
    assert image_properties_filter(kvm_host, props(hypervisor_type="qemu")) == (
        "image needs hypervisor_type=qemu, host has kvm")


def test_anti_affinity() -> None:
    group = frozenset({"h1"})
    assert anti_affinity_filter(HOST, replace(REQ, group_policy="anti-affinity", group_hosts=frozenset())) is None
    assert anti_affinity_filter(HOST, replace(REQ, group_policy="anti-affinity",
                                              group_hosts=frozenset({"h2"}))) is None
    assert (anti_affinity_filter(HOST, replace(REQ, group_policy="anti-affinity", group_hosts=group))
            == "anti-affinity: a member of the server group is already here")
    assert anti_affinity_filter(HOST, replace(REQ, group_policy="affinity", group_hosts=group)) is None


def test_affinity() -> None:
    # the group's first member goes anywhere; later members only where the others are
    assert affinity_filter(HOST, replace(REQ, group_policy="affinity", group_hosts=frozenset())) is None
    assert affinity_filter(HOST, replace(REQ, group_policy="affinity", group_hosts=frozenset({"h1", "h2"}))) is None
    assert (affinity_filter(HOST, replace(REQ, group_policy="affinity", group_hosts=frozenset({"h2"})))
            == "affinity: the server group's members are elsewhere")
    assert affinity_filter(HOST, replace(REQ, group_policy="anti-affinity", group_hosts=frozenset({"h2"}))) is None


HOST_ROW = {"vcpus": 4, "reserved_vcpus": 1, "cpu_ratio": 16.0, "memory_mb": 8192, "reserved_memory_mb": 512,
            "ram_ratio": 1.5, "disk_gb": 100, "reserved_disk_gb": 10, "disk_ratio": 1.0}


def test_capacity_is_total_minus_reserved_times_ratio() -> None:
    assert capacity(HOST_ROW) == {"vcpus": 48, "memory_mb": 11520, "disk_gb": 90}


def test_capacity_rounds_down_and_ratio_below_one_undercommits() -> None:
    row = {**HOST_ROW, "cpu_ratio": 0.5, "ram_ratio": 1.0, "disk_ratio": 0.9, "vcpus": 3, "reserved_vcpus": 0,
           "disk_gb": 11, "reserved_disk_gb": 0}
    assert capacity(row) == {"vcpus": 1, "memory_mb": 7680, "disk_gb": 9}  # floor(1.5), floor(9.9)


def test_a_server_booted_from_a_volume_claims_no_local_root_disk() -> None:
    """Its root is a volume (in the volume pool), so only the ephemeral disk is local; an
    image-booted server claims root + ephemeral. The key is the one server_bdm writes."""
    from hvd.api.v1.server_bdm import BOOT_ID
    from hvd.scheduler.model import BOOT_VOLUME_KEY, boots_from_volume, claim_disk_gb

    assert BOOT_VOLUME_KEY == BOOT_ID
    flavor = {"disk_gb": 20, "ephemeral_gb": 5, "swap_mb": 512}
    assert claim_disk_gb(flavor, boots_from_volume({"extra": {BOOT_ID: "vol-1"}})) == 5
    assert claim_disk_gb(flavor, boots_from_volume({"extra": {}})) == 25
    assert claim_disk_gb({"disk_gb": 1}, boots_from_volume({"extra": {BOOT_ID: "vol-1"}})) == 0
    assert not boots_from_volume({})
